"""Single ReST steps: a resumable, deterministic Grow; Improve with mixing; eval; infer."""

import json
import os

import jax
import numpy as np
import pytest

from rest_jax import commands, decoding, grow as grow_lib, improve, losses, partitioning
from rest_jax import policy_eval, rewards, train
from rest_jax.context import Policy, StepContext
from rest_jax.data import grown, pipeline, tasks, vocab
from tests.conftest import make_model

LENGTHS = {"inputs": 48, "targets": 40}


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
  model = make_model(decoding.beam_search, vocabulary=vocab.DemoVocabulary(), vocab_size=384)
  directory = str(tmp_path_factory.mktemp("bc"))
  train.train(model=model, model_dir=directory, total_steps=3, progress_bar=False,
              train_dataset_cfg=pipeline.DatasetConfig(tasks.DEMO_TASK, LENGTHS, "train", 8),
              partitioner=partitioning.Partitioner(mesh_shape=(2, 1), devices=jax.devices()[:2]))
  return model, directory


def _rows(directory):
  manifest = grown.load_manifest(directory)
  import tensorflow as tf

  spec = grown.feature_spec()
  ds = tf.data.TFRecordDataset(grown.shard_paths(directory, manifest)).map(
      lambda r: tf.io.parse_single_example(r, spec))
  # References are not scored by chrF (it reads them): their reward is NaN, shown as None.
  return sorted((int(x["source_id"]), int(x["sample_id"]), x["targets"],
                 None if np.isnan(x["reward"]) else float(x["reward"]),
                 tuple(x["target_ids"].tolist()), x["behaviour_log_probs"])
                for x in ds.as_numpy_iterator())


def _assert_same_rows(a, b):
  """Equal rows; per-token log-probabilities equal up to float summation order."""
  assert [r[:5] for r in a] == [r[:5] for r in b]
  for x, y in zip(a, b):
    np.testing.assert_allclose(x[5], y[5], atol=1e-4)


def _grow(model, policy_dir, out, mesh):
  return commands.grow_command(
      model=model, policy_dir=policy_dir, output_dir=str(out), task_name=tasks.DEMO_TASK,
      feature_lengths=LENGTHS, reward=rewards.get("chrf", processes=1),
      grow=grow_lib.GrowConfig(num_samples=3, max_sources=20, batch_size=8, shard_size=8),
      seed=5, partitioner=partitioning.Partitioner(mesh_shape=mesh))


def test_grow_resumes_by_shard_and_is_the_same_on_any_mesh(policy, tmp_path):
  model, policy_dir = policy
  out = tmp_path / "grow"
  _grow(model, policy_dir, out, (8, 1))
  rows = _rows(str(out))
  assert len(rows) == 20 * 4 and {r[1] for r in rows} == {0, 1, 2, 3}
  other_mesh = tmp_path / "grow_4x2"
  _grow(model, policy_dir, other_mesh, (4, 2))
  _assert_same_rows(_rows(str(other_mesh)), rows)  # same samples and rewards, on any mesh

  # A killed Grow step: manifest and the last shard gone; re-running redoes only that shard.
  manifest = json.loads((out / grown.MANIFEST).read_text())
  assert manifest["num_shards"] == 3
  kept = out / manifest["shards"][0]["file"]
  lost = out / manifest["shards"][1]["file"]
  mtime = os.path.getmtime(kept)
  os.remove(lost)
  os.remove(str(lost)[: -len(".tfrecord")] + ".json")
  os.remove(out / grown.MANIFEST)
  _grow(model, policy_dir, out, (8, 1))
  assert os.path.getmtime(kept) == mtime and lost.exists()
  _assert_same_rows(_rows(str(out)), rows)


