"""From a seqio task name to batches of model features (t5x's `DatasetConfig`)."""

import dataclasses
from typing import Dict, Iterator, Mapping, Tuple

import jax
import numpy as np
import seqio
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """Which task/split to read and how (the t5x fields, configured in gin).

  Attributes:
    mixture_or_task_name: a registered seqio task or mixture.
    task_feature_lengths: e.g. {"inputs": 64, "targets": 64}.
    split: dataset split.
    batch_size: global batch size (over all hosts).
    shuffle: shuffle examples (train) or keep their order (eval).
    seed: shuffle seed; the same seed gives the same order.
    use_cached: read seqio's offline cache.
    pack: pack several examples per row.
    module: a module to import first so that it registers the task.
    overlength: an example longer than `task_feature_lengths` is cut by the feature
      converter and counted ("truncate"; `overlength_count`), or stops the input
      pipeline with an error naming the feature and lengths ("error").
  """

  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str
  batch_size: int
  shuffle: bool = True
  seed: int | None = 0
  use_cached: bool = False
  pack: bool = False
  module: str | None = None
  overlength: str = "truncate"


def _get_task(config: DatasetConfig):
  if config.module:
    import importlib  # pylint: disable=g-import-not-at-top

    importlib.import_module(config.module)
  try:
    return seqio.get_mixture_or_task(config.mixture_or_task_name)
  except ValueError as e:
    raise ValueError(
        f"unknown seqio task or mixture '{config.mixture_or_task_name}' (registered:"
        f" {sorted(seqio.TaskRegistry.names())[:20]}...); set DatasetConfig.module to the"
        " module that registers it"
    ) from e


def process_rows(batch_size: int) -> Tuple[int, int]:
  """This process's rows of a global batch in the usual layout (hosts hold equal slices).

  `Partitioner.process_rows` gives them for any mesh; pass its answer as `rows`.
  """
  num_processes, index = jax.process_count(), jax.process_index()
  if batch_size % num_processes:
    raise ValueError(f"batch size {batch_size} is not divisible by {num_processes} processes")
  local = batch_size // num_processes
  return index * local, (index + 1) * local


def host_rows(ds: tf.data.Dataset, batch_size: int, rows: Tuple[int, int],
              drop_remainder: bool) -> tf.data.Dataset:
  """Global batches of `ds`, each cut down to this process's `rows`.

  Every process reads the same example stream, so a global batch holds the same
  examples whatever the number of hosts, and a run's batches (hence its trained
  parameters) do not depend on how many processes share it. A short last batch
  is padded with all-zero rows (zero loss weight) so that every process gets rows.
  """
  start, stop = rows
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)

  def cut(batch):
    def one(x):
      pad = batch_size - tf.shape(x)[0]
      x = tf.pad(x, [[0, pad]] + [[0, 0]] * (len(x.shape) - 1))
      return x[start:stop]
    return tf.nest.map_structure(one, batch)

  return ds.map(cut, num_parallel_calls=tf.data.AUTOTUNE)


_OVERLENGTH: Dict[Tuple[str, str], tf.Variable] = {}


def overlength_count(config: DatasetConfig) -> int:
  """Examples of `config`'s task and split cut so far by this process's pipelines."""
  counter = _OVERLENGTH.get((config.mixture_or_task_name, config.split))
  return 0 if counter is None else int(counter.numpy())


def _fit_lengths(ds: tf.data.Dataset, config: DatasetConfig,
                 output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """Cuts examples to the feature lengths as seqio would (keeping EOS), counting them.

  The task is read without a sequence length, so nothing was cut yet: an example
  longer than a feature length is counted and cut ("truncate") or stops the input
  pipeline with an error naming the task, split, feature and length ("error").
  """
  if config.overlength not in ("truncate", "error"):
    raise ValueError(f"DatasetConfig.overlength={config.overlength!r}: expected 'truncate' or"
                     " 'error'")
  key = (config.mixture_or_task_name, config.split)
  if key not in _OVERLENGTH:
    _OVERLENGTH[key] = tf.Variable(0, dtype=tf.int64, trainable=False)
  counter = _OVERLENGTH[key]
  lengths = dict(config.task_feature_lengths)

  def fit(ex):
    ex = dict(ex)
    over = tf.constant(False)
    for name, length in lengths.items():
      if name not in ex:
        continue
      x = ex[name]
      if config.overlength == "error":
        tf.debugging.assert_less_equal(
            tf.shape(x)[0], length, message=f"{config.mixture_or_task_name}/{config.split}: an"
            f" example has more {name} tokens than the feature length {length} (raise"
            " TASK_FEATURE_LENGTHS, or set DatasetConfig.overlength to truncate)")
      over = tf.logical_or(over, tf.shape(x)[0] > length)
      feature = output_features.get(name)
      if feature is not None and feature.add_eos:  # seqio's append_eos_after_trim
        ex[name] = tf.cond(tf.shape(x)[0] > length,
                           lambda x=x, length=length: tf.concat([x[: length - 1], x[-1:]], 0),
                           lambda x=x: x)
      else:
        ex[name] = x[:length]
    counter.assign_add(tf.cast(over, tf.int64))
    return ex

  return ds.map(fit)


def get_dataset(config: DatasetConfig, feature_converter: seqio.FeatureConverter,
                num_epochs: int | None = None, rows: Tuple[int, int] | None = None):
  """This process's `tf.data.Dataset` of model-feature batches.

  Each process builds its `rows` of every global batch (default: the usual
  layout, `process_rows`); see `host_rows`.
  """
  task = _get_task(config)
  rows = rows or process_rows(config.batch_size)
  lengths = dict(config.task_feature_lengths)
  # seqio.get_dataset's steps, with the length check between the task and the converter
  # (the task is read whole, so the check sees the lengths before any cut).
  ds = task.get_dataset(None, split=config.split, use_cached=config.use_cached,
                        shuffle=config.shuffle, seed=config.seed, num_epochs=num_epochs,
                        trim_output_features=False)
  ds = feature_converter(_fit_lengths(ds, config, task.output_features), lengths)
  return host_rows(ds, config.batch_size, rows, drop_remainder=num_epochs is None)


def batch_iterator(config: DatasetConfig, feature_converter: seqio.FeatureConverter,
                   start_step: int = 0, num_epochs: int | None = None,
                   rows: Tuple[int, int] | None = None) -> Iterator[dict]:
  """Numpy batches, skipping the first `start_step` (a resumed run's position)."""
  ds = get_dataset(config, feature_converter, num_epochs, rows)
  if start_step:
    ds = ds.skip(start_step)
  for batch in ds.as_numpy_iterator():
    yield {k: np.asarray(v) for k, v in batch.items()}
