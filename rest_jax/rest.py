"""The ReST loop: BC, then G Grow steps, each followed by I Improve steps at rising thresholds.

    MODEL_DIR/
      bc/checkpoints/              the behaviour-cloning policy
      grow_1/                      grown dataset of Grow step 1 (shards + manifest)
      improve_1_1/checkpoints/     policy after Improve step 1 of Grow step 1 ...
      rest_state.json              what is done, with every evaluation and timing
      report.md, *.png             the final table and plots

Every step's output is a file, so `rest` re-run after a crash continues where it
stopped: a finished step (its final checkpoint or manifest exists) is skipped,
an unfinished one resumes (checkpoints, finished shards), and once a step has
been (re)done, every later step is redone from scratch on top of it.
"""

import dataclasses
import json
import os
import resource
import shutil
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

from absl import logging
from clu import metric_writers
import jax
from jax.experimental import multihost_utils

from rest_jax import checkpoints, files, grow as grow_lib, improve as improve_lib, losses
from rest_jax import partitioning, policy_eval, report, train as train_lib
from rest_jax import trainer as trainer_lib
from rest_jax.data import grown, pipeline
from rest_jax.rewards import Reward, ThresholdSchedule

STATE_FILE = "rest_state.json"


def memory_mb() -> Dict[str, float]:
  """This process's resident memory now and its peak so far, in MiB (Linux)."""
  out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
  try:
    with open("/proc/self/statm") as f:
      out["rss_mb"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
  except OSError:
    pass
  return out


@dataclasses.dataclass
class _Progress:
  """The state file: finished steps with their results; written atomically."""

  path: str
  steps: Dict[str, Any] = dataclasses.field(default_factory=dict)
  upstream_changed: bool = False

  @classmethod
  def load(cls, model_dir: str) -> "_Progress":
    path = os.path.join(model_dir, STATE_FILE)
    if jax.process_index() == 0:  # a state file a killed run did not rename into place
      for name in os.listdir(model_dir):
        if name.startswith(files.temporary_prefix(STATE_FILE)):
          os.remove(os.path.join(model_dir, name))
    steps = {}
    if os.path.exists(path):
      with open(path) as f:
        steps = json.load(f)["steps"]
    return cls(path, steps)

  def save(self) -> None:
    if jax.process_index() != 0:
      return
    files.atomic_write_text(self.path, json.dumps({"steps": self.steps}, indent=2), "rest.state")

  def run(self, name: str, finished: bool, fn, outputs: Sequence[str] = ()) -> Any:
    """Runs step `name` unless it is finished and nothing before it was redone."""
    if finished and name in self.steps and not self.upstream_changed:
      logging.info("rest: %s already done", name)
      return self.steps[name]
    if self.upstream_changed and jax.process_index() == 0:
      for path in outputs:  # outputs of an older upstream: start this step afresh
        shutil.rmtree(path, ignore_errors=True)
    if jax.process_count() > 1:  # nobody reads a step's directory while it is removed
      multihost_utils.sync_global_devices(f"rest: {name} starts")
    result = fn()
    if isinstance(result, dict):  # memory after each step: a leak shows as a rising line
      result = {**result, **memory_mb()}
    self.steps[name] = result
    self.upstream_changed = True
    self.save()
    return result


def rest(
    *,
    model,
    model_dir: str,
    train_dataset_cfg: pipeline.DatasetConfig,
    bc_steps: int,
    reward: Reward,
    thresholds: ThresholdSchedule,
    num_grow_steps: int = 1,
    grow_split: str = "train",
    grow_max_sources: Optional[int] = None,
    num_samples: int = 4,
    decoder_params: Optional[Mapping[str, Any]] = None,
    grow_batch_size: int = 32,
    shard_size: int = 1024,
    improve_loss: Optional[losses.OfflineRLLoss] = None,
    improve_steps: int = 300,
    improve_batch_size: int = 64,
    include_references: bool = True,
    mix_ratio: float = 0.0,
    eval_splits: Sequence[str] = ("validation", "test"),
    eval_max_examples: Optional[int] = None,
    eval_beam_size: int = 1,
    best_of_n: int = 4,
    partitioner: Optional[partitioning.Partitioner] = None,
    checkpoint_period: int = 200,
    seed: int = 0,
    progress_bar: bool = True,
    overlength: str = "truncate",
) -> List[Dict[str, Any]]:
  """Runs (or resumes) the whole ReST loop and writes the report.

  Args:
    model: the policy (t5x API).
    model_dir: everything of the run goes here.
    train_dataset_cfg: BC data (its task also provides Grow's sources and evaluation).
    bc_steps: BC training steps.
    reward: scores samples in Grow and evaluation.
    thresholds: the Improve thresholds (I = their number), absolute or quantiles.
    num_grow_steps: G.
    grow_split: the split whose sources Grow samples from.
    grow_max_sources: use only this many sources per Grow step.
    num_samples: N samples per source.
    decoder_params: the Grow sampler's temperature / topk / topp.
    grow_batch_size: sources per sampling batch.
    shard_size: sources per grown shard.
    improve_loss: the offline-RL loss (default BC).
    improve_steps: optimizer steps per Improve step.
    improve_batch_size: Improve batch size.
    include_references: train on scored references too.
    mix_ratio: share of original parallel data in Improve batches.
    eval_splits: evaluated after BC and after every Improve step.
    eval_max_examples: cap per split.
    eval_beam_size: 1 = greedy.
    best_of_n: N of the best-of-N reranking in evaluation (1 = off).
    partitioner: the mesh.
    checkpoint_period: steps between checkpoints.
    seed: every random choice of the run derives from it.
    progress_bar: tqdm bars.
    overlength: a Grow source or reference longer than the feature lengths is cut
      and counted ("truncate") or stops the run ("error"); BC data follows
      `train_dataset_cfg.overlength`.

  Returns:
    The report's rows: one per policy (BC, then each Improve step).
  """
  thresholds.validate(reward.range)
  partitioner = partitioner or partitioning.Partitioner()
  os.makedirs(model_dir, exist_ok=True)
  task, lengths = train_dataset_cfg.mixture_or_task_name, dict(train_dataset_cfg.task_feature_lengths)
  progress = _Progress.load(model_dir)
  policy = trainer_lib.Trainer(
      model, partitioner, trainer_lib.batch_input_shapes(train_dataset_cfg.batch_size, lengths))
  evaluator = policy_eval.PolicyEvaluator(
      model, partitioner, policy.params_sharding, reward, beam_size=eval_beam_size,
      best_of_n=best_of_n, seed=seed)
  writer = metric_writers.create_default_writer(
      os.path.join(model_dir, "rest"), just_logging=jax.process_index() != 0)

  def load_params(step_dir: str):
    ckpt = checkpoints.Checkpointer(step_dir)
    params = ckpt.restore(policy.abstract_state).params
    ckpt.close()
    return params

  def final_step(step_dir: str) -> Optional[int]:
    ckpt_dir = os.path.join(step_dir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
      return None
    ckpt = checkpoints.Checkpointer(step_dir)
    step = ckpt.latest_step()
    ckpt.close()
    return step

  def evaluate(label: str, index: int, params) -> Dict[str, Any]:
    tick = time.perf_counter()
    out = {}
    for split in eval_splits:
      for key, value in evaluator(params, task, split, lengths, eval_max_examples).items():
        out[f"{split}/{key}"] = value
    writer.write_scalars(index, {k: v for k, v in out.items() if not k.endswith("examples")})
    logging.info("rest eval %s: %s", label, out)
    return {"policy": label, "index": index, "metrics": out,
            "seconds": time.perf_counter() - tick}

  # --- BC -------------------------------------------------------------------
  bc_dir = os.path.join(model_dir, "bc")

  def run_bc():
    tick = time.perf_counter()
    train_lib.train(model=model, train_dataset_cfg=train_dataset_cfg, model_dir=bc_dir,
                    total_steps=bc_steps, partitioner=partitioner,
                    checkpoint_period=checkpoint_period, seed=seed, progress_bar=progress_bar)
    return {"seconds": time.perf_counter() - tick}

  progress.run("bc", final_step(bc_dir) == bc_steps, run_bc, [bc_dir])
  params, policy_dir = load_params(bc_dir), bc_dir
  rows = [progress.run("eval_bc", True, lambda: evaluate("BC", 0, params))]

  # --- Grow / Improve ---------------------------------------------------------
  loss = improve_loss or losses.OfflineRLLoss("bc")
  # Compiled once for the run: every Grow step samples, every Improve step trains with them.
  decoders = {}
  improve_trainer = {}
  index = 0
  for g in range(1, num_grow_steps + 1):
    grow_dir = os.path.join(model_dir, f"grow_{g}")
    grow_params = params

    def run_grow(grow_dir=grow_dir, grow_params=grow_params, g=g, policy_dir=policy_dir):
      tick = time.perf_counter()
      if not decoders:
        decoders["grow"] = grow_lib.Decoders(
            model, partitioner, policy.params_sharding, num_samples,
            {"temperature": 1.0, **(decoder_params or {})})
      timings = grow_lib.grow(
          model=model, params=grow_params, partitioner=partitioner,
          params_sharding=policy.params_sharding, task_name=task, split=grow_split,
          feature_lengths=lengths, output_dir=grow_dir, reward=reward,
          num_samples=num_samples, decoder_params=decoder_params, batch_size=grow_batch_size,
          shard_size=shard_size, max_sources=grow_max_sources,
          include_references=include_references, seed=seed, grow_step=g, overlength=overlength,
          metadata={"policy": os.path.abspath(policy_dir)}, progress_bar=progress_bar,
          decoders=decoders["grow"])
      return {**timings, "seconds": time.perf_counter() - tick}

    progress.run(f"grow_{g}", os.path.exists(os.path.join(grow_dir, grown.MANIFEST)), run_grow,
                 [grow_dir])
    manifest = grown.load_manifest(grow_dir, verify_counts=False)
    rewards = grown.read_rewards(grown.shard_paths(grow_dir, manifest))
    taus = thresholds.resolve(rewards)
    progress.steps.setdefault("thresholds", {})[str(g)] = taus
    for i, tau in enumerate(taus, start=1):
      index += 1
      step_dir = os.path.join(model_dir, f"improve_{g}_{i}")

      def run_improve(step_dir=step_dir, tau=tau, start_params=params, g=g, i=i):
        if not improve_trainer:
          improve_trainer["trainer"] = trainer_lib.Trainer(
              model, partitioner, trainer_lib.batch_input_shapes(improve_batch_size, lengths),
              loss_fn=loss)
        result = improve_lib.improve(
            model=model, init_params=start_params, partitioner=partitioner,
            grown_dir=grow_dir, threshold=tau, model_dir=step_dir, feature_lengths=lengths,
            loss=loss, train_steps=improve_steps, batch_size=improve_batch_size,
            include_references=include_references, mix_task=task if mix_ratio else None,
            mix_ratio=mix_ratio, reward_high=reward.range[1],
            checkpoint_period=checkpoint_period, seed=seed + 1000 * g + i,
            progress_bar=progress_bar, name=f"improve {g}.{i}",
            trainer=improve_trainer["trainer"])
        return {"metrics": result["metrics"], "seconds": result["seconds"]}

      progress.run(f"improve_{g}_{i}", final_step(step_dir) == improve_steps, run_improve,
                   [step_dir])
      params, policy_dir = load_params(step_dir), step_dir
      rows.append(progress.run(f"eval_{g}_{i}", True, lambda g=g, i=i, tau=tau, p=params:
                               {**evaluate(f"G{g} I{i} (tau={tau:.3f})", index, p)}))
  progress.save()
  writer.flush()
  if jax.process_index() == 0:
    report.write_report(model_dir, rows, progress.steps, eval_splits, best_of_n)
  return rows
