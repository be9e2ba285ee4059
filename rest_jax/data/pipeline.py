"""From a seqio task name to batches of model features (t5x's `DatasetConfig`)."""

import dataclasses
from typing import Iterator, Mapping, Tuple

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


def get_dataset(config: DatasetConfig, feature_converter: seqio.FeatureConverter,
                num_epochs: int | None = None, rows: Tuple[int, int] | None = None):
  """This process's `tf.data.Dataset` of model-feature batches.

  Each process builds its `rows` of every global batch (default: the usual
  layout, `process_rows`); see `host_rows`.
  """
  task = _get_task(config)
  rows = rows or process_rows(config.batch_size)
  ds = seqio.get_dataset(
      task.name,
      task_feature_lengths=dict(config.task_feature_lengths),
      dataset_split=config.split,
      shuffle=config.shuffle,
      num_epochs=num_epochs,
      feature_converter=feature_converter,
      use_cached=config.use_cached,
      seed=config.seed,
  )
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
