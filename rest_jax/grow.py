"""Grow: sample N translations per source with the policy, score them, write the grown dataset.

Sources are cut into shards of `shard_size` in split order; process `p` of `P`
handles shards `p, p + P, ...` and writes each with `grown.write_shard` (atomic).
Finished shards are skipped when the step is re-run, and the manifest is written
once, by process 0, after every process has finished. Each row carries the
behaviour policy's log-likelihood (`log_prob`) and its source's mean sample
reward (`value`), which the offline-RL losses use.
"""

import os
import time
from typing import Any, Dict, Mapping, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import tqdm

from rest_jax import decoding, faults, inference, partitioning
from rest_jax.data import grown
from rest_jax.rewards import Reward


def _reference_batch(batch_tokens, target_tokens, length):
  """A teacher-forcing batch of the references, to score them under the policy."""
  targets = np.zeros((len(batch_tokens), length), np.int32)
  for i, t in enumerate(target_tokens):
    targets[i, : min(len(t), length)] = t[:length]
  inputs = np.concatenate([np.zeros((len(targets), 1), np.int32), targets[:, :-1]], axis=1)
  batch = {"encoder_input_tokens": batch_tokens, "decoder_input_tokens": inputs,
           "decoder_target_tokens": targets, "decoder_loss_weights": (targets > 0).astype(np.int32)}
  return batch


class Decoders:
  """Grow's compiled sampler and reference scorer, kept across Grow steps.

  Compiling them once per run instead of once per Grow step saves the compile time
  and keeps memory flat (each compilation holds on to memory of its own).
  """

  def __init__(self, model, partitioner: partitioning.Partitioner, params_sharding: Any,
               num_samples: int, decoder_params: Mapping[str, Any]):
    self.key = (num_samples, tuple(sorted(decoder_params.items())))
    self.sampler = inference.PolicyDecoder(model, partitioner, params_sharding, num_samples,
                                           decoder_params, decode_fn=decoding.temperature_sample)
    data = partitioner.data_sharding()
    self.scorer = partitioner.partition(model.score_batch, in_shardings=(params_sharding, data),
                                        out_shardings=data)


