"""The report's opening: warnings when the comparison is not meaningful, and ReST's margin
over the best control chosen on validation."""

from rest_jax import report


def _row(policy, role, **metrics):
  return {"policy": policy, "role": role,
          "metrics": {f"{k.split('__')[0]}/{k.split('__')[1]}": v for k, v in metrics.items()}}


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
          {**_row("filtered BC G1 I1 (tau=0.5)", "filtered BC", validation__reward=0.83,
                  validation__bleu=74.0, test__bleu=74.0), "arm_selected": True},
          {**_row("G1 I1 (tau=0.6)", "ReST", validation__reward=0.82, validation__bleu=73.0,
                  test__bleu=75.0), "selected": True}]
  steps = {"best_control": "filtered BC G1 I1 (tau=0.5)"}
  lines = report.headline(rows, steps, ["validation", "test"])
  text = "\n".join(lines)
  assert "minus the best control on validation (filtered BC G1 I1 (tau=0.5))" in text
  assert "- validation: BLEU -1.00" in text and "- test: BLEU +1.00" in text
  assert "the policy's samples add nothing over filtering the data" in text
