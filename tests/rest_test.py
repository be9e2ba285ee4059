"""The ReST loop end to end on the tiny model over 8 simulated devices, and its resumption."""

import json
import os
import shutil

import jax
import pytest

from rest_jax import decoding, losses, partitioning, rest, rewards
from rest_jax.data import pipeline, tasks, vocab
from tests.conftest import make_model

LENGTHS = {"inputs": 48, "targets": 40}


def _run(model_dir, **overrides):
  kwargs = dict(
      model=make_model(decoding.beam_search, vocabulary=vocab.DemoVocabulary(), vocab_size=384),
      model_dir=str(model_dir),
      train_dataset_cfg=pipeline.DatasetConfig(tasks.DEMO_TASK, LENGTHS, "train", 16, seed=1),
      bc_steps=6, reward=rewards.get("chrf", processes=1),
      thresholds=rewards.ThresholdSchedule([0.0, 0.5], quantiles=True), num_grow_steps=1,
      grow_max_sources=24, num_samples=2, grow_batch_size=8, shard_size=16,
      improve_loss=losses.OfflineRLLoss("bc"), improve_steps=3, improve_batch_size=16,
      eval_max_examples=16, best_of_n=2, checkpoint_period=3, progress_bar=False,
      partitioner=partitioning.Partitioner(mesh_shape=(4, 2)))
  kwargs.update(overrides)
  return rest.rest(**kwargs)


def _newest(directory):
  return max(os.path.getmtime(p) for p in directory.rglob("*") if p.is_file())


def _steps(model_dir):
  with open(os.path.join(model_dir, rest.STATE_FILE)) as f:
    return json.load(f)["steps"]


@pytest.mark.slow
def test_two_improve_steps_on_a_4x2_mesh_then_resume(tmp_path, capsys):
  assert jax.device_count() == 8
  rows = _run(tmp_path)
  assert [r["policy"].split(" (")[0] for r in rows] == ["BC", "G1 I1", "G1 I2"]
  assert all("test/best_of_2_reward" in r["metrics"] for r in rows)
  report = (tmp_path / "report.md").read_text()
  assert "| BC |" in report and (tmp_path / "grow_1_rewards.png").exists()
  manifest = json.loads((tmp_path / "grow_1" / "manifest.json").read_text())
  assert manifest["num_rows"] == 24 * 3 and manifest["num_shards"] == 2
  before = _steps(tmp_path)

  # Re-running a finished loop does nothing.
  mtimes = {p: os.path.getmtime(p) for p in tmp_path.rglob("*") if p.is_file()
            and "rest_state" not in p.name and p.suffix not in (".md", ".png")
            and "rest" not in p.parts[-2]}
  again = _run(tmp_path)
  assert [r["metrics"] for r in again] == [r["metrics"] for r in rows]
  assert all(os.path.getmtime(p) == t for p, t in mtimes.items())

  # Deleting the last Improve checkpoint redoes only that step (and its evaluation).
  shutil.rmtree(tmp_path / "improve_1_2")
  grow_manifest = os.path.getmtime(tmp_path / "grow_1" / "manifest.json")
  improve_1 = _newest(tmp_path / "improve_1_1")
  _run(tmp_path)
  after = _steps(tmp_path)
  assert (tmp_path / "improve_1_2" / "checkpoints").is_dir()
  assert os.path.getmtime(tmp_path / "grow_1" / "manifest.json") == grow_manifest
  assert _newest(tmp_path / "improve_1_1") == improve_1
  assert after["eval_bc"] == before["eval_bc"] and after["eval_1_1"] == before["eval_1_1"]
  capsys.readouterr()
