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


def _train(ratings_file, model_dir, fault=None, signal="KILL", ensemble=1):
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
          "--gin.learned.train_reward_model.progress_bar=False",
          f"--gin.REWARD_ENSEMBLE={ensemble}"]
  return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _params(model_dir, member=None):
  directory = model_dir if member is None else os.path.join(model_dir, f"member_{member}")
  return jax.tree_util.tree_leaves(checkpoints.read_arrays(os.path.join(directory, "checkpoints"))["params"])


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


def test_an_ensemble_trained_in_threads_resumes_bit_equal(tmp_path):
  """A plain shell has one CPU device: an ensemble's members train in threads. Preempted
  (SIGTERM) when the steps of all three reach 10, every member saves at its next step and
  stops; killed there, each resumes from its own checkpoints. Either way the same command
  ends with every member bit-equal to an uninterrupted run's."""
  from rest_jax.data import demo_corpus  # pylint: disable=g-import-not-at-top

  pairs = demo_corpus.generate_splits(200, 0, 0, seed=4)["train"]
  path = ratings.write_ratings(str(tmp_path / "ratings.tsv"), ratings.build_ratings(pairs, 2))
  whole = _train(path, tmp_path / "whole", ensemble=3)
  assert whole.returncode == 0, whole.stderr[-3000:]
  preempted = _train(path, tmp_path / "preempted", fault="reward_model.step:10", signal="TERM",
                     ensemble=3)
  assert preempted.returncode == preemption.EXIT_CODE, preempted.stderr[-2000:]
  assert "preempted during reward model (3 members) at step" in preempted.stderr
  for k in range(3):  # each stopped before its end, at a step it saved
    latest = checkpoints.Checkpointer(str(tmp_path / "preempted" / f"member_{k}")).latest_step()
    assert latest is not None and latest < STEPS, (k, latest)
  killed = _train(path, tmp_path / "killed", fault="reward_model.step:10", ensemble=3)
  assert killed.returncode == -9, killed.stderr[-2000:]
  for name in ("preempted", "killed"):
    again = _train(path, tmp_path / name, ensemble=3)
    assert again.returncode == 0, again.stderr[-3000:]
    for k in range(3):
      for a, b in zip(_params(str(tmp_path / name), k), _params(str(tmp_path / "whole"), k)):
        np.testing.assert_array_equal(a, b)
