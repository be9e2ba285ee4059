"""Grow: sample N translations per source with the policy, score them, write the grown dataset.

Sources are cut into shards of `shard_size` in split order; process `p` of `P`
handles shards `p, p + P, ...` and writes each with `grown.write_shard` (atomic).
Finished shards are skipped when the step is re-run, and the manifest is written
once, by process 0, after every process has finished.

Each sample row keeps what the offline-RL losses need (see `rest_jax.data.grown`):
the sampled token ids, their log-probabilities under the distribution sampled
from and under the policy at T = 1, whether the sample ended with EOS, its
reward, and its source's mean (and leave-one-out mean) sample reward. Each
source's reference is written too: scored like a sample by a reference-free
reward, and never scored by a reward that reads references (it would be scored
against itself).
"""

import dataclasses
import inspect
import json
import os
import time
from typing import Any, Dict, List, Mapping, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import tqdm

from rest_jax import faults, inference, partitioning, preemption, sampling as sampling_lib
from rest_jax.context import Policy, StepContext
from rest_jax.data import grown

# The policy itself (T = 1, no filter): what a reference's per-token log-probabilities are under.
POLICY = sampling_lib.SamplingConfig(temperature=1.0)


def _reference_targets(target_tokens, length, rows):
  """`[rows, length]` reference ids (rows past the batch's references stay padding)."""
  targets = np.zeros((rows, length), np.int32)
  for i, t in enumerate(target_tokens):
    targets[i, : min(len(t), length)] = t[:length]
  return targets


@dataclasses.dataclass(frozen=True)
class GrowConfig:
  """Grow's settings, bound in gin (`grow.GrowConfig`) and passed whole.

  Attributes:
    steps: G, the number of Grow steps of a `rest` run.
    split: the split whose sources are sampled.
    max_sources: use only the first sources of the split (None: all).
    num_samples: N samples per source (the paper's K).
    sampling: the behaviour distribution (the paper's: T = 0.8, no top-k/top-p).
    batch_size: sources per sampling batch.
    shard_size: sources per grown shard (the unit of resumption).
    overlength: a source or reference longer than the feature lengths is cut and
      counted ("truncate") or stops the run ("error").
  """

  steps: int = 1
  split: str = "train"
  max_sources: Optional[int] = None
  num_samples: int = 4
  sampling: sampling_lib.SamplingConfig = sampling_lib.SamplingConfig()
  batch_size: int = 32
  shard_size: int = 1024
  overlength: str = "truncate"

  def __post_init__(self):
    if self.steps < 0 or self.num_samples < 1:
      raise ValueError(f"GrowConfig: steps={self.steps} must be >= 0 and num_samples="
                       f"{self.num_samples} >= 1")


class Decoders:
  """Grow's compiled sampler and reference scorer, kept across Grow steps.

  Compiling them once per run instead of once per Grow step saves the compile time
  and keeps memory flat (each compilation holds on to memory of its own).
  """

  def __init__(self, model, partitioner: partitioning.Partitioner, params_sharding: Any,
               num_samples: int, sampling: sampling_lib.SamplingConfig):
    self.key = (num_samples, sampling)
    self.sampler = inference.PolicyDecoder(model, partitioner, params_sharding, num_samples,
                                           sampling, token_log_probs=True)
    eos_id = model.output_vocabulary.eos_id
    data = partitioner.data_sharding()
    self.scorer = partitioner.partition(
        lambda p, enc, targets: inference.teacher_forced_log_probs(
            model, p, enc, targets, POLICY, eos_id)[1],
        in_shardings=(params_sharding, data, data), out_shardings=data)
    self.partitioner = partitioner

  def __call__(self, params, tokens, keys, targets, length: int):
    """N samples per source, and the references' per-token log-probabilities."""
    out = self.sampler(params, tokens, length, keys)
    sharded = self.partitioner.shard_batch(
        {"enc": tokens, "targets": _reference_targets(targets, length, len(tokens))})
    return out, self.partitioner.to_local(
        self.scorer(params, sharded["enc"], sharded["targets"]))

  def idle(self, params, batches: int, local_size: int, lengths: Mapping[str, int]) -> None:
    """Runs `batches` empty batches: a host with fewer left still joins every program."""
    tokens = np.zeros((local_size, lengths["inputs"]), np.int32)
    keys = np.zeros((local_size, self.key[0], 2), np.uint32)
    for _ in range(batches):
      self(params, tokens, keys, [[]] * local_size, lengths["targets"])


