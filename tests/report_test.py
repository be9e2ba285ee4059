"""The report's opening: warnings when the comparison is not meaningful, and ReST's margin
over the best control chosen on validation."""

from rest_jax import report
from rest_jax.roles import Role
from rest_jax.rows import PolicyRow


def _row(policy, role, **metrics):
  return PolicyRow(policy, Role(role), metrics={
      f"{k.split('__')[0]}/{k.split('__')[1]}": v for k, v in metrics.items()})


def test_a_bc_still_rising_and_degenerate_opens_the_report_with_warnings():
  """The issue's own-corpus run: BC best at its last step, BLEU 2.3, repeats 0.86 against
  the references' 0.056, length ratio 1.52."""
  bc = _row("BC", "BC", validation__bleu=2.3, validation__repeated_ngram_rate=0.86,
            validation__reference_repeated_ngram_rate=0.056, validation__length_ratio=1.52,
            validation__empty_rate=0.0, validation__copy_rate=0.0)
  steps = {"bc": {"selection": {"best_step": 2000, "last_step": 2000}}}
  found = report.warnings([bc], steps)
  assert len(found) == 2
  assert "still rising" in found[0] and "2000 of 2000" in found[0] and "BC_STEPS" in found[0]
  assert "degenerate" in found[1] and "length ratio 1.520" in found[1]
  assert "repeated 3-gram rate 0.860 against the references' 0.056" in found[1]
  healthy = _row("BC", "BC", validation__bleu=78.0, validation__repeated_ngram_rate=0.05,
                 validation__reference_repeated_ngram_rate=0.056, validation__length_ratio=0.98,
                 validation__empty_rate=0.0, validation__copy_rate=0.0)
  assert report.warnings([healthy], {"bc": {"selection": {"best_step": 1400,
                                                          "last_step": 1800}}}) == []


def test_the_headline_is_against_the_best_control_and_says_when_filtering_suffices():
  rows = [_row("BC", "BC", validation__reward=0.80, validation__bleu=70.0, test__bleu=71.0),
          _row("BC+", "BC+", validation__reward=0.81, validation__bleu=72.0, test__bleu=72.5),
          _row("filtered BC G1 I1 (tau=0.5)", "filtered BC", validation__reward=0.83,
               validation__bleu=74.0, test__bleu=74.0),
          _row("G1 I1 (tau=0.6)", "ReST", validation__reward=0.82, validation__bleu=73.0,
               test__bleu=75.0)]
  rows[2].arm_selected = rows[3].selected = True
  rows[2].grow_step = rows[2].improve_step = 1
  summary = {"best_control": {"role": "filtered BC", "grow_step": 1, "improve_step": 1}}
  lines = report.headline(rows, summary, ["validation", "test"])
  text = "\n".join(lines)
  assert "minus the best control on validation (filtered BC G1 I1 (tau=0.5))" in text
  assert "- validation: BLEU -1.00" in text and "- test: BLEU +1.00" in text
  assert "the policy's samples add nothing over filtering the data" in text


def test_bc_at_bc_steps_with_patience_left_has_not_converged():
  """Best at 1400 of 2000, 3 evaluations before the end with a patience of 5: BC stopped
  at BC_STEPS, not by its patience, and says so."""
  ran_out = {"best_step": 1400, "last_step": 2000, "patience": 5, "stopped_early": False}
  found = report.warnings([], {"bc": {"selection": {**ran_out, "since_best": 3}}})
  assert len(found) == 1 and "ran all its BC_STEPS (to step 2000)" in found[0]
  assert "best validation reward was at step 1400, 3 evaluations before the end" in found[0]
  assert "fewer than its patience of 5" in found[0] and "not converged" in found[0]
  # Patience ran out at the last step (rest's BC: not "stopped early") or before it.
  assert report.warnings([], {"bc": {"selection": {**ran_out, "since_best": 5}}}) == []
  assert report.warnings([], {"bc": {"selection": {"best_step": 1000, "last_step": 1500,
                                                   "patience": 5, "since_best": 5,
                                                   "stopped_early": True}}}) == []
  # BC_STEPS = 0 from a checkpoint: evaluated at step 0 only, nothing trained to converge.
  assert report.warnings([], {"bc": {"selection": {"best_step": 0, "last_step": 0,
                                                   "patience": 5, "since_best": 0}}}) == []


def test_degenerate_limits_start_from_the_references_own_rates():
  """References that repeat themselves (a litany) or copy their sources (names) do not make
  a BC with the same rates degenerate; a BC well above them still is."""
  def bc(repeats, copies, empty=0.0):
    return _row("BC", "BC", validation__bleu=30.0, validation__length_ratio=1.0,
                validation__repeated_ngram_rate=repeats, validation__empty_rate=empty,
                validation__copy_rate=copies, validation__reference_repeated_ngram_rate=0.4,
                validation__reference_copy_rate=0.3, validation__reference_empty_rate=0.1)
  assert report.warnings([bc(0.4, 0.3, 0.1)], {}) == []
  found = report.warnings([bc(0.81, 0.45, 0.2)], {})
  assert len(found) == 1 and "repeated 3-gram rate 0.810 against the references' 0.400" in (
      found[0])
  assert "copy-of-source rate 0.450 against the references' 0.300" in found[0]
  assert "empty rate 0.200 against the references' 0.100" in found[0]
  table = report.degeneracy_table([bc(0.4, 0.3)], "validation")
  assert "| references (their own rates) | 1.000 | 0.400 | 0.100 | 0.300 |" in table


def test_coverage_lines_give_each_grow_steps_share_of_the_sources_it_applies_to():
  lines = report.coverage_lines({"coverage": {"2": 0.014, "1": 0.047, "3": None}})
  assert len(lines) == 2
  assert lines[0].startswith("- Grow step 1: of its sources that the task's coverage check")
  assert "those with a colour before a noun), 4.7% have a sample it finds right" in lines[0]
  assert "1.4% have a sample" in lines[1]
  assert report.coverage_lines({}) == []
