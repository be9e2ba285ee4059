"""The `seeds` command: every seed's row, mean and spread, the t-interval over seeds and the
two-level bootstrap interval of ReST minus the best control, the win count and the reward's
flaw accuracy beside the margin."""

import json

import numpy as np
import pytest
import sacrebleu
from scipy import stats

from rest_jax import layout, main, seeds

REFS = [f"das ist satz nummer {i} hier" for i in range(40)]


def _hyps(wrong, start=0):
  """REFS with sentences [start, start + wrong) missing their last word."""
  return [r.rsplit(" ", 1)[0] if start <= i < start + wrong else r for i, r in enumerate(REFS)]


def _metrics(v):
  return {"test/chrf": v, "test/bleu": v, "validation/chrf": v, "validation/bleu": v,
          "validation/reward": v / 100, "test/reward": v / 100}


def _write(directory, summary, outputs, refs=REFS, legacy=False):
  """A run's state file: its summary apart from the steps (or, `legacy`, among them as
  runs from before the summary had its own place wrote it)."""
  directory.mkdir()
  state = {"steps": summary} if legacy else {"steps": {}, "summary": summary}
  (directory / layout.STATE_FILE).write_text(json.dumps(state))
  (directory / "outputs").mkdir()
  for step_dir, hyps in outputs.items():
    (directory / "outputs" / f"{step_dir}.test.json").write_text(json.dumps(
        {"sources": refs, "references": refs, "hypotheses": hyps, "bleu_tokenize": "13a"}))
  return str(directory)


def _run(directory, bc, plus, rest, flaw_accuracy, rest_wrong, control_wrong, refs=REFS):
  """A finished run as `rest` wrote it before rows named their folder: test chrF/BLEU per
  role, and the test outputs of ReST and the best control (BC+): `*_wrong` of their
  sentences miss a word."""
  rows = [{"policy": "BC", "role": "BC", "selected": False, "metrics": _metrics(bc)},
          {"policy": "BC+", "role": "BC+", "selected": False, "metrics": _metrics(plus)},
          {"policy": "G1 I2 (tau=0.5)", "role": "ReST", "selected": True,
           "metrics": _metrics(rest)}]
  steps = {"rows": rows, "best_control": "BC+", "selected_dir": "improve_1_2",
           "reward_name": "learned-qe",
           "reward_quality": {"by_kind": {"flawed": {"pairwise_vs_correct": flaw_accuracy}}}}
  return _write(directory, steps, {"improve_1_2": _hyps(rest_wrong),
                                   "bc_plus": _hyps(control_wrong)}, refs, legacy=True)


def _run_with_arms(directory, rest, samples_only, random, rest_wrong, random_wrong):
  """A run with rows that name their folder ("dir"), the samples-only ablation and the
  random-selection control; the best control is random selection's pick."""
  rows = [{"policy": "BC", "role": "BC", "dir": "bc", "metrics": _metrics(70.0)},
          {"policy": "BC+", "role": "BC+", "dir": "bc_plus", "metrics": _metrics(71.0)},
          {"policy": "G1 I1 (tau=0.5)", "role": "ReST", "dir": "improve_1_1", "selected": True,
           "metrics": _metrics(rest)},
          {"policy": "ReST (samples only) G1 I1 (tau=0.500)", "role": seeds.SAMPLES_ONLY,
           "dir": "samples_only_1_1", "metrics": _metrics(samples_only)},
          {"policy": "random selection G1 I1", "role": seeds.RANDOM, "dir": "random_1_1",
           "metrics": _metrics(random)}]
  pick = lambda role: {"role": role, "grow_step": 1, "improve_step": 1}  # noqa: E731
  for row in rows[2:]:
    row.update(grow_step=1, improve_step=1)
  steps = {"rows": rows, "best_control": pick(seeds.RANDOM), "selected_dir": "improve_1_1",
           "arm_selected": {seeds.SAMPLES_ONLY: pick(seeds.SAMPLES_ONLY),
                            seeds.RANDOM: pick(seeds.RANDOM)}}
  return _write(directory, steps, {"improve_1_1": _hyps(rest_wrong),
                                   "random_1_1": _hyps(random_wrong)})


def _line(text, start):
  return next(x for x in text.splitlines() if x.startswith(start))


def _interval(line):
  """The first (estimate, low, high) printed on `line`."""
  head, rest = line.split(" (95% interval ")
  low, high = rest.split(")")[0].split(" to ")
  return float(head.split()[-1]), float(low), float(high)


