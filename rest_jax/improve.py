"""Improve: fine-tune the policy on the grown dataset filtered at a reward threshold.

Starts from the previous policy's parameters (or resumes from its own latest
checkpoint), trains with an offline-RL loss (`losses.OfflineRLLoss`) through the
same sharded `Trainer` and orbax checkpoints as BC, and can mix the original
parallel data into every batch.
"""

import json
import os
import time
import zlib
from typing import Any, Dict, Mapping, Optional, Tuple

from absl import logging
import jax
import numpy as np
import seqio
import tensorflow as tf
import tqdm

from rest_jax import checkpoints, faults, files, losses, partitioning, trainer as trainer_lib
from rest_jax.data import grown, grown_tasks, pipeline

SCALARS = ("reward", "value", "log_prob")


class EmptyImproveStepError(ValueError):
  """A threshold that keeps no rows of the grown dataset."""


def kept_rows(grown_dir: str, threshold: float, include_references: bool) -> int:
  """How many rows the threshold keeps; an error with the reward percentiles if none."""
  manifest = grown.load_manifest(grown_dir, verify_counts=False)
  paths = grown.shard_paths(grown_dir, manifest)
  spec = {"reward": tf.io.FixedLenFeature([], tf.float32),
          "is_reference": tf.io.FixedLenFeature([], tf.int64)}
  rows = [(float(x["reward"]), int(x["is_reference"])) for x in tf.data.TFRecordDataset(paths)
          .map(lambda r: tf.io.parse_single_example(r, spec)).as_numpy_iterator()]
  kept = sum(1 for r, ref in rows if r >= np.float32(threshold) and (include_references or not ref))
  if kept == 0:
    pct = manifest["reward"].get("percentiles", {})
    raise EmptyImproveStepError(
        f"threshold {threshold} keeps no rows of {grown_dir} ({len(rows)} rows; reward"
        f" percentiles {pct}, max {manifest['reward'].get('max')}): lower the threshold or"
        " use quantile thresholds")
  return kept


def _mixed_dataset(name: str, lengths: Mapping[str, int], batch_size: int, seed: int,
                   mix_task: Optional[str], mix_ratio: float, reward_high: float,
                   rows: Tuple[int, int]):
  converter = grown_tasks.RewardEncDecFeatureConverter(scalar_features=SCALARS)
  ds = seqio.get_dataset(name, dict(lengths), dataset_split="train", shuffle=True, num_epochs=None,
                         feature_converter=converter, seed=seed)
  if mix_task and mix_ratio > 0:
    original = seqio.get_dataset(mix_task, dict(lengths), dataset_split="train", shuffle=True,
                                 num_epochs=None, seed=seed,
                                 feature_converter=seqio.EncDecFeatureConverter(pack=False))
    # Reference translations count as top-reward rows with zero advantage.
    original = original.map(lambda ex: {**ex, "reward": tf.constant(reward_high, tf.float32),
                                        "value": tf.constant(reward_high, tf.float32),
                                        "log_prob": tf.constant(0.0, tf.float32)})
    ds = tf.data.Dataset.sample_from_datasets([ds, original], [1 - mix_ratio, mix_ratio],
                                              seed=seed)
  # The same global batches on any number of hosts, each host keeping its rows.
  return pipeline.host_rows(ds, batch_size, rows, drop_remainder=True)


def _metrics_path(model_dir: str, step: int) -> str:
  return os.path.join(model_dir, "train_metrics", f"step_{step}.json")


def _save_metrics(model_dir: str, step: int, accumulator) -> None:
  if jax.process_index() != 0:
    return
  path = _metrics_path(model_dir, step)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  files.atomic_write_text(path, json.dumps(accumulator.state_dict()))


def _load_metrics(model_dir: str, step: int):
  if step == 0:
    return trainer_lib.MetricsAccumulator()
  path = _metrics_path(model_dir, step)
  if not os.path.exists(path):
    logging.warning("%s missing: the metrics of this Improve step cover only the steps"
                    " after %d", path, step)
    return trainer_lib.MetricsAccumulator()
  with open(path) as f:
    return trainer_lib.MetricsAccumulator.from_state_dict(json.load(f))