def test_improve_with_mixed_data_eval_and_infer(policy, tmp_path, capsys):
  model, policy_dir = policy
  _grow(model, policy_dir, tmp_path / "grow", (8, 1))
  with pytest.raises(ValueError, match="'oac' needs a reward and a baseline for every row"):
    commands.improve_command(  # chrF reads references: they carry no reward of their own
        model=model, policy_dir=policy_dir, grown_dir=str(tmp_path / "grow"), threshold=0.3,
        output_dir=str(tmp_path / "refused"), feature_lengths=LENGTHS,
        improve=improve.ImproveConfig(loss=losses.OfflineRLLoss("oac"), steps=2, batch_size=8),
        partitioner=partitioning.Partitioner(mesh_shape=(2, 1), devices=jax.devices()[:2]))
  metrics = commands.improve_command(
      model=model, policy_dir=policy_dir, grown_dir=str(tmp_path / "grow"), threshold=0.15,
      output_dir=str(tmp_path / "improve"), feature_lengths=LENGTHS,
      improve=improve.ImproveConfig(loss=losses.OfflineRLLoss("oac"), steps=2, batch_size=8,
                                    references="drop"),
      partitioner=partitioning.Partitioner(mesh_shape=(2, 1), devices=jax.devices()[:2]))
  assert metrics["kept_samples"] > 0 and metrics["kept_references"] == 0
  assert np.isfinite(metrics["loss"]) and 0 < metrics["importance_ratio"] <= 1.0

  with pytest.raises(improve.EmptyImproveStepError, match="keeps no rows"):
    improve.kept_rows(str(tmp_path / "grow"), 1.5, False)
  context = StepContext(model=model, partitioner=partitioning.Partitioner(
      mesh_shape=(2, 1), devices=jax.devices()[:2]), task=tasks.DEMO_TASK,
      feature_lengths=LENGTHS, reward=rewards.get("chrf", processes=1), progress_bar=False)
  result = improve.improve_step(  # resumes the finished step: nothing to train
      Policy(None), improve.ImproveConfig(steps=2, batch_size=8, mix_ratio=0.5), context,
      grown_dir=str(tmp_path / "grow"), threshold=0.0, output_dir=str(tmp_path / "improve"))
  assert result.metrics["kept_samples"] > 0 and result.metrics["kept_references"] == 20

  scores = commands.eval_command(
      model=model, policy_dir=str(tmp_path / "improve"), task_name=tasks.DEMO_TASK,
      feature_lengths=LENGTHS, reward=rewards.get("chrf", processes=1),
      evaluation=policy_eval.EvalConfig(splits=("test",), best_of_n=2, max_examples=8), seed=3)
  # chrF reads references: best-of-N has only its (labelled) oracle column.
  assert 0.0 <= scores["test/reward"] <= 1.0 and "test/oracle_best_of_2_bleu" in scores
  assert "test/best_of_2_bleu" not in scores and "test/copy_rate" in scores

  source = tmp_path / "in.txt"
  source.write_text("The dog sleeps.\nA cat sees the man.\nThe children laugh.\n")
  out = commands.infer_command(model=model, policy_dir=policy_dir, input_file=str(source),
                               output_file=str(tmp_path / "out.txt"), feature_lengths=LENGTHS,
                               num_samples=2)
  assert len(open(out).read().splitlines()) == 3
  with pytest.raises(ValueError, match="needs them"):
    commands.infer_command(model=model, policy_dir=policy_dir, input_file=str(source),
                           output_file=str(tmp_path / "x.txt"), feature_lengths=LENGTHS,
                           reward=rewards.get("chrf"))
  capsys.readouterr()


def test_improve_mixing_draws_original_rows(policy, tmp_path):
  model, policy_dir = policy
  _grow(model, policy_dir, tmp_path / "grow", (8, 1))
  from rest_jax.data import grown_tasks

  task = grown_tasks.register_grown_task(
      "rest_grown_mix", str(tmp_path / "grow"), model.output_vocabulary, threshold=0.0)
  batch = next(improve._mixed_dataset(task.name, LENGTHS, 64, 0, tasks.DEMO_TASK, 0.5, 1.0, (0, 64))  # pylint: disable=protected-access
               .as_numpy_iterator())
  # Mixed-in rows are unscored references without behaviour log-probabilities; grown
  # rows have log-probabilities < 0.
  original = np.all(batch["behaviour_log_probs"] == 0.0, axis=1)
  assert 10 < original.sum() < 54 and np.all(batch["reward"][original] == 1.0)
  assert np.all(batch["scored"][original] == 0) and np.all(batch["is_reference"][original] == 1)


def test_filtered_bc_trains_on_the_original_pairs_the_reward_keeps(policy, tmp_path):
  """The filtered-BC control: a reference-free reward scores the original pairs in Grow;
  the control trains on those it keeps at Improve's quantile levels, never on samples."""
  from rest_jax import context as context_lib, controls, selection  # pylint: disable=g-import-not-at-top

  model, policy_dir = policy
  rater = rewards.DemoRater(forms="full", flaw="dative")  # the demo task's corpus, no reference
  partitioner = partitioning.Partitioner(mesh_shape=(2, 1), devices=jax.devices()[:2])
  grow_cfg = grow_lib.GrowConfig(num_samples=2, max_sources=16, batch_size=8, shard_size=8)
  commands.grow_command(model=model, policy_dir=policy_dir, output_dir=str(tmp_path / "grow"),
                        task_name=tasks.DEMO_TASK, feature_lengths=LENGTHS, reward=rater,
                        grow=grow_cfg, partitioner=partitioner)
  config = improve.ImproveConfig(
      thresholds=rewards.ThresholdSchedule([0.5], quantiles=True), steps=2, batch_size=8,
      selection=selection.SelectionConfig(eval_period=1))
  columns = grown.read_columns(grown.shard_paths(str(tmp_path / "grow"),
                                                 grown.load_manifest(str(tmp_path / "grow"))))
  refs = columns["reward"][columns["is_reference"]]
  (tau,) = controls.reference_thresholds(config, str(tmp_path / "grow"))
  assert tau == float(np.quantile(refs, 0.5, method="lower"))  # over the pairs, not samples
  trainer, params = commands._policy(model, policy_dir, LENGTHS, partitioner)  # pylint: disable=protected-access
  validated = []
  ctx = context_lib.StepContext(model=model, partitioner=partitioner, task=tasks.DEMO_TASK,
                                feature_lengths=LENGTHS, reward=rater, progress_bar=False,
                                validate=lambda p: validated.append(1) or 0.5)
  result = controls.arm_step(context_lib.Policy(params, None, policy_dir), controls.FILTERED_BC,
                             config, ctx, grown_dir=str(tmp_path / "grow"), threshold=tau,
                             output_dir=str(tmp_path / "filtered"), place=improve.Place())
  assert result.metrics["kept_samples"] == 0
  assert result.metrics["kept_references"] == int(np.sum(refs >= np.float32(tau))) > 0
  assert result.metrics["reference_fraction"] == 1.0  # every row it trained on is a pair
  assert len(validated) == 2 and selection.Selection(str(tmp_path / "filtered")).finished
  del trainer