def test_rows_spread_intervals_wins_and_correlation(tmp_path, capsys):
  runs = [_run(tmp_path / "a", 80.0, 81.0, 83.0, 0.9, 2, 10),
          _run(tmp_path / "b", 82.0, 83.0, 84.0, 0.8, 3, 9),
          _run(tmp_path / "c", 81.0, 82.0, 81.5, 0.5, 8, 8)]
  text = seeds.summarize([runs])
  assert "| BC+ | 0.8200 ± 0.0100 | 82.00 ± 1.00 | 82.00 ± 1.00 |" in text
  assert "| ReST - best control (per seed) | +0.0083 ± 0.0126 | +0.83 ± 1.26 |" in text
  assert not any(x.startswith(("| ReST (samples only) |", "| random selection |"))
                 for x in text.splitlines())
  # Old runs have no samples-only or random-selection rows: "-" in their columns.
  assert f"| {runs[0]} | 80.00 / 80.00 | 81.00 / 81.00 | - | - | 81.00 / 81.00 (BC+) | - |" \
      in text
  # The t-interval over the per-seed margins (+2, +1, -0.5), as scipy computes it.
  low, high = stats.t.interval(0.95, 2, loc=np.mean([2, 1, -0.5]),
                               scale=stats.sem([2, 1, -0.5]))
  assert _interval(_line(text, "Mean per-seed test margin, ReST - best control")) == \
      pytest.approx((0.83, low, high), abs=0.006)
  assert "ReST - ReST (samples only)" not in text
  # The bootstrap's estimate is the mean over seeds of the corpus BLEU differences.
  bleu = lambda wrong: sacrebleu.corpus_bleu(_hyps(wrong), [REFS]).score  # noqa: E731
  expected = np.mean([bleu(r) - bleu(c) for r, c in ((2, 10), (3, 9), (8, 8))])
  line = _line(text, "Two-level bootstrap (seeds, then the 40 shared test sentences; 1000")
  estimate, low, high = _interval(line)
  assert estimate == pytest.approx(expected, abs=0.006) and low <= estimate <= high, line
  assert "ReST beats the best control on test BLEU in 2 of 3 seeds." in text
  # The margins (+2, +1, -0.5) rise with the flaw accuracies (0.9, 0.8, 0.5).
  expected = np.corrcoef([0.9, 0.8, 0.5], [2.0, 1.0, -0.5])[0, 1]
  assert f"Pearson {expected:+.2f}" in text
  assert main.main(["seeds", "--runs", *runs, "--runs", runs[0], runs[1]]) == 0
  out = capsys.readouterr().out
  assert "## group 1: 3 seeds (reward learned-qe)" in out and "## group 2: 2 seeds" in out


def test_samples_only_and_random_selection_arms(tmp_path):
  runs = [_run_with_arms(tmp_path / "a", 83.0, 82.0, 80.0, 2, 10),
          _run_with_arms(tmp_path / "b", 84.0, 81.0, 81.0, 3, 9)]
  text = seeds.summarize([runs])
  assert (f"| {runs[0]} | 70.00 / 70.00 | 71.00 / 71.00 | - |"
          " 80.00 / 80.00 (random selection G1 I1) | 80.00 / 80.00 (random selection G1 I1) |"
          " 82.00 / 82.00 (ReST (samples only) G1 I1) | 83.00 / 83.00 (G1 I1) | +3.00 / +3.00 |"
          ) in text
  assert "| ReST (samples only) | 0.8150 ± 0.0071 | 81.50 ± 0.71 | 81.50 ± 0.71 |" in text
  assert "| random selection | 0.8050 ± 0.0071 | 80.50 ± 0.71 | 80.50 ± 0.71 |" in text
  # ReST - samples only: +1 and +3.
  low, high = stats.t.interval(0.95, 1, loc=2.0, scale=stats.sem([1.0, 3.0]))
  assert _interval(_line(text, "Mean per-seed test margin, ReST - ReST (samples only)")) == \
      pytest.approx((2.0, low, high), abs=0.006)
  # The best control's outputs are found through its row's folder (random_1_1).
  assert _interval(_line(text, "Two-level bootstrap"))[0] > 0
  assert "What each arm's picked step trained on" not in text  # no run reports it


def test_what_each_arm_trained_on_per_seed(tmp_path):
  run = _run_with_arms(tmp_path / "a", 83.0, 82.0, 80.0, 2, 10)
  path = tmp_path / "a" / layout.STATE_FILE
  state = json.loads(path.read_text())
  quality = lambda rated, reward, rows: {"held_out": rated, "reward": reward, "rows": rows}  # noqa: E731
  none = quality(float("nan"), float("nan"), 0)
  for row in state["summary"]["rows"]:
    row["trains_on"] = {
        "ReST": {"samples": quality(0.9, 0.8, 120), "references": quality(0.7, 0.85, 40)},
        seeds.RANDOM: {"samples": quality(0.6, 0.5, 120), "references": none},
        seeds.SAMPLES_ONLY: {"samples": quality(0.9, 0.8, 120), "references": none},
    }.get(row["role"], {"samples": none, "references": none})
  state["summary"]["coverage"] = {"1": 0.25, "2": 0.5}
  path.write_text(json.dumps(state))
  text = seeds.summarize([[run]])
  assert (f"| {run} | - | 0.600 / 0.500 (120) | 0.900 / 0.800 (120) | 0.900 / 0.800 (120) |"
          " 0.700 / 0.850 (40) | G1 0.250, G2 0.500 |") in text


