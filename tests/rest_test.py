"""The ReST loop end to end on the tiny model over 8 simulated devices, and its resumption."""

import dataclasses
import json
import logging
import os
import shutil

import jax
import pytest

from rest_jax import checkpoints, commands, controls, decoding, grow, improve, losses
from rest_jax import partitioning, policy_eval, rest, rewards, rows as rows_lib, selection
from rest_jax.data import pipeline, tasks, vocab
from tests.conftest import make_model

LENGTHS = {"inputs": 48, "targets": 40}
_IMPROVE = improve.ImproveConfig(
    thresholds=rewards.ThresholdSchedule([0.0, 0.5], quantiles=True),
    loss=losses.OfflineRLLoss("bc"), steps=3, batch_size=16,
    selection=selection.SelectionConfig(eval_period=2))


def _run(model_dir, **overrides):
  kwargs = dict(
      model=make_model(decoding.beam_search, vocabulary=vocab.DemoVocabulary(), vocab_size=384),
      model_dir=str(model_dir),
      train_dataset_cfg=pipeline.DatasetConfig(tasks.DEMO_TASK, LENGTHS, "train", 16, seed=1),
      bc=rest.BCConfig(steps=6, selection=selection.SelectionConfig(eval_period=3)),
      reward=rewards.get("chrf", processes=1),
      grow=grow.GrowConfig(steps=1, max_sources=24, num_samples=2, batch_size=8,
                           shard_size=16),
      improve=_IMPROVE,
      evaluation=policy_eval.EvalConfig(max_examples=16, best_of_n=2),
      checkpoint_period=3, progress_bar=False,
      partitioner=partitioning.Partitioner(mesh_shape=(4, 2)),
      arms=controls.ArmsConfig(samples_only=False))
  kwargs.update(overrides)
  return rest.rest(**kwargs)


def _newest(directory):
  return max(os.path.getmtime(p) for p in directory.rglob("*") if p.is_file())


def _steps(model_dir):
  with open(os.path.join(model_dir, rest.STATE_FILE)) as f:
    return json.load(f)["steps"]


def _summary(model_dir):
  with open(os.path.join(model_dir, rest.STATE_FILE)) as f:
    return json.load(f)["summary"]


