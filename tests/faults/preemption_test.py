"""Preemption: SIGKILL the ReST loop at seeded fault points, re-run it, and get the same end.

A small `rest` run of configs/demo.gin (the tiny model) is run once uninterrupted, with
every fault point it passes traced (`rest_jax/faults.py`). Kill points are then drawn
from that trace with a seeded RNG, in run order, and spread over chains: in each chain
the same command is started with `REST_JAX_FAULT=<site>:<k>` (the process SIGKILLs itself
at the k-th time it reaches `<site>`), then again with the next kill point, and so on,
and finally without a fault until it finishes. Each finished chain must equal the
uninterrupted run bit for bit (the CPU computation is deterministic):

  - the grown dataset: every source has exactly N samples and its reference, no row
    twice, the same texts, rewards and log-likelihoods; no temporary file is left;
  - every checkpoint of every step (BC, Improve): step, parameters, optimizer state;
  - every evaluation and every Improve step's training metrics in rest_state.json.

Replay a failure with REST_JAX_FAULT_SEED=<seed printed in the failure>; REST_JAX_FAULT_KILLS
sets how many kills must happen (10 in `make test`: one chain, which kills at each of
REQUIRED_SITES at least once; set it to 20 or more for a longer soak).
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from rest_jax import checkpoints, files, preemption, selection
from rest_jax.data import grown
from tests import multihost_test

SEED = int(os.environ.get("REST_JAX_FAULT_SEED", "20261124"))
KILLS = int(os.environ.get("REST_JAX_FAULT_KILLS", "10"))
KILLS_PER_CHAIN = 10
# Filtered BC and the rows rater off: their steps run through the same loop, checkpoints
# and state file as ReST's (tests/rest_test.py and tests/stages_test.py run and re-run
# them), and these tests run `rest` dozens of times (the suite's time goes here).
SMALL = [a if not a.startswith("--gin.rest.rest.checkpoint_period") else
         "--gin.rest.rest.checkpoint_period=2" for a in multihost_test.SMALL_REST] + [
             "--gin.FILTERED_BC=False", "--gin.ROWS_RATER=None"]


class Runner:
  """Runs `rest` on SMALL in a subprocess with 2 simulated devices.

  The XLA compilation cache is the test session's (tests/conftest.py), or one under
  `tmp_path` outside it: the soak test's run compiles mostly the programs the
  reference run compiled. (Kills fire at fault points in Python, never inside a
  cache write.)
  """

  def __init__(self, tmp_path, extra=()):
    self.extra = list(extra)  # more gin bindings
    self.env = multihost_test._env(  # pylint: disable=protected-access
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                                 str(tmp_path / "jax_cache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    self.log = []

  def __call__(self, model_dir, fault=None, trace=None, expect_error=None):
    env = dict(self.env)
    if fault:
      env["REST_JAX_FAULT"] = fault
    if trace:
      env["REST_JAX_FAULT_TRACE"] = str(trace)
    proc = subprocess.run(
        [sys.executable, "-m", "rest_jax.main", "rest", *SMALL, *self.extra,
         f"--gin.MODEL_DIR='{model_dir}'"],
        cwd=multihost_test.ROOT, env=env, capture_output=True, text=True, timeout=600)
    self.log.append((str(model_dir), fault, proc.returncode))
    if expect_error:
      assert proc.returncode == 1 and expect_error in proc.stderr, proc.stderr[-3000:]
      return proc.returncode
    if proc.returncode not in (0, -signal.SIGKILL, preemption.EXIT_CODE):
      raise AssertionError(f"seed {SEED}: run with fault {fault} failed ({proc.returncode}) in"
                           f" {model_dir}\n{proc.stderr[-4000:]}\nruns so far: {self.log}")
    return proc.returncode


def _trace(path):
  with open(path) as f:
    return [line.split()[0] for line in f if not line.startswith("KILL")]


# Where a preemption hurts most: every chain kills at each of these at least once.
REQUIRED_SITES = ("grow.sample", "grown.shard_write", "grown.sidecar", "grown.manifest",
                  "improve.step", "checkpoint.save")


def _kill_points(trace, rng, n):
  """`n` fault specs drawn from the reference trace, in run order, covering REQUIRED_SITES.

  A required site is killed at its first occurrence in the run (it is still ahead when
  its turn comes, so it fires); the others at their first or second.
  """
  required = {rng.choice([i for i, site in enumerate(trace) if site == wanted])
              for wanted in REQUIRED_SITES}
  others = [i for i in range(len(trace)) if i not in required]
  chosen = set(rng.sample(others, max(0, min(n - len(required), len(others)))))
  occurrences = {site: trace.count(site) for site in set(trace)}
  return [f"{trace[p]}:{1 if p in required else rng.randint(1, min(2, occurrences[trace[p]]))}"
          for p in sorted(required | chosen)]


TRAINED = ("bc", "improve_1_1", "improve_1_2")


def _end_state(model_dir, trained=TRAINED):
  """Grown rows, checkpoints, evaluations and thresholds of a run (a gs:// one too)."""
  model_dir = str(model_dir)
  state = {"rows": multihost_test.grown_rows(files.join(model_dir, "grow_1"))}
  for step in trained:
    state[step] = checkpoints.read_arrays(files.join(model_dir, step, "checkpoints"))
  steps = json.loads(files.read_text(files.join(model_dir, "rest_state.json")))["steps"]
  state["evaluations"] = {k: v["metrics"] for k, v in steps.items() if k.startswith("eval_")}
  state["improve_metrics"] = {k: v["metrics"] for k, v in steps.items()
                              if k.startswith("improve_")}
  state["thresholds"] = json.loads(files.read_text(files.join(
      model_dir, "rest_state.json")))["summary"]["thresholds"]
  return state


def _assert_same_end_state(reference, model_dir, log, trained=TRAINED):
  """`model_dir` ended as `reference` did (a local `model_dir` holds no temporary file)."""
  got = _end_state(model_dir, trained)
  where = f"seed {SEED}, {model_dir}, runs: {log}"
  sources = {}
  for source_id, sample_id in got["rows"]:
    sources.setdefault(source_id, set()).add(sample_id)
  assert all(samples == {0, 1, 2} for samples in sources.values()), where  # N=2 + reference
  assert got["rows"] == reference["rows"], where
  for step in trained:
    ref_leaves = jax.tree_util.tree_flatten_with_path(reference[step])[0]
    got_leaves = dict(jax.tree_util.tree_flatten_with_path(got[step])[0])
    for path, value in ref_leaves:
      np.testing.assert_array_equal(got_leaves[path], value,
                                    err_msg=f"{step}{jax.tree_util.keystr(path)}; {where}")
  for key in ("evaluations", "improve_metrics", "thresholds"):
    assert got[key] == reference[key], f"{key} differ; {where}"
  leftovers = [os.path.join(d, n) for d, _, names in os.walk(model_dir) for n in names
               if n.startswith(".tmp-")]
  assert not leftovers, f"temporary files left: {leftovers}; {where}"


def _snapshot(directory):
  # config.gin is rewritten by every run (it names this MODEL_DIR, not the copied one's).
  return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file() and p.name != "config.gin"}