def test_t_interval_matches_scipy_and_needs_two_seeds(tmp_path):
  margins = [1.5, -0.25, 0.75, 2.0, 0.5]
  mean, low, high = seeds.t_interval(margins)
  assert (low, high) == pytest.approx(stats.t.interval(
      0.95, len(margins) - 1, loc=np.mean(margins), scale=stats.sem(margins)))
  assert mean == pytest.approx(0.9)
  assert seeds.t_interval([1.0]) is None
  text = seeds.summarize([[_run(tmp_path / "a", 80.0, 81.0, 83.0, 0.9, 2, 10)]])
  assert "BLEU +2.00, chrF +2.00; t-interval not defined (fewer than 2 seeds)." in text


def test_two_level_bootstrap_of_identical_arms_is_zero():
  per_seed = [_hyps(k) for k in (0, 5, 10)]  # the seeds differ; ReST and control do not
  out = seeds.two_level_bootstrap(REFS, per_seed, per_seed, samples=50)
  assert out["bleu"] == [0.0, 0.0, 0.0] and out["chrf"] == [0.0, 0.0, 0.0]


def test_two_level_bootstrap_of_equally_good_arms_is_an_interval_around_zero():
  # Each arm misses a word on ten sentences, not the same ten: equal on the whole test set,
  # different on every resample of it.
  ours, theirs = [_hyps(10, start=0)] * 3, [_hyps(10, start=10)] * 3
  out = seeds.two_level_bootstrap(REFS, ours, theirs, samples=200)
  for name in ("bleu", "chrf"):
    estimate, low, high = out[name]
    assert estimate == pytest.approx(0.0, abs=1e-9)
    assert low < -0.5 and high > 0.5, (name, out[name])


def test_two_level_bootstrap_draws_one_set_of_sentences_for_every_seed():
  # Five identical seeds: with the sentence ids shared, every resample's seeds agree and the
  # interval is one seed's; drawn per seed, the mean of five would narrow it about 1/sqrt(5).
  ours, theirs = list(REFS), _hyps(10)
  one = seeds.two_level_bootstrap(REFS, [ours], [theirs], samples=400)
  five = seeds.two_level_bootstrap(REFS, [ours] * 5, [theirs] * 5, samples=400)
  for name in ("bleu", "chrf"):
    width = lambda out: out[name][2] - out[name][1]  # noqa: E731
    assert five[name][0] == pytest.approx(one[name][0])
    assert 0.8 < width(five) / width(one) < 1.25, (name, one[name], five[name])


def test_two_level_bootstrap_of_an_arm_right_where_the_control_is_wrong():
  # ReST is exactly right everywhere; the control misses a word on a quarter of the sentences.
  ours, theirs = [list(REFS)] * 3, [_hyps(10)] * 3
  out = seeds.two_level_bootstrap(REFS, ours, theirs, samples=200)
  for name, metric in (("bleu", sacrebleu.corpus_bleu), ("chrf", sacrebleu.corpus_chrf)):
    expected = metric(REFS, [REFS]).score - metric(_hyps(10), [REFS]).score
    estimate, low, high = out[name]
    assert expected > 1 and estimate == pytest.approx(expected)
    assert 0 < low < estimate < high, (name, out[name])


def test_seed_spread_widens_the_two_level_interval():
  theirs = [_hyps(10)] * 5
  agree = seeds.two_level_bootstrap(REFS, [list(REFS)] * 5, theirs, samples=200)
  # The same sentences are fixed in four seeds; the fifth seed's ReST is much worse.
  differ = seeds.two_level_bootstrap(REFS, [list(REFS)] * 4 + [_hyps(40)], theirs,
                                     samples=200)
  for name in ("bleu", "chrf"):
    width = lambda out: out[name][2] - out[name][1]  # noqa: E731
    assert width(differ) > 2 * width(agree), (name, agree[name], differ[name])


def test_runs_of_other_test_sets_are_named(tmp_path):
  other = [r + " ." for r in REFS]
  runs = [_run(tmp_path / "a", 80.0, 81.0, 83.0, 0.9, 2, 10),
          _run(tmp_path / "b", 82.0, 83.0, 84.0, 0.8, 3, 9, refs=other)]
  with pytest.raises(ValueError, match=f"{runs[1]}: its test references are not those of"):
    seeds.summarize([runs])


def test_an_unfinished_run_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a finished rest run"):
    seeds.summarize([[str(tmp_path)]])