@dataclasses.dataclass(frozen=True)
class ShardPlan:
  """Which shards of a Grow step this host writes, and how many sampling batches each
  host runs (sampling is one program over all hosts: every host runs as many as the
  busiest one, the others idle on empty batches).

  Attributes:
    num_sources: the split's sources sampled (at most `GrowConfig.max_sources`).
    local_size: this host's sources per sampling batch.
    shard_size: sources per shard, whole batches on any host count.
    num_shards: the step's shards.
    done: shards finished by an earlier run.
    mine: the shards this host writes now.
    my_batches: this host's sampling batches; `all_batches` the busiest host's.
  """

  num_sources: int
  local_size: int
  shard_size: int
  num_shards: int
  done: frozenset
  mine: tuple
  my_batches: int
  all_batches: int


def plan_shards(config: GrowConfig, context: StepContext, output_dir: str,
                grow_step: int) -> ShardPlan:
  """The step's shards and this host's share (removing an interrupted run's temporaries)."""
  partitioner, num_hosts = context.partitioner, jax.process_count()
  num_sources = inference.count_examples(context.task, config.split, config.max_sources)
  if num_sources == 0:
    raise ValueError(f"task {context.task} split {config.split} has no sources to grow from")
  if partitioner.local_data_shards * num_hosts != partitioner.data_parallel_size:
    raise ValueError(
        f"grow needs every host to hold its own rows of a batch, but mesh"
        f" {dict(partitioner.mesh.shape)} spreads the model axis over hosts; use a mesh whose"
        " model axis fits in one host")
  local_size = partitioner.local_batch_size(config.batch_size)
  shard_size = -(-config.shard_size // config.batch_size) * config.batch_size
  num_shards = -(-num_sources // shard_size)
  done = frozenset(grown.completed_shards(output_dir, num_shards))
  mine = tuple(s for s in range(num_shards)
               if s % num_hosts == jax.process_index() and s not in done)
  stale = grown.remove_stale_temporaries(output_dir, list(mine), num_shards,
                                         manifest=jax.process_index() == 0)
  if stale:
    logging.info("grow %d: removed %d temporary files of an interrupted run", grow_step,
                 len(stale))
  my_batches = sum(-(-(min((s + 1) * shard_size, num_sources) - s * shard_size) // local_size)
                   for s in mine)
  all_batches = my_batches
  if num_hosts > 1:
    all_batches = int(np.max(multihost_utils.process_allgather(np.int64(my_batches))))
  return ShardPlan(num_sources, local_size, shard_size, num_shards, done, mine, my_batches,
                   all_batches)


def sample_batch(decoders: "Decoders", params: Any, batch: Mapping[str, Any],
                 config: GrowConfig, context: StepContext, grow_step: int,
                 timings: Dict[str, Any]) -> List[Dict[str, Any]]:
  """One batch of sources: N samples each and its reference, as unscored rows."""
  length, num_samples = context.feature_lengths["targets"], config.num_samples
  keys = inference.sample_keys(context.seed, grow_step, batch["source_id"], num_samples)
  faults.point("grow.sample")
  out, ref_lp = decoders(params, batch["encoder_input_tokens"], keys, batch["target_tokens"],
                         length)
  texts = inference.decode_texts(context.model.output_vocabulary, out["tokens"])
  valid = int(batch["valid"].sum())
  timings["overlength_sources"] += batch["overlength"]
  # The sampler's scores are sequence log-probabilities under the distribution it drew
  # from; the per-token values must add up to them (a check on both, whatever the sampler).
  behaviour_sums = out["behaviour_log_probs"][:valid].sum(-1)
  timings["score_mismatch"] = max(timings["score_mismatch"], float(np.max(
      np.abs(behaviour_sums - out["scores"][:valid]), initial=0.0)))
  eos_id, rows = context.model.output_vocabulary.eos_id, []
  for i in range(valid):
    candidates = []
    for n in range(num_samples):
      ids = out["tokens"][i, n]
      is_eos = ids == eos_id
      keep = (np.cumsum(is_eos) - is_eos) == 0  # through the first EOS
      ended = bool(np.any(ids[keep] == eos_id))
      timings["cut_samples"] += int(not ended)
      candidates.append((texts[i][n], n, 0, ids[keep], out["behaviour_log_probs"][i, n][keep],
                         out["policy_log_probs"][i, n][keep], ended))
    if num_samples > 1 and not config.sampling.greedy and len(
        {tuple(c[3].tolist()) for c in candidates}) == 1:
      timings["identical_sample_sources"] += 1
    ids = np.asarray(batch["target_tokens"][i])[:length]
    lp = ref_lp[i][: len(ids)]
    candidates.append((batch["targets"][i], num_samples, 1, ids, lp, lp,
                       bool(ids[-1] == eos_id)))
    for text, sample_id, is_ref, ids, behaviour, policy, ended in candidates:
      rows.append({"source": batch["inputs"][i], "hypothesis": text,
                   "reference": batch["targets"][i],
                   "meta": {"source_id": int(batch["source_id"][i]), "sample_id": sample_id,
                            "is_reference": is_ref, "target_ids": ids,
                            "behaviour_log_probs": behaviour, "policy_log_probs": policy,
                            "ended_with_eos": int(ended)}})
  return rows


def _write_manifest(config: GrowConfig, context: StepContext, output_dir: str, grow_step: int,
                    plan: ShardPlan, decoders: "Decoders", policy_dir: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"grow {output_dir} shards written")
  if jax.process_index() == 0 and not os.path.exists(os.path.join(output_dir, grown.MANIFEST)):
    faults.point("grow.manifest")
    reward, fn = context.reward, decoders.sampler.decode_fn
    grown.write_manifest(output_dir, plan.num_shards, {
        "grow_step": grow_step, "task": context.task, "split": config.split,
        "num_samples": config.num_samples, "sampling": dataclasses.asdict(config.sampling),
        "sampler": f"{fn.__module__}.{fn.__name__}",
        "reward": reward.name, "reward_identity": json.loads(json.dumps(
            reward.identity, default=str)), "reward_range": list(reward.range),
        "reward_reads_references": bool(reward.needs_reference),
        "references_scored": bool(not reward.needs_reference),
        "seed": context.seed, "policy": policy_dir})
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"grow {output_dir} manifest written")


def _log_counts(config: GrowConfig, context: StepContext, grow_step: int,
                decoders: "Decoders", timings: Dict[str, Any]) -> None:
  """Sums the hosts' counts into `timings` and warns about what they show."""
  if jax.process_count() > 1:
    for key in ("overlength_sources", "identical_sample_sources", "cut_samples"):
      timings[key] = int(np.sum(multihost_utils.process_allgather(np.int64(timings[key]))))
  if timings["overlength_sources"]:
    logging.warning("grow %d: %d sources or references were longer than %s and were cut",
                    grow_step, timings["overlength_sources"], dict(context.feature_lengths))
  if timings["identical_sample_sources"]:
    logging.warning(
        "grow %d: for %d sources all %d samples were identical although %s samples: the"
        " policy may be near-deterministic there, or the sampler greedy", grow_step,
        timings["identical_sample_sources"], config.num_samples, config.sampling)
  if timings["score_mismatch"] > 1e-2:
    logging.warning(
        "grow %d: the sampler's sequence scores differ from the sum of the stored per-token"
        " behaviour log-probabilities by up to %.3g nats. The stored values are %s, so the"
        " importance ratios Improve computes are 1 at the behaviour policy; the difference is"
        " the sampler's own rounding (e.g. a bfloat16 cached decode), not an error in them.",
        grow_step, timings["score_mismatch"],
        "the sampler's own float32 values" if inference.computes_in_float32(context.model) and
        "return_token_log_probs" in inspect.signature(decoders.sampler.decode_fn).parameters
        else "from one teacher-forced pass, the computation Improve trains with")
  logging.info("grow %d: %s", grow_step, timings)


def _finish_shard(rows, tick, reward, output_dir, shard, num_shards, timings) -> None:
  """Scores a shard's rows and writes it (nothing is written if scoring fails).

  Samples are always scored; references only by a reward that reads no reference.
  """
  sampled = time.perf_counter()
  meta = [r["meta"] for r in rows]
  scored = [not (m["is_reference"] and reward.needs_reference) for m in meta]
  rewards = np.full(len(meta), np.nan)
  index = [i for i, s in enumerate(scored) if s]
  if index:
    rewards[index] = reward([rows[i]["source"] for i in index],
                            [rows[i]["hypothesis"] for i in index],
                            [rows[i]["reference"] for i in index])
  scored_at = time.perf_counter()
  # A guarded reward (rewards/guards.py) says how many rows each guard fired on.
  counts = {f"guard_{k}": v for k, v in getattr(reward, "fired", {}).items()} if index else {}
  grown.write_shard(output_dir, shard, num_shards,
                    _rows([r["source"] for r in rows], [r["hypothesis"] for r in rows],
                          rewards, scored, meta), counts)
  timings["sample_s"] += sampled - tick
  timings["score_s"] += scored_at - sampled
  timings["write_s"] += time.perf_counter() - scored_at
  timings["samples"] += sum(1 for m in meta if not m["is_reference"])
  timings["sources"] += len({m["source_id"] for m in meta})


def _rows(sources, hypotheses, rewards, scored, meta):
  """Rows with each source's mean sample reward (`value`) and leave-one-out mean (`value_loo`)."""
  per_source: Dict[int, list] = {}
  for m, r in zip(meta, rewards):
    if not m["is_reference"]:
      per_source.setdefault(m["source_id"], []).append(float(r))
  for src, hyp, r, is_scored, m in zip(sources, hypotheses, rewards, scored, meta):
    others = per_source[m["source_id"]]
    value = float(np.mean(others))
    value_loo = value
    if not m["is_reference"] and len(others) > 1:
      value_loo = (float(np.sum(others)) - float(r)) / (len(others) - 1)
    yield {"inputs": src, "targets": hyp, "reward": float(r), "scored": int(is_scored),
           "value": value, "value_loo": value_loo, **m}


def grow_step(policy: Policy, config: GrowConfig, context: StepContext, *, output_dir: str,
              grow_step: int = 1, params_sharding: Any = None,
              decoders: Optional[Decoders] = None) -> Dict[str, Any]:
  """Grow step `grow_step` from `policy`, as `rest` and the `grow` command run it.

  Args:
    policy: the policy that samples (its directory is recorded in the manifest).
    config: Grow's settings.
    context: the run's model, mesh, task, reward, seed.
    output_dir: the grown dataset's directory.
    grow_step: g (1-based): with the seed, source id and sample index, every
      sample's key.
    params_sharding: the policy parameters' shardings.
    decoders: `Decoders(...)` compiled once per run (built here if None).

  Returns:
    Timings and counts (`grow`'s), with the rows counted over every shard.
  """
  tick = time.perf_counter()
  decoders = decoders or Decoders(context.model, context.partitioner, params_sharding,
                                  config.num_samples, config.sampling)
  if decoders.key != (config.num_samples, config.sampling):
    raise ValueError(f"decoders were compiled for {decoders.key}, not for"
                     f" {config.num_samples} samples with {config.sampling}")
  plan = plan_shards(config, context, output_dir, grow_step)
  timings = {"sample_s": 0.0, "score_s": 0.0, "write_s": 0.0, "samples": 0, "sources": 0,
             "overlength_sources": 0, "identical_sample_sources": 0, "cut_samples": 0,
             "score_mismatch": 0.0}
  bar = tqdm.tqdm(total=plan.num_sources, initial=len(plan.done) * plan.shard_size,
                  disable=not (context.progress_bar and jax.process_index() == 0), unit="src",
                  desc=f"grow {grow_step}", dynamic_ncols=True)
  start_time, pending, rows, shard_tick = time.perf_counter(), set(plan.mine), None, 0.0
  # One pass over the split in order: batches never straddle shards (shard_size is a
  # multiple of the batch size), and sources of other hosts' or finished shards are
  # read past, so the cost stays linear in the split however many shards there are.
  batches = inference.source_batches(context.task, config.split, context.feature_lengths,
                                     plan.local_size, 0, plan.num_sources,
                                     config.overlength) if pending else iter(())
  for batch_index, batch in enumerate(batches):
    shard = int(batch["source_id"][0]) // plan.shard_size
    if shard not in pending:
      continue
    # Between batches: the finished shards are kept, the one in progress is redone. (With
    # several hosts, whose batches differ in number, the notice takes effect at the next
    # training step instead.)
    if jax.process_count() == 1:
      preemption.check(batch_index, f"grow {grow_step}")
    if rows is None:
      rows, shard_tick = [], time.perf_counter()
    rows += sample_batch(decoders, policy.params, batch, config, context, grow_step, timings)
    valid = int(batch["valid"].sum())
    bar.update(valid)
    last = int(batch["source_id"][valid - 1]) + 1
    if last == min((shard + 1) * plan.shard_size, plan.num_sources):  # the shard is complete
      _finish_shard(rows, shard_tick, context.reward, output_dir, shard, plan.num_shards,
                    timings)
      pending.discard(shard)
      rows = None
      elapsed = max(time.perf_counter() - start_time, 1e-9)
      bar.set_postfix(samples_s=f"{timings['samples'] / elapsed:.0f}")
  decoders.idle(policy.params, plan.all_batches - plan.my_batches, plan.local_size,
                context.feature_lengths)
  bar.close()
  _write_manifest(config, context, output_dir, grow_step, plan, decoders,
                  os.path.abspath(policy.directory))
  _log_counts(config, context, grow_step, decoders, timings)
  # Summed over every shard, whichever run or host wrote it (e.g. reward guards fired).
  counts = grown.load_manifest(output_dir, verify_counts=False).get("counts", {})
  return {**timings, "counts": counts, "seconds": time.perf_counter() - tick}