@pytest.mark.slow
def test_two_improve_steps_on_a_4x2_mesh_then_resume(tmp_path, capsys, caplog):
  assert jax.device_count() == 8
  rows = _run(tmp_path)
  assert [r.policy.split(" (")[0] for r in rows] == ["BC", "BC+", "G1 I1", "G1 I2"]
  # Every policy is evaluated on validation; test only for BC, BC+ and the selected one.
  assert all("validation/oracle_best_of_2_reward" in r.metrics for r in rows)
  chosen = [r for r in rows if r.selected]
  assert len(chosen) == 1 and chosen[0].role in ("BC", "ReST")
  best = max((r for r in rows if r.role != "BC+"), key=lambda r: r.metrics["validation/reward"])
  assert chosen[0] is best
  assert {r.policy for r in rows if "test/reward" in r.metrics} == {
      "BC", "BC+", chosen[0].policy}
  # BC+ trains exactly as many optimizer steps as all Improve steps together (1 x 2 x 3).
  assert checkpoints.Checkpointer(str(tmp_path / "bc_plus")).latest_step() == 6
  assert rows[1].optimizer_steps == rows[0].optimizer_steps + selection.Selection(
      str(tmp_path / "bc_plus")).best[0]
  assert [(r.kept_samples or 0) > 0 for r in rows] == [False, False, True, True]
  # A finished run as POLICY_DIR of the single-step commands: its selected policy's best
  # checkpoint; a step of it: that step's best, not its last.
  ckpt, step = commands.policy_checkpoint(str(tmp_path))
  chosen_dir = {"BC": "bc"}.get(chosen[0].policy, None) or "improve_1_" + chosen[0].policy.split(
      " (")[0][-1]
  assert ckpt.directory == str(tmp_path / chosen_dir / "best")
  assert step == selection.Selection(str(tmp_path / chosen_dir)).best[0]
  ckpt.close()
  ckpt, step = commands.policy_checkpoint(str(tmp_path / "bc"))
  assert step == selection.Selection(str(tmp_path / "bc")).best[0] and ckpt.directory.endswith(
      "bc/best")
  ckpt.close()
  report = (tmp_path / "report.md").read_text()
  assert "| BC" in report and "(selected)" in report and "## What was run" in report
  assert (tmp_path / "grow_1_rewards.png").exists()
  manifest = json.loads((tmp_path / "grow_1" / "manifest.json").read_text())
  assert manifest["num_rows"] == 24 * 3 and manifest["num_shards"] == 2
  before = _steps(tmp_path)

  # Re-running a finished loop does nothing.
  mtimes = {p: os.path.getmtime(p) for p in tmp_path.rglob("*") if p.is_file()
            and "rest_state" not in p.name and p.suffix not in (".md", ".png")
            and "rest" not in p.parts[-2]}
  again = _run(tmp_path)
  assert [r.metrics for r in again] == [r.metrics for r in rows]
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

  # A changed threshold redoes only the step it changes, and the log says why.
  improve_2 = _newest(tmp_path / "improve_1_2")
  with caplog.at_level(logging.WARNING):
    _run(tmp_path, improve=dataclasses.replace(
        _IMPROVE, thresholds=rewards.ThresholdSchedule([0.0, 0.7], quantiles=True)))
  assert _newest(tmp_path / "improve_1_1") == improve_1
  assert _newest(tmp_path / "improve_1_2") > improve_2
  redone = [r.getMessage() for r in caplog.records if "configuration changed" in r.getMessage()]
  # The step itself, and its evaluations (their record holds the policy's).
  trained = [m for m in redone if not m.startswith(("rest: redoing eval_", "rest: redoing test_"))]
  assert len(trained) == 1 and "improve_1_2" in trained[0] and "threshold" in trained[0], redone
  assert any(m.startswith("rest: redoing eval_1_2") for m in redone), redone

  # A changed loss knob (not a threshold) redoes the Improve steps, not Grow or BC, and the
  # log names the field: the record is derived from the whole ImproveConfig.
  caplog.clear()
  grow_manifest = os.path.getmtime(tmp_path / "grow_1" / "manifest.json")
  changed = dataclasses.replace(
      _IMPROVE, thresholds=rewards.ThresholdSchedule([0.0, 0.7], quantiles=True),
      loss=losses.OfflineRLLoss("bc", gold_min_weight=0.9))
  with caplog.at_level(logging.WARNING):
    _run(tmp_path, improve=changed)
  redone = [r.getMessage() for r in caplog.records if "redoing" in r.getMessage()]
  assert any("improve_1_1" in m and "loss.gold_min_weight 0.1 -> 0.9" in m for m in redone), redone
  assert os.path.getmtime(tmp_path / "grow_1" / "manifest.json") == grow_manifest

  # The `improve` command is rest's Improve step: the same inputs give the same policy.
  state = json.loads((tmp_path / rest.STATE_FILE).read_text())
  tau = state["summary"]["thresholds"]["1"][0]
  commands.improve_command(
      model=make_model(decoding.beam_search, vocabulary=vocab.DemoVocabulary(), vocab_size=384),
      policy_dir=str(tmp_path / "bc"), grown_dir=str(tmp_path / "grow_1"), threshold=tau,
      output_dir=str(tmp_path / "alone"), feature_lengths=LENGTHS, improve=changed,
      task_name=tasks.DEMO_TASK, reward=rewards.get("chrf", processes=1),
      evaluation=policy_eval.EvalConfig(max_examples=16, best_of_n=2),
      place=improve.Place(1, 1, grow_steps=1),
      partitioner=partitioning.Partitioner(mesh_shape=(4, 2)))
  alone, in_rest = selection.Selection(str(tmp_path / "alone")), selection.Selection(
      str(tmp_path / "improve_1_1"))
  assert alone.history == in_rest.history and alone.best == in_rest.best
  ours = checkpoints.read_arrays(str(tmp_path / "alone" / "best"), alone.best[0])
  theirs = checkpoints.read_arrays(str(tmp_path / "improve_1_1" / "best"), alone.best[0])
  for a, b in zip(jax.tree_util.tree_leaves(ours["params"]),
                  jax.tree_util.tree_leaves(theirs["params"])):
    assert (a == b).all()


