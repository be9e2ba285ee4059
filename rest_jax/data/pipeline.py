"""From a seqio task name to batches of model features (t5x's `DatasetConfig`)."""

import dataclasses
from typing import Iterator, Mapping

import jax
import numpy as np
import seqio


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


def get_dataset(config: DatasetConfig, feature_converter: seqio.FeatureConverter,
                num_epochs: int | None = None):
  """This process's `tf.data.Dataset` of model-feature batches.

  Each process reads its own shard of the examples and builds its share of the
  global batch.
  """
  task = _get_task(config)
  num_processes, index = jax.process_count(), jax.process_index()
  if config.batch_size % num_processes:
    raise ValueError(
        f"batch size {config.batch_size} is not divisible by {num_processes} processes"
    )
  ds = seqio.get_dataset(
      task.name,
      task_feature_lengths=dict(config.task_feature_lengths),
      dataset_split=config.split,
      shuffle=config.shuffle,
      num_epochs=num_epochs,
      feature_converter=feature_converter,
      shard_info=seqio.ShardInfo(index=index, num_shards=num_processes),
      use_cached=config.use_cached,
      seed=config.seed,
  )
  return ds.batch(config.batch_size // num_processes, drop_remainder=num_epochs is None)


def batch_iterator(config: DatasetConfig, feature_converter: seqio.FeatureConverter,
                   start_step: int = 0, num_epochs: int | None = None
                   ) -> Iterator[dict]:
  """Numpy batches, skipping the first `start_step` (a resumed run's position)."""
  ds = get_dataset(config, feature_converter, num_epochs)
  if start_step:
    ds = ds.skip(start_step)
  for batch in ds.as_numpy_iterator():
    yield {k: np.asarray(v) for k, v in batch.items()}
