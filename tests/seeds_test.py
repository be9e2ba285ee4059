"""The `seeds` command: every seed's row, mean and spread, the paired bootstrap interval of
ReST minus the best control, the win count and the reward's flaw accuracy beside the margin."""

import json

import numpy as np
import pytest

from rest_jax import layout, main, seeds

REFS = [f"das ist satz nummer {i} hier" for i in range(40)]


def _run(directory, bc, plus, rest, flaw_accuracy, rest_wrong, control_wrong):
  """A finished run: test chrF/BLEU per role, and the test outputs of ReST and the best
  control (BC+): `*_wrong` of their sentences miss a word."""
  def metrics(v):
    return {"test/chrf": v, "test/bleu": v, "validation/chrf": v, "validation/bleu": v,
            "validation/reward": v / 100, "test/reward": v / 100}

  rows = [{"policy": "BC", "role": "BC", "selected": False, "metrics": metrics(bc)},
          {"policy": "BC+", "role": "BC+", "selected": False, "metrics": metrics(plus)},
          {"policy": "G1 I2 (tau=0.5)", "role": "ReST", "selected": True,
           "metrics": metrics(rest)}]
  steps = {"rows": rows, "best_control": "BC+", "selected_dir": "improve_1_2",
           "reward_name": "learned-qe",
           "reward_quality": {"by_kind": {"flawed": {"pairwise_vs_correct": flaw_accuracy}}}}
  directory.mkdir()
  (directory / layout.STATE_FILE).write_text(json.dumps({"steps": steps}))
  (directory / "outputs").mkdir()
  for step_dir, wrong in (("improve_1_2", rest_wrong), ("bc_plus", control_wrong)):
    hyps = [r.rsplit(" ", 1)[0] if i < wrong else r for i, r in enumerate(REFS)]
    (directory / "outputs" / f"{step_dir}.test.json").write_text(json.dumps(
        {"sources": REFS, "references": REFS, "hypotheses": hyps, "bleu_tokenize": "13a"}))
  return str(directory)


def test_rows_spread_bootstrap_wins_and_correlation(tmp_path, capsys):
  runs = [_run(tmp_path / "a", 80.0, 81.0, 83.0, 0.9, 2, 10),
          _run(tmp_path / "b", 82.0, 83.0, 84.0, 0.8, 3, 9),
          _run(tmp_path / "c", 81.0, 82.0, 81.5, 0.5, 8, 8)]
  text = seeds.summarize([runs])
  assert "| BC+ | 0.8200 ± 0.0100 | 82.00 ± 1.00 | 82.00 ± 1.00 |" in text
  assert "| ReST - best control (per seed) | +0.0083 ± 0.0126 | +0.83 ± 1.26 |" in text
  assert "ReST beats the best control on test BLEU in 2 of 3 seeds." in text
  # The margins (+2, +1, -0.5) rise with the flaw accuracies (0.9, 0.8, 0.5).
  expected = np.corrcoef([0.9, 0.8, 0.5], [2.0, 1.0, -0.5])[0, 1]
  assert f"Pearson {expected:+.2f}" in text
  # ReST's outputs miss fewer words than the control's (13 vs 27 of 120 sentences): the
  # pooled interval lies above 0.
  line = next(x for x in text.splitlines() if x.startswith("Paired bootstrap over the 120"))
  low = float(line.split("95% interval ")[1].split(" to ")[0])
  assert low > 0, line
  assert main.main(["seeds", "--runs", *runs, "--runs", runs[0], runs[1]]) == 0
  out = capsys.readouterr().out
  assert "## group 1: 3 seeds (reward learned-qe)" in out and "## group 2: 2 seeds" in out


def test_paired_bootstrap_of_identical_systems_is_zero():
  out = seeds.paired_bootstrap(REFS, REFS, REFS, samples=50)
  assert out["bleu"] == [0.0, 0.0, 0.0] and out["chrf"] == [0.0, 0.0, 0.0]


def test_an_unfinished_run_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a finished rest run"):
    seeds.summarize([[str(tmp_path)]])
