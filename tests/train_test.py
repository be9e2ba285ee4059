"""BC training end to end: loss falls, checkpoints round-trip, a resumed run equals an uninterrupted one."""

import gin
import jax
import numpy as np
import pytest

from rest_jax import checkpoints, main, partitioning, train, trainer as trainer_lib
from rest_jax.data import pipeline, tasks
from tests.conftest import make_model

LENGTHS = {"inputs": 24, "targets": 24}


def _config(batch_size=16):
  return pipeline.DatasetConfig(tasks.DEMO_TASK, LENGTHS, "train", batch_size, seed=3)


def _train(model_dir, steps, **kw):
  return train.train(model=make_model(vocab_size=384), train_dataset_cfg=_config(),
                     model_dir=str(model_dir), total_steps=steps, checkpoint_cfg=train.CheckpointConfig(3),
                     progress_bar=False, partitioner=partitioning.Partitioner(mesh_shape=(2, 1),
                     devices=jax.devices()[:2]), **kw)


def _final_params(model_dir):
  ckpt = checkpoints.Checkpointer(str(model_dir))
  trainer = trainer_lib.Trainer(make_model(vocab_size=384), partitioning.Partitioner(
      mesh_shape=(2, 1), devices=jax.devices()[:2]), trainer_lib.batch_input_shapes(16, LENGTHS))
  state = ckpt.restore(trainer.abstract_state)
  ckpt.close()
  return int(state.step), trainer_lib.to_host(state.params)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
  _train(tmp_path / "straight", 6)
  _train(tmp_path / "resumed", 3)  # "killed" after step 3's checkpoint
  _train(tmp_path / "resumed", 6)
  step_a, params_a = _final_params(tmp_path / "straight")
  step_b, params_b = _final_params(tmp_path / "resumed")
  assert step_a == step_b == 6
  jax.tree_util.tree_map(np.testing.assert_array_equal, params_a, params_b)


def test_restore_of_a_missing_or_corrupt_checkpoint_names_it(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path / "empty"))
  trainer = trainer_lib.Trainer(make_model(), partitioning.Partitioner(
      devices=jax.devices()[:1]), trainer_lib.batch_input_shapes(2, {"inputs": 4, "targets": 4}))
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint in"):
    ckpt.restore(trainer.abstract_state)
  ckpt.save(trainer.init_state(jax.random.PRNGKey(0)), force=True)
  ckpt.wait()
  for path in (tmp_path / "empty" / "checkpoints" / "0").rglob("*"):
    if path.is_file() and path.stat().st_size > 0 and "d" in path.parent.name:
      path.write_bytes(b"garbage")
  with pytest.raises(checkpoints.CheckpointError, match="step 0"):
    checkpoints.Checkpointer(str(tmp_path / "empty")).restore(trainer.abstract_state)


@pytest.mark.slow
def test_cli_trains_the_demo_config_and_metrics_improve(tmp_path, capsys):
  gin.clear_config()
  code = main.main([
      "train", "--gin_file=configs/demo_bc.gin", f"--gin.MODEL_DIR='{tmp_path}'",
      "--gin.TRAIN_STEPS=80", "--gin.EVAL_PERIOD=80", "--gin.EVAL_BATCHES=1",
      "--gin.BATCH_SIZE=32", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}",
  ])
  gin.clear_config()
  assert code == 0
  out = capsys.readouterr().out
  rows = [line.split(" | ") for line in out.splitlines() if line[:1].isdigit() and " | " in line]
  first, last = [float(x) for x in rows[0][1:]], [float(x) for x in rows[-1][1:]]
  assert last[0] < 0.6 * first[0]          # loss
  assert last[1] > first[1] + 0.2          # token accuracy
  assert last[3] > first[3]                # chrF
  assert (tmp_path / "config.gin").exists()
  assert list((tmp_path / "train").iterdir())  # TensorBoard summaries
