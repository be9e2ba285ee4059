"""The `seeds` command: mean and spread over finished runs, and the ReST - BC+ margin."""

import json

import pytest

from rest_jax import main, seeds


def _run(directory, bc, plus, rest, selected="G1 I2"):
  rows = [{"policy": "BC", "role": "BC", "selected": False,
           "metrics": {"test/chrf": bc, "validation/chrf": bc}},
          {"policy": "BC+", "role": "BC+", "selected": False,
           "metrics": {"test/chrf": plus, "validation/chrf": plus}},
          {"policy": selected + " (tau=0.5)", "role": "ReST", "selected": True,
           "metrics": {"test/chrf": rest, "validation/chrf": rest}}]
  directory.mkdir()
  (directory / "rest_state.json").write_text(json.dumps({"steps": {"rows": rows}}))
  return str(directory)


def test_mean_spread_and_margin_over_seeds(tmp_path, capsys):
  runs = [_run(tmp_path / "a", 80.0, 81.0, 83.0), _run(tmp_path / "b", 82.0, 83.0, 84.0),
          _run(tmp_path / "c", 81.0, 82.0, 85.0, selected="G1 I3")]
  text = seeds.summarize(runs)
  assert "| BC | 81.00 ± 1.00 |" in text
  assert "| BC+ | 82.00 ± 1.00 |" in text
  assert "| ReST (selected: G1 I2, G1 I2, G1 I3) | 84.00 ± 1.00 |" in text
  assert "| ReST - BC+ (per run) | +2.00 ± 1.00 |" in text
  assert main.main(["seeds", "--runs", *runs]) == 0
  assert "ReST - BC+" in capsys.readouterr().out


def test_an_unfinished_run_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a finished rest run"):
    seeds.summarize([str(tmp_path)])