def _check_bad_state_is_named(run, tmp_path):
  """A damaged finished run: re-running it names the damage and no file is changed or lost."""
  broken = tmp_path / "broken"
  shutil.copytree(tmp_path / "reference", broken)
  # The selected BC checkpoint (what the finished run reads) corrupted on disk: orbax's
  # read fails, and the error names step and directory.
  best = broken / "bc" / "best"
  step = json.loads((broken / "bc" / "selection.json").read_text())["best"][0]
  for path in (best / str(step)).rglob("*"):
    if path.is_file() and path.stat().st_size > 0 and "d" in path.parent.name:
      path.write_bytes(b"garbage")
  before = _snapshot(broken)
  run(broken, expect_error=f"cannot restore checkpoint step {step} from {broken}/bc/best")
  after = _snapshot(broken)
  assert all(after.get(p) == data for p, data in before.items())
  shutil.rmtree(broken)
  shutil.copytree(tmp_path / "reference", broken)
  # A grown shard truncated by hand.
  shard = broken / "grow_1" / "shard-00001-of-00003.tfrecord"
  shard.write_bytes(shard.read_bytes()[:-10])
  before = _snapshot(broken)
  run(broken, expect_error="shard-00001-of-00003.tfrecord has")
  after = _snapshot(broken)
  assert all(after.get(p) == data for p, data in before.items())


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """An uninterrupted run, its fault-point trace and its end state."""
  tmp_path = tmp_path_factory.mktemp("preemption")
  run = Runner(tmp_path)
  assert run(tmp_path / "reference", trace=tmp_path / "trace") == 0
  trace = _trace(tmp_path / "trace")
  assert set(REQUIRED_SITES) | {"train.step", "eval.batch", "rest.state"} <= set(trace)
  return tmp_path, run, trace, _end_state(tmp_path / "reference")


