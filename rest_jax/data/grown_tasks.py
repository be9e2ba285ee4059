"""seqio tasks over grown datasets, filtered by reward, and a converter that keeps the reward.

Improve step `i` trains on `register_grown_task(..., threshold=tau_i)`: a
`TFExampleDataSource` over the Grow step's shards followed by small
preprocessors (`filter_by_reward`, `drop_references`, `deduplicate_samples`).
Because the grown dataset is written once and filtered many times, rising
thresholds give nested subsets of the same rows.
"""

import functools

import numpy as np
import seqio
import tensorflow as tf

from rest_jax.data import grown, metrics

FeatureSpec = seqio.FeatureConverter.FeatureSpec


def filter_by_reward(dataset: tf.data.Dataset, threshold: float) -> tf.data.Dataset:
  """Keeps rows with `reward >= threshold`."""
  return dataset.filter(lambda ex: ex["reward"] >= threshold)


def drop_references(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Keeps the policy's samples only (drops the scored reference translations)."""
  return dataset.filter(lambda ex: tf.equal(ex["is_reference"], 0))


def deduplicate_samples(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Keeps the first of identical `targets` of one source (rows read in order)."""
  seen = tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, default_value=0)

  def first_time(ex):
    key = tf.strings.join([tf.strings.as_string(ex["source_id"]), ex["targets"]], "\t")
    new = tf.equal(seen.lookup(key), 0)
    with tf.control_dependencies([new]):
      insert = seen.insert(key, tf.constant(1, tf.int64))
    with tf.control_dependencies([insert]):
      return tf.identity(new)

  return dataset.filter(first_time)


def quantile_threshold(rewards: np.ndarray, top_quantile: float) -> float:
  """The threshold that keeps the top `top_quantile` share of rows (e.g. 0.2)."""
  if not 0.0 < top_quantile <= 1.0:
    raise ValueError(f"top_quantile must be in (0, 1], got {top_quantile}")
  if rewards.size == 0:
    raise ValueError("no rewards to take a quantile of")
  return float(np.quantile(rewards, 1.0 - top_quantile, method="higher"))


def register_grown_task(
    name: str,
    directory: str,
    vocabulary: seqio.Vocabulary,
    threshold: float | None = None,
    top_quantile: float | None = None,
    include_references: bool = True,
    deduplicate: bool = False,
    verify_counts: bool = True,
) -> seqio.Task:
  """Registers (or replaces) a seqio task over the grown dataset in `directory`.

  Args:
    name: task name.
    directory: a grown dataset (checked against its manifest first).
    vocabulary: tokenizes `inputs` and `targets`.
    threshold: keep rows with `reward >= threshold`.
    top_quantile: instead, keep the top share of rows by reward.
    include_references: keep the scored reference rows.
    deduplicate: drop repeated identical samples of one source.
    verify_counts: count every shard's rows against the manifest.

  Returns:
    The task; its only split is "train" and examples carry `reward`.
  """
  if threshold is not None and top_quantile is not None:
    raise ValueError("give threshold or top_quantile, not both")
  manifest = grown.load_manifest(directory, verify_counts=verify_counts)
  paths = grown.shard_paths(directory, manifest)
  if top_quantile is not None:
    threshold = quantile_threshold(grown.read_rewards(paths), top_quantile)
  preprocessors = []
  if threshold is not None:
    preprocessors.append(functools.partial(filter_by_reward, threshold=float(threshold)))
  if not include_references:
    preprocessors.append(drop_references)
  if deduplicate:
    preprocessors.append(deduplicate_samples)
  preprocessors += [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=seqio.TFExampleDataSource(
          split_to_filepattern={"train": paths},
          feature_description=grown.feature_spec(paths),
          num_input_examples={"train": manifest["num_rows"]},
      ),
      preprocessors=preprocessors,
      output_features={
          "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
          "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
      },
      metric_fns=[metrics.bleu, metrics.chrf],
  )


class RewardEncDecFeatureConverter(seqio.EncDecFeatureConverter):
  """`EncDecFeatureConverter` that also passes per-row scalar floats (the reward) to the batch.

  Args:
    scalar_features: float features of each row to keep, e.g. ("reward", "value",
      "log_prob") for the offline-RL losses.
  """

  def __init__(self, pack: bool = False, scalar_features=("reward",), **kwargs):
    if pack:
      raise ValueError("rows with a reward each cannot be packed; use pack=False")
    self.scalar_features = tuple(scalar_features)
    spec = {k: FeatureSpec(dtype=tf.float32, rank=0) for k in self.scalar_features}
    self.TASK_FEATURES = {**seqio.EncDecFeatureConverter.TASK_FEATURES, **spec}  # pylint: disable=invalid-name
    self.MODEL_FEATURES = {**seqio.EncDecFeatureConverter.MODEL_FEATURES, **spec}  # pylint: disable=invalid-name
    super().__init__(pack=False, **kwargs)

  def __call__(self, ds: tf.data.Dataset, task_feature_lengths):
    # seqio wants a length for every task feature; a scalar's is never checked.
    return super().__call__(ds, {**task_feature_lengths,
                                 **{k: 1 for k in self.scalar_features}})

  def _convert_features(self, ds, task_feature_lengths):
    lengths = {k: v for k, v in task_feature_lengths.items() if k not in self.scalar_features}
    return super()._convert_features(ds, lengths)

  def _convert_example(self, features):
    converted = dict(super()._convert_example(features))
    for key in self.scalar_features:
      converted[key] = features[key]
    return converted

  def get_model_feature_lengths(self, task_feature_lengths):
    lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
    lengths.update({k: 1 for k in self.scalar_features})
    return lengths