def grow(
    *,
    model,
    params: Any,
    partitioner: partitioning.Partitioner,
    params_sharding: Any,
    task_name: str,
    split: str,
    feature_lengths: Mapping[str, int],
    output_dir: str,
    reward: Reward,
    num_samples: int = 4,
    decoder_params: Optional[Mapping[str, Any]] = None,
    batch_size: int = 32,
    shard_size: int = 1024,
    max_sources: Optional[int] = None,
    include_references: bool = True,
    seed: int = 0,
    grow_step: int = 1,
    overlength: str = "truncate",
    metadata: Optional[Mapping[str, Any]] = None,
    progress_bar: bool = True,
    decoders: Optional[Decoders] = None,
) -> Dict[str, Any]:
  """Writes the grown dataset of one Grow step into `output_dir` and returns timings.

  Args:
    model: the policy (t5x API); it samples with `decoding.temperature_sample`.
    params: the policy's parameters, sharded by `params_sharding`.
    partitioner: the mesh.
    params_sharding: parameter shardings.
    task_name: seqio task whose `split` provides the sources (and references).
    split: e.g. "train".
    feature_lengths: `{"inputs": Le, "targets": L}`; L is the sample length.
    output_dir: the grown dataset's directory.
    reward: scores every sample (and reference) against the reference.
    num_samples: N samples per source.
    decoder_params: temperature, topk, topp of the sampler.
    batch_size: sources per sampling batch (a multiple of the data-parallel size).
    shard_size: sources per shard (the unit of resumption), rounded up to a
      multiple of `batch_size`.
    max_sources: use only the first sources of the split.
    include_references: also write each reference, scored, as `is_reference` rows.
    seed: with `grow_step`, source id and sample index, sets every sample's key.
    grow_step: this Grow step's number.
    overlength: a source or reference longer than its feature length is cut and
      counted ("truncate"; `timings["overlength_sources"]`) or stops Grow ("error").
    metadata: recorded in the manifest (policy checkpoint, reward config...).
    progress_bar: a tqdm bar with sources/s and samples/s.
    decoders: compiled decoders from an earlier Grow step of the same run (same
      model, mesh, N and sampler settings); built here if None.
  """
  vocabulary = model.output_vocabulary
  num_sources = inference.count_examples(task_name, split, max_sources)
  if num_sources == 0:
    raise ValueError(f"task {task_name} split {split} has no sources to grow from")
  num_hosts = jax.process_count()
  if partitioner.local_data_shards * num_hosts != partitioner.data_parallel_size:
    raise ValueError(
        f"grow needs every host to hold its own rows of a batch, but mesh"
        f" {dict(partitioner.mesh.shape)} spreads the model axis over hosts; use a mesh whose"
        " model axis fits in one host")
  # `batch_size` sources per global batch: each host samples `local_size` of its own.
  local_size = partitioner.local_batch_size(batch_size)
  shard_size = -(-shard_size // batch_size) * batch_size  # whole batches, on any host count
  num_shards = -(-num_sources // shard_size)
  done = set(grown.completed_shards(output_dir, num_shards))
  mine = [s for s in range(num_shards) if s % num_hosts == jax.process_index() and s not in done]
  stale = grown.remove_stale_temporaries(output_dir, mine, num_shards,
                                         manifest=jax.process_index() == 0)
  if stale:
    logging.info("grow %d: removed %d temporary files of an interrupted run", grow_step, len(stale))
  decoder_params = {"temperature": 1.0, **(decoder_params or {})}
  if decoders is None:
    decoders = Decoders(model, partitioner, params_sharding, num_samples, decoder_params)
  elif decoders.key != (num_samples, tuple(sorted(decoder_params.items()))):
    raise ValueError(f"decoders were compiled for {decoders.key}, not for {num_samples} samples"
                     f" with {decoder_params}")
  sampler, scorer = decoders.sampler, decoders.scorer
  length = feature_lengths["targets"]

  def sample_and_score(tokens, keys, targets):
    out = sampler(params, tokens, length, keys)
    ref_lp = None
    if include_references:
      ref_batch = partitioner.shard_batch(_reference_batch(tokens, targets, length))
      ref_lp = partitioner.to_local(scorer(params, ref_batch))
    return out, ref_lp

  # Sampling is one program over all hosts, so every host runs as many batches as
  # the busiest one (a resumed host may have fewer shards left): the others idle
  # on empty batches.
  my_batches = sum(-(-(min((s + 1) * shard_size, num_sources) - s * shard_size) // local_size)
                   for s in mine)
  all_batches = my_batches
  if num_hosts > 1:
    all_batches = int(np.max(multihost_utils.process_allgather(np.int64(my_batches))))
  timings = {"sample_s": 0.0, "score_s": 0.0, "write_s": 0.0, "samples": 0, "sources": 0,
             "overlength_sources": 0}
  bar = tqdm.tqdm(total=num_sources, initial=len(done) * shard_size,
                  disable=not (progress_bar and jax.process_index() == 0), unit="src",
                  desc=f"grow {grow_step}", dynamic_ncols=True)
  start_time = time.perf_counter()
  pending = set(mine)
  # One pass over the split in order: batches never straddle shards (shard_size is a
  # multiple of the batch size), and sources of other hosts' or finished shards are
  # read past, so the cost stays linear in the split however many shards there are.
  batches = inference.source_batches(task_name, split, feature_lengths, local_size, 0,
                                     num_sources, overlength) if pending else iter(())
  buffer = None
  for batch in batches:
    shard = int(batch["source_id"][0]) // shard_size
    if shard not in pending:
      continue
    if buffer is None:
      buffer = {"sources": [], "hypotheses": [], "references": [], "meta": [],
                "tick": time.perf_counter()}
    keys = inference.sample_keys(seed, grow_step, batch["source_id"], num_samples)
    faults.point("grow.sample")
    out, ref_lp = sample_and_score(batch["encoder_input_tokens"], keys, batch["target_tokens"])
    texts = inference.decode_texts(vocabulary, out["tokens"])
    valid = int(batch["valid"].sum())
    timings["overlength_sources"] += batch["overlength"]
    for i in range(valid):
      source_id = int(batch["source_id"][i])
      candidates = [(texts[i][n], n, 0, float(out["scores"][i, n])) for n in range(num_samples)]
      if include_references:
        candidates.append((batch["targets"][i], num_samples, 1, float(ref_lp[i])))
      for text, sample_id, is_ref, log_prob in candidates:
        buffer["sources"].append(batch["inputs"][i])
        buffer["hypotheses"].append(text)
        buffer["references"].append(batch["targets"][i])
        buffer["meta"].append((source_id, sample_id, is_ref, log_prob))
    bar.update(valid)
    last = int(batch["source_id"][valid - 1]) + 1
    if last == min((shard + 1) * shard_size, num_sources):  # the shard is complete
      _finish_shard(buffer, reward, output_dir, shard, num_shards, timings)
      pending.discard(shard)
      buffer = None
      elapsed = max(time.perf_counter() - start_time, 1e-9)
      bar.set_postfix(samples_s=f"{timings['samples'] / elapsed:.0f}")
  empty_tokens = np.zeros((local_size, feature_lengths["inputs"]), np.int32)
  empty_keys = np.zeros((local_size, num_samples, 2), np.uint32)
  for _ in range(all_batches - my_batches):
    sample_and_score(empty_tokens, empty_keys, [[]] * local_size)
  bar.close()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"grow {output_dir} shards written")
  if jax.process_index() == 0 and not os.path.exists(os.path.join(output_dir, grown.MANIFEST)):
    faults.point("grow.manifest")
    grown.write_manifest(output_dir, num_shards, {
        "grow_step": grow_step, "task": task_name, "split": split, "num_samples": num_samples,
        "decoder_params": decoder_params, "reward": reward.name,
        "reward_range": list(reward.range), "seed": seed, **dict(metadata or {})})
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"grow {output_dir} manifest written")
  if num_hosts > 1:
    timings["overlength_sources"] = int(np.sum(multihost_utils.process_allgather(
        np.int64(timings["overlength_sources"]))))
  if timings["overlength_sources"]:
    logging.warning("grow %d: %d sources or references were longer than %s and were cut",
                    grow_step, timings["overlength_sources"], dict(feature_lengths))
  logging.info("grow %d: %s", grow_step, timings)
  return timings


def _finish_shard(buffer, reward, output_dir, shard, num_shards, timings) -> None:
  """Scores a shard's samples and writes it (nothing is written if scoring fails)."""
  sampled = time.perf_counter()
  rewards = reward(buffer["sources"], buffer["hypotheses"], buffer["references"])
  scored = time.perf_counter()
  grown.write_shard(output_dir, shard, num_shards,
                    _rows(buffer["sources"], buffer["hypotheses"], rewards, buffer["meta"]))
  timings["sample_s"] += sampled - buffer["tick"]
  timings["score_s"] += scored - sampled
  timings["write_s"] += time.perf_counter() - scored
  timings["samples"] += sum(1 for m in buffer["meta"] if m[2] == 0)
  timings["sources"] += len({m[0] for m in buffer["meta"]})


def _rows(sources, hypotheses, rewards, meta):
  """Rows with each source's mean sample reward as `value` (the behaviour baseline)."""
  sums: Dict[int, list] = {}
  for (source_id, _, is_ref, _), r in zip(meta, rewards):
    if not is_ref:
      sums.setdefault(source_id, []).append(float(r))
  for src, hyp, r, (source_id, sample_id, is_ref, log_prob) in zip(sources, hypotheses, rewards,
                                                                  meta):
    yield {"inputs": src, "targets": hyp, "reward": float(r), "source_id": source_id,
           "sample_id": sample_id, "is_reference": is_ref, "log_prob": log_prob,
           "value": float(np.mean(sums.get(source_id, [r])))}