@pytest.mark.slow
def test_every_arm_from_one_bc_and_grow(tmp_path):
  """The paper's ReST (samples and original pairs) beside filtered BC, the samples-only
  ablation and random selection, all from one BC and Grow 1; with G = 2 the controls train
  G x I steps on Grow 1's rows, the ablation stops after Grow 1, ReST samples again. Each
  step reports the rows it trains on."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  rater = rewards.DemoRater(forms="full", flaw="dative")  # reference-free: pairs are scored
  rows = _run(tmp_path, reward=rater, arms=controls.ArmsConfig(
      rows_rater=rater, random_selection=True), grow=grow.GrowConfig(
                  steps=2, max_sources=24, num_samples=2, batch_size=8, shard_size=16))
  labels = [r.policy.split(" (tau")[0] for r in rows]
  assert labels == ["BC", "BC+", "filtered BC G1 I1", "filtered BC G1 I2", "filtered BC G2 I1",
                    "filtered BC G2 I2", "ReST (samples only) G1 I1",
                    "ReST (samples only) G1 I2", "random selection G1 I1",
                    "random selection G1 I2", "random selection G2 I1",
                    "random selection G2 I2", "G1 I1", "G1 I2", "G2 I1", "G2 I2"]
  by_label = dict(zip(labels, rows))
  for i in (1, 2):
    rest_row = by_label[f"G1 I{i}"]
    assert rest_row.kept_samples > 0 and rest_row.kept_references > 0
    alone, drawn = by_label[f"ReST (samples only) G1 I{i}"], by_label[f"random selection G1 I{i}"]
    assert (alone.kept_samples, alone.kept_references) == (rest_row.kept_samples, 0)
    assert (drawn.kept_samples, drawn.kept_references) == (rest_row.kept_samples, 0)
  # What each step trains on, by the rows rater's score of every grown row.
  rated = np.load(tmp_path / "grow_1_rated_rows.npy")
  import rest_jax.data.grown as grown_lib  # pylint: disable=g-import-not-at-top
  columns = grown_lib.read_columns(grown_lib.shard_paths(
      str(tmp_path / "grow_1"), grown_lib.load_manifest(str(tmp_path / "grow_1"))))
  tau = _summary(tmp_path)["thresholds"]["1"][1]
  kept = columns["reward"] >= np.float32(tau)
  quality = by_label["G1 I2"].trains_on
  for kind, mask in (("samples", kept & ~columns["is_reference"]),
                     ("references", kept & columns["is_reference"])):
    assert quality[kind]["rows"] == mask.sum()
    assert quality[kind]["held_out"] == pytest.approx(float(rated[mask].mean()))
    assert quality[kind]["reward"] == pytest.approx(float(columns["reward"][mask].mean()))
  # The reward picks better rows than chance, by the rater.
  assert (quality["samples"]["held_out"]
          >= by_label["random selection G1 I2"].trains_on["samples"]["held_out"])
  summary = _summary(tmp_path)
  assert not {"rows", "thresholds", "arm_selected"} & set(_steps(tmp_path))  # kept apart
  picks = summary["arm_selected"]  # rows named by role, Grow step and Improve step
  assert set(picks) == {"filtered BC", "ReST (samples only)", "random selection"}
  assert all(rows_lib.find(rows, p).role in (role, "BC") for role, p in picks.items())
  controls_ = [rows_lib.find(rows, p) for p in (
      {"role": "BC", "grow_step": 0, "improve_step": 0},
      {"role": "BC+", "grow_step": 0, "improve_step": 0},
      picks["filtered BC"], picks["random selection"])]
  assert summary["best_control"] == max(
      controls_, key=lambda r: r.metrics["validation/reward"]).id
  # Test for BC, BC+, every arm's pick and ReST's, with outputs kept for `seeds`.
  tested = {r.policy for r in rows if "test/bleu" in r.metrics}
  assert tested == {rows_lib.find(rows, p).policy for p in (
      summary["selected"], *(r.id for r in controls_[:2]), *picks.values())}
  for row in summary["rows"]:  # as saved: folders relative to the run
    if row["policy"] in tested:
      assert (tmp_path / "outputs" / f"{os.path.basename(row['dir'])}.test.json").exists()
  report = (tmp_path / "report.md").read_text()
  assert "## What each step trains on" in report and "random selection (run" in report
  # Nothing changed: nothing is redone.
  again = _run(tmp_path, reward=rater, arms=controls.ArmsConfig(
      rows_rater=rater, random_selection=True), grow=grow.GrowConfig(
                   steps=2, max_sources=24, num_samples=2, batch_size=8, shard_size=16))
  assert [r.metrics for r in again] == [r.metrics for r in rows]
