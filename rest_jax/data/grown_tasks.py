"""seqio tasks over grown datasets, filtered by reward, and a converter that keeps the reward.

Improve step `i` trains on `register_grown_task(..., threshold=tau_i)`: a
`TFExampleDataSource` over the Grow step's shards followed by small
preprocessors (`filter_by_reward`, `drop_references`, `deduplicate_samples`,
`fill_unscored_rewards`), then `tokenize_inputs` and `sampled_targets`: the
targets a policy trains on are the token ids it sampled, exactly, never the
sample's text tokenized again (which can give other pieces, and would append an
EOS to a sample that was cut). Because the grown dataset is written once and
filtered many times, rising thresholds give nested subsets of the same rows.
"""

import functools
from typing import Mapping

import numpy as np
import seqio
import tensorflow as tf

from rest_jax.data import corpus_metrics as metrics, grown

FeatureSpec = seqio.FeatureConverter.FeatureSpec

# Per-row floats and per-token floats that Improve's losses read (see rest_jax.losses).
SCALAR_FEATURES = ("reward", "value", "value_loo", "is_reference", "scored")
TOKEN_FEATURES = ("behaviour_log_probs", "policy_log_probs")


def filter_by_reward(dataset: tf.data.Dataset, threshold: float,
                     keep_unscored: bool = True) -> tf.data.Dataset:
  """Keeps scored rows with `reward >= threshold`, and unscored ones if `keep_unscored`.

  Unscored rows are references under a reward that reads references (a
  reference is never scored against itself): they are kept at every threshold
  or left out.
  """
  def keep(ex):
    scored = tf.equal(ex["scored"], 1)
    return tf.logical_or(tf.logical_and(scored, ex["reward"] >= threshold),
                         tf.logical_and(tf.logical_not(scored), keep_unscored))

  return dataset.filter(keep)