def improve(
    *,
    model,
    init_params: Any,
    partitioner: partitioning.Partitioner,
    grown_dir: str,
    threshold: float,
    model_dir: str,
    feature_lengths: Mapping[str, int],
    loss: Optional[losses.OfflineRLLoss] = None,
    train_steps: int = 500,
    batch_size: int = 64,
    include_references: bool = True,
    deduplicate: bool = False,
    mix_task: Optional[str] = None,
    mix_ratio: float = 0.0,
    reward_high: float = 1.0,
    checkpoint_period: int = 200,
    seed: int = 0,
    progress_bar: bool = True,
    name: str = "improve",
    trainer: Optional[trainer_lib.Trainer] = None,
) -> Dict[str, Any]:
  """Runs one Improve step; returns its final params and training metrics.

  Args:
    model: the policy (t5x API).
    init_params: the previous policy's parameters (host or sharded arrays).
    partitioner: the mesh.
    grown_dir: the Grow step's dataset.
    threshold: keep rows with `reward >= threshold`.
    model_dir: this step's directory (its checkpoints go in `checkpoints/`).
    feature_lengths: task feature lengths.
    loss: the offline-RL loss (default BC).
    train_steps: optimizer steps of this Improve step.
    batch_size: global batch size.
    include_references: train on the scored references as well.
    deduplicate: drop repeated samples of one source.
    mix_task: a task of original parallel data to mix in.
    mix_ratio: share of each batch drawn from `mix_task`.
    reward_high: the reward scale's top, given to mixed-in references.
    checkpoint_period: steps between checkpoints.
    seed: data order and dropout.
    progress_bar: tqdm bar with tokens/s.
    name: label for logs and the task name.
    trainer: a `Trainer` with `loss` as its loss and `batch_size` batches from an
      earlier Improve step of the run, reused so that nothing is compiled again;
      built here if None.

  Raises:
    EmptyImproveStepError: the threshold keeps nothing (before any training).
  """
  loss = loss or losses.OfflineRLLoss("bc")
  kept = kept_rows(grown_dir, threshold, include_references)
  task = grown_tasks.register_grown_task(
      f"rest_grown_{zlib.crc32(f'{grown_dir}@{threshold}'.encode())}", grown_dir,
      model.output_vocabulary, threshold=threshold, include_references=include_references,
      deduplicate=deduplicate, verify_counts=False)
  if trainer is None:
    trainer = trainer_lib.Trainer(
        model, partitioner, trainer_lib.batch_input_shapes(batch_size, feature_lengths),
        loss_fn=loss)
  ckpt = checkpoints.Checkpointer(model_dir, save_every=checkpoint_period, keep=1)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(trainer.abstract_state)
  else:
    state = trainer.state_from_params(init_params)
  start = int(jax.device_get(state.step))
  ds = _mixed_dataset(task.name, feature_lengths, batch_size, seed, mix_task, mix_ratio,
                      reward_high, partitioner.process_rows(batch_size)).skip(start)
  batches = ds.as_numpy_iterator()
  accumulator = _load_metrics(model_dir, start)
  dropout_rng = jax.random.PRNGKey(seed + 17)
  bar = tqdm.tqdm(total=train_steps, initial=start, desc=name, unit="step", dynamic_ncols=True,
                  disable=not (progress_bar and jax.process_index() == 0))
  tick, tokens = time.perf_counter(), 0
  for _ in range(start, train_steps):
    batch = next(batches)
    state, metrics = trainer.train_step(state, partitioner.shard_batch(batch), dropout_rng)
    faults.point("improve.step")
    accumulator.add(metrics)
    tokens += int(batch["decoder_loss_weights"].sum()) * jax.process_count()
    done = int(jax.device_get(state.step))
    if ckpt.due(done) or done == train_steps:
      # The metrics so far, saved with (just before) the checkpoint of the same step, so
      # that a resumed step reports what an uninterrupted one would.
      _save_metrics(model_dir, done, accumulator)
    ckpt.save(state, force=done == train_steps)
    bar.update(1)
    bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - tick, 1e-9):.0f}")
  bar.close()
  ckpt.close()
  results = accumulator.compute() if accumulator else {}
  results.update({"kept_rows": kept, "threshold": float(threshold)})
  logging.info("%s: %s", name, results)
  return {"params": state.params, "metrics": results,
          "seconds": time.perf_counter() - tick, "model_dir": os.path.abspath(model_dir)}
