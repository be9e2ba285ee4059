"""The reward model trains in the same loop as BC and Improve: killed (SIGKILL) or preempted
(SIGTERM) mid-training, the same command continues and ends bit-equal to an uninterrupted run."""

import json
import os
import subprocess
import sys

import jax
import numpy as np

from rest_jax import checkpoints, preemption
from rest_jax.rewards import ratings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 12


def _train(ratings_file, model_dir, fault=None, signal="KILL"):
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "REST_JAX_FAULT", "REST_JAX_FAULT_SIGNAL")}
  if fault:
    env.update(REST_JAX_FAULT=fault, REST_JAX_FAULT_SIGNAL=signal)
  argv = [sys.executable, "-m", "rest_jax.main", "reward_model",
          "--gin_file=gin/runs/reward_model.gin", f"--gin.RATINGS_FILE='{ratings_file}'",
          f"--gin.REWARD_MODEL_DIR='{model_dir}'", f"--gin.REWARD_TRAIN_STEPS={STEPS}",
          "--gin.learned.RewardModelConfig.emb_dim=32", "--gin.learned.RewardModelConfig.mlp_dim=64",
          "--gin.learned.RewardModelConfig.num_heads=2", "--gin.learned.RewardModelConfig.head_dim=16",
          "--gin.learned.RewardModelConfig.num_layers=1",
          "--gin.learned.train_reward_model.checkpoint_period=4",
          "--gin.learned.train_reward_model.batch_size=16",
          "--gin.learned.train_reward_model.progress_bar=False"]
  return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _params(model_dir):
  return jax.tree_util.tree_leaves(checkpoints.read_arrays(os.path.join(model_dir, "checkpoints"))["params"])


def test_reward_model_resumes_bit_equal_after_sigkill_and_sigterm(tmp_path):
  from rest_jax.data import demo_corpus  # pylint: disable=g-import-not-at-top

  pairs = demo_corpus.generate_splits(200, 0, 0, seed=1)["train"]
  path = ratings.write_ratings(str(tmp_path / "ratings.tsv"), ratings.build_ratings(pairs, 2))
  whole = _train(path, tmp_path / "whole")
  assert whole.returncode == 0, whole.stderr[-3000:]
  killed = _train(path, tmp_path / "killed", fault="reward_model.step:7")
  assert killed.returncode == -9, killed.stderr[-2000:]
  # (the kill may land while orbax still writes step 4's checkpoint: then it restarts at 0)
  preempted = _train(path, tmp_path / "preempted", fault="reward_model.step:6", signal="TERM")
  assert preempted.returncode == preemption.EXIT_CODE, preempted.stderr[-2000:]
  assert "preempted during reward model at step 6" in preempted.stderr
  assert checkpoints.Checkpointer(str(tmp_path / "preempted")).latest_step() == 6
  for name in ("killed", "preempted"):
    again = _train(path, tmp_path / name)
    assert again.returncode == 0, again.stderr[-3000:]
    for a, b in zip(_params(str(tmp_path / name)), _params(str(tmp_path / "whole"))):
      np.testing.assert_array_equal(a, b)
    held_out = json.loads((tmp_path / name / "reward_model.json").read_text())["held_out"]
    assert held_out == json.loads((tmp_path / "whole" / "reward_model.json").read_text())[
        "held_out"]