def drop_references(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Keeps the policy's samples only (drops the reference translations)."""
  return dataset.filter(lambda ex: tf.equal(ex["is_reference"], 0))


def drop_samples(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Keeps the reference translations only (the original pairs; the filtered-BC control)."""
  return dataset.filter(lambda ex: tf.equal(ex["is_reference"], 1))


ROW_KEY_STRIDE = 1 << 20  # more samples per source than any Grow step draws


def row_key(source_id, sample_id):
  """One integer per grown row: its source and sample ids (numpy or TF int64)."""
  return source_id * ROW_KEY_STRIDE + sample_id


def keep_rows(dataset: tf.data.Dataset, keys) -> tf.data.Dataset:
  """Keeps the rows whose `row_key` is in `keys` (a chosen subset, e.g. drawn at random)."""
  keys = tf.constant(np.asarray(keys, np.int64))
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(keys, tf.ones_like(keys)), default_value=0)
  return dataset.filter(lambda ex: tf.equal(table.lookup(row_key(
      tf.cast(ex["source_id"], tf.int64), tf.cast(ex["sample_id"], tf.int64))), 1))


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


def fill_unscored_rewards(dataset: tf.data.Dataset, value: float) -> tf.data.Dataset:
  """Gives unscored rows (references) the reward `value` (the scale's top) instead of NaN."""
  def fill(ex):
    scored = tf.equal(ex["scored"], 1)
    return {**ex, "reward": tf.where(scored, ex["reward"], tf.constant(value, tf.float32))}

  return dataset.map(fill, num_parallel_calls=tf.data.AUTOTUNE)


def tokenize_inputs(dataset: tf.data.Dataset,
                    output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """Tokenizes `inputs` only (keeping `inputs_pretokenized`); targets come as token ids."""
  return seqio.preprocessors.tokenize(dataset, {"inputs": output_features["inputs"]})


def sampled_targets(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """`targets` becomes the stored token ids (`target_ids`); the text stays as `targets_pretokenized`.

  The per-row and per-token features the losses read are cast to float32.
  """
  def convert(ex):
    out = {k: v for k, v in ex.items() if k not in ("targets", grown.TOKEN_IDS)}
    out["targets_pretokenized"] = ex["targets"]
    out["targets"] = tf.cast(ex[grown.TOKEN_IDS], tf.int32)
    for key in SCALAR_FEATURES:
      out[key] = tf.cast(ex[key], tf.float32)
    return out

  return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def register_grown_task(
    name: str,
    directory: str,
    vocabulary: seqio.Vocabulary,
    threshold: float | None = None,
    include_references: bool = True,
    include_samples: bool = True,
    deduplicate: bool = False,
    unscored_reward: float = 1.0,
    verify_counts: bool = True,
    row_keys=None,
) -> seqio.Task:
  """Registers (or replaces) a seqio task over the grown dataset in `directory`.

  Args:
    name: task name.
    directory: a grown dataset (checked against its manifest first).
    vocabulary: tokenizes `inputs`; `targets` are the stored token ids.
    threshold: keep scored rows with `reward >= threshold` (a quantile threshold is
      resolved first, over the samples only: `rewards.ThresholdSchedule.resolve`).
    include_references: keep the reference rows (scored ones pass the threshold
      like samples; unscored ones are kept at every threshold).
    include_samples: keep the policy's samples (False: the original pairs alone).
    deduplicate: drop repeated identical samples of one source.
    unscored_reward: the reward an unscored reference row carries into training.
    verify_counts: count every shard's rows against the manifest.
    row_keys: keep only these rows (`row_key`s; e.g. a random subset of the samples),
      before any other filter.

  Returns:
    The task; its only split is "train"; examples carry the features the losses read.
  """
  manifest = grown.load_manifest(directory, verify_counts=verify_counts)
  paths = grown.tensorflow_shard_paths(directory, manifest)
  preprocessors = []
  if row_keys is not None:
    preprocessors.append(functools.partial(keep_rows, keys=row_keys))
  if threshold is not None:
    preprocessors.append(functools.partial(filter_by_reward, threshold=float(threshold),
                                           keep_unscored=include_references))
  if not include_samples:
    preprocessors.append(drop_samples)
  if not include_references:
    preprocessors.append(drop_references)
  if deduplicate:
    preprocessors.append(deduplicate_samples)
  preprocessors += [functools.partial(fill_unscored_rewards, value=float(unscored_reward)),
                    tokenize_inputs, sampled_targets, seqio.preprocessors.append_eos_after_trim]
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=seqio.TFExampleDataSource(
          split_to_filepattern={"train": paths},
          feature_description=grown.feature_spec(),
          num_input_examples={"train": manifest["num_rows"]},
      ),
      preprocessors=preprocessors,
      output_features={
          "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
          # The stored ids end with EOS when the sample did; a cut sample stays cut.
          "targets": seqio.Feature(vocabulary=vocabulary, add_eos=False),
      },
      metric_fns=[metrics.bleu, metrics.chrf],
  )


class RewardEncDecFeatureConverter(seqio.EncDecFeatureConverter):
  """`EncDecFeatureConverter` that also passes the rows' reward data through to the batch.

  seqio's converter emits only the model's token features; the offline-RL losses
  also read per-row floats (reward, baselines, flags) and per-token floats
  aligned with `decoder_target_tokens` (behaviour and policy log-probabilities),
  which are padded with 0 to the targets' length.

  Args:
    scalar_features: float features of each row, e.g. `SCALAR_FEATURES`.
    token_features: float features per target token, e.g. `TOKEN_FEATURES`.
  """

  def __init__(self, pack: bool = False, scalar_features=("reward",), token_features=(),
               **kwargs):
    if pack:
      raise ValueError("rows with a reward each cannot be packed; use pack=False")
    self.scalar_features = tuple(scalar_features)
    self.token_features = tuple(token_features)
    spec = {k: FeatureSpec(dtype=tf.float32, rank=0) for k in self.scalar_features}
    spec.update({k: FeatureSpec(dtype=tf.float32, rank=1) for k in self.token_features})
    self.TASK_FEATURES = {**seqio.EncDecFeatureConverter.TASK_FEATURES, **spec}  # pylint: disable=invalid-name
    self.MODEL_FEATURES = {**seqio.EncDecFeatureConverter.MODEL_FEATURES, **spec}  # pylint: disable=invalid-name
    super().__init__(pack=False, **kwargs)

  def _lengths(self, task_feature_lengths):
    lengths = dict(task_feature_lengths)
    lengths.update({k: 1 for k in self.scalar_features})  # seqio wants one; never checked
    lengths.update({k: task_feature_lengths["targets"] for k in self.token_features})
    return lengths

  def __call__(self, ds: tf.data.Dataset, task_feature_lengths):
    return super().__call__(ds, self._lengths(task_feature_lengths))

  def _convert_features(self, ds, task_feature_lengths):
    lengths = {k: v for k, v in task_feature_lengths.items() if k not in self.scalar_features}
    return super()._convert_features(ds, lengths)

  def _convert_example(self, features):
    converted = dict(super()._convert_example(features))
    for key in self.scalar_features + self.token_features:
      converted[key] = features[key]
    return converted

  def get_model_feature_lengths(self, task_feature_lengths):
    lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
    lengths.update({k: 1 for k in self.scalar_features})
    lengths.update({k: task_feature_lengths["targets"] for k in self.token_features})
    return lengths