@pytest.mark.slow
def test_sigterm_saves_at_a_step_boundary_and_the_rerun_ends_the_same(reference_run):
  """A preemption notice (SIGTERM) during BC, Grow, Improve and an evaluation."""
  tmp_path, _, _, reference = reference_run
  run = Runner(tmp_path)
  run.env["REST_JAX_FAULT_SIGNAL"] = "TERM"
  model_dir = tmp_path / "sigterm"
  for fault in ("train.step:3", "grow.sample:2", "improve.step:2", "eval.batch:3"):
    assert run(model_dir, fault=fault) == preemption.EXIT_CODE, (fault, run.log)
  leftovers = [p for p in model_dir.rglob(".tmp-*")]
  assert not leftovers
  assert run(model_dir) == 0
  _assert_same_end_state(reference, model_dir, run.log)


@pytest.mark.slow
def test_a_new_run_starts_from_another_runs_bc_and_grown_dataset(reference_run):
  """BC_FROM / GROW_FROM: read where they are, nothing written there, the same end.

  (The documented way to reuse work. A finished step copied into a new MODEL_DIR is
  reused too: the path a run killed between a step's end and its state write takes.)
  """
  tmp_path, _, _, reference = reference_run
  ref = tmp_path / "reference"
  before = _snapshot(ref)
  model_dir = tmp_path / "from"
  run = Runner(tmp_path, [f"--gin.BC_FROM='{ref / 'bc'}'", f"--gin.GROW_FROM='{ref / 'grow_1'}'",
                          "--gin.BC_PLUS=False"])
  assert run(model_dir) == 0
  assert not (model_dir / "bc").exists() and not (model_dir / "grow_1").exists()
  assert _snapshot(ref) == before
  with open(model_dir / "rest_state.json") as f:
    state = json.load(f)
  steps = state["steps"]
  assert steps["bc"]["reused_from"] == str(ref / "bc")
  assert "bc_plus" not in steps
  assert {k: v["metrics"] for k, v in steps.items() if k.startswith("eval_")} == {
      k: v for k, v in reference["evaluations"].items() if k != "eval_bc_plus"}
  assert state["summary"]["thresholds"] == reference["thresholds"]
  for step in ("improve_1_1", "improve_1_2"):
    got = checkpoints.read_arrays(str(model_dir / step / "checkpoints"))
    for (path, value), (_, want) in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                                        jax.tree_util.tree_flatten_with_path(reference[step])[0]):
      np.testing.assert_array_equal(value, want, err_msg=f"{step}{jax.tree_util.keystr(path)}")
  # A grown dataset of another policy than this run's BC is refused (before BC trains).
  with pytest.raises(ValueError, match=re.escape(f"set BC_FROM = '{ref / 'bc'}'")):
    grown.sampled_from(str(ref / "grow_1"), str(model_dir / "bc"))
  with pytest.raises(ValueError, match="not a finished BC step"):
    selection.finished_bc(str(model_dir))


@pytest.mark.slow
def test_killed_runs_resume_to_the_uninterrupted_end_state(reference_run):
  tmp_path, run, trace, reference = reference_run

  rng = random.Random(SEED)
  kills, tried, finished_chains, chain = [], 0, 0, 0
  while len(kills) < KILLS:
    chain += 1
    model_dir = tmp_path / f"chain_{chain}"
    for fault in _kill_points(trace, rng, KILLS_PER_CHAIN):
      tried += 1
      if run(model_dir, fault=fault) == -signal.SIGKILL:
        kills.append(fault)
    assert run(model_dir) == 0  # the last resume, without a fault, finishes the run
    _assert_same_end_state(reference, model_dir, run.log)
    finished_chains += 1
    assert chain < 2 * (KILLS // KILLS_PER_CHAIN + 1), f"too few kills fired: {run.log}"
  _check_bad_state_is_named(run, tmp_path)
  sites = sorted({k.split(":")[0] for k in kills})
  print(f"\nfault injection (seed {SEED}): {tried} kill points tried, {len(kills)} fired at"
        f" {sites}; {finished_chains} chains resumed to the uninterrupted end state bit for bit")
  assert set(REQUIRED_SITES) <= set(sites), f"seed {SEED}: no kill at {set(REQUIRED_SITES) - set(sites)}"
