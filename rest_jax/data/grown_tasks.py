"""seqio tasks over grown datasets, filtered by reward, and a converter that keeps the reward.

Improve step `i` trains on `register_grown_task(..., threshold=tau_i)`: a
`TFExampleDataSource` over the Grow step's shards followed by small
preprocessors (`filter_by_reward`, `drop_references`, `deduplicate_samples`,
`fill_unscored_rewards`), then `tokenize_inputs` and `sampled_targets` (a small
grown dataset's kept rows come from memory instead, in the same order:
`KeptRowsSource`, and the same preprocessors from `fill_unscored_rewards` on): the
targets a policy trains on are the token ids it sampled, exactly, never the
sample's text tokenized again (which can give other pieces, and would append an
EOS to a sample that was cut). Because the grown dataset is written once and
filtered many times, rising thresholds give nested subsets of the same rows.
"""

import functools
from typing import Dict, List, Mapping, Sequence, Tuple

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


# A grown dataset of at most this many rows is read into memory once and each training
# step streams only the rows it keeps (`KeptRowsSource`); a larger one is read from its
# shards, every row parsed and filtered each epoch.
MAX_ROWS_IN_MEMORY = 200_000
KEPT = "kept_by_selection"  # a `KeptRowsSource` row's mark: whether the step trains on it
_BLOCK = 16  # the shards' interleave block length (seqio.TFExampleDataSource's default)
_CYCLE = 16  # and cycle length


def kept_mask(columns: Mapping[str, np.ndarray], threshold: float | None = None,
              include_references: bool = True, include_samples: bool = True,
              row_keys: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
  """The rows `register_grown_task`'s filters keep, from the rows' `grown.read_columns`.

  The same rules as `keep_rows`, `filter_by_reward`, `drop_samples` and
  `drop_references` (which commute): a scored row passes at `reward >= threshold`
  compared in float32 as TensorFlow compares it; an unscored reference always, when
  references are kept.
  """
  reference = np.asarray(columns["is_reference"], bool)
  keep = np.ones(reference.shape, bool)
  if row_keys is not None:
    keep &= np.isin(row_key(np.asarray(columns["source_id"], np.int64),
                            np.asarray(columns["sample_id"], np.int64)),
                    np.asarray(row_keys, np.int64))
  if threshold is not None:
    scored = np.asarray(columns["scored"], bool)
    with np.errstate(invalid="ignore"):
      passes = np.asarray(columns["reward"], np.float32) >= np.float32(threshold)
    keep &= (scored & passes) | (~scored & include_references)
  if not include_samples:
    keep &= reference
  if not include_references:
    keep &= ~reference
  return keep


def _ragged_spec():
  """`grown.feature_spec()` for a batch of rows: the per-token features ragged."""
  spec = dict(grown.feature_spec())
  spec[grown.TOKEN_IDS] = tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)
  for key in grown.TOKEN_FLOAT_FIELDS:
    spec[key] = tf.io.RaggedFeature(tf.float32, row_splits_dtype=tf.int64)
  return spec


_ROWS_CACHE: Dict[Tuple, Tuple[Dict[str, object], List[int]]] = {}


def _rows_of(paths: Sequence[str]) -> Tuple[Dict[str, object], List[int]]:
  """The shards' rows in `paths` order, every feature parsed as `grown.feature_spec()`
  parses it (the per-token ones ragged), and each shard's row count. A couple of
  datasets' are kept for the process while their files are the same files
  (`grown.read_columns`' rule): a run's training steps read one Grow step a dozen times."""
  identity = grown._local_identities(paths)  # pylint: disable=protected-access
  key = None if identity is None else (tuple(paths), identity)
  if key is not None and key in _ROWS_CACHE:
    return _ROWS_CACHE[key]
  spec = _ragged_spec()
  parts, sizes = {k: [] for k in spec}, []
  for path in paths:
    size = 0
    try:
      for batch in tf.data.TFRecordDataset([path]).batch(4096).map(
          lambda r: tf.io.parse_example(r, spec)):
        for k, v in batch.items():
          parts[k].append(v)
        size += int(batch["reward"].shape[0])
    except tf.errors.DataLossError as e:
      raise grown.GrownDatasetError(f"{path} is truncated or corrupt: {e.message}") from None
    sizes.append(size)
  rows = {k: tf.concat(v, axis=0) if v else _empty(spec[k]) for k, v in parts.items()}
  if key is not None:
    if len(_ROWS_CACHE) >= 2:
      _ROWS_CACHE.pop(next(iter(_ROWS_CACHE)))
    _ROWS_CACHE[key] = rows, sizes
  return rows, sizes


def _empty(spec):
  if isinstance(spec, tf.io.RaggedFeature):
    return tf.RaggedTensor.from_row_lengths(tf.zeros([0], spec.dtype), tf.zeros([0], tf.int64))
  return tf.zeros([0], spec.dtype)


class KeptRowsSource(seqio.FileDataSource):
  """A small grown dataset's kept rows, streamed from memory in the order in which
  `seqio.TFExampleDataSource` followed by the selection filters gives them.

  seqio shuffles the shards' order and interleaves them 16 rows at a time (a shard
  whose last block is short ends within that block's turn); filters after it keep
  rows in that order. Here each shard is a sequence of its 16-row blocks' kept row
  indices, each full block followed by an empty filler, interleaved two elements at
  a time by seqio's own `FileDataSource` with the same file shuffle, cycle length and
  sharding: a short last block has no filler, so its shard ends within its turn, as
  a shard of rows does. The kept indices are looked up in the rows, parsed once: the
  same rows in the same order, without parsing and filtering every row in every epoch
  (a training step that keeps 400 of 20,000 rows parsed 3,200 rows a batch). With
  fewer shards than hosts, seqio shards the rows instead of the files: so does this
  source, and marks each row kept or not (`KEPT`) for `drop_unkept`, the task's first
  preprocessor, which runs after the repeat as the filters did. `tests/grown_test.py`
  checks it against the shards' stream.

  Args:
    paths: the grown dataset's shards (as TensorFlow reads them).
    keep: a function from the rows' columns (as `grown.read_columns` gives them) to the
      rows kept (a boolean mask; `kept_mask`).
    num_rows: the dataset's rows (seqio's `num_input_examples`, as for the shards).
  """

  def __init__(self, paths: Sequence[str], keep, num_rows: int):
    self._keep = keep
    # The shards' reader is built by `get_dataset`, over the rows it parses.
    super().__init__(read_file_fn=None, split_to_filepattern={"train": paths},
                     num_input_examples={"train": num_rows})

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True  # seqio passes every host's `shard_info` here; see `get_dataset`

  @staticmethod
  def _blocks(mask: np.ndarray, sizes: Sequence[int]) -> tf.RaggedTensor:
    """[shard, element, row]: each full block's rows in `mask`, then an empty filler; a
    short last block alone."""
    rows, lengths, elements, start = [], [], [], 0
    for size in sizes:
      indices = np.flatnonzero(mask[start:start + size])
      per_block = np.bincount(indices // _BLOCK, minlength=-(-size // _BLOCK))
      element_lengths = np.stack([per_block, np.zeros_like(per_block)], 1).reshape(-1)
      if size % _BLOCK:
        element_lengths = element_lengths[:-1]
      rows.append(indices + start)
      lengths.append(element_lengths)
      elements.append(len(element_lengths))
      start += size
    return tf.RaggedTensor.from_nested_row_lengths(
        tf.constant(np.concatenate(rows).astype(np.int64)),
        [tf.constant(elements, tf.int64), tf.constant(np.concatenate(lengths), tf.int64)])

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed=None,
                  shard_info=None, **kwargs) -> tf.data.Dataset:
    files = list(self.list_shards(split))
    rows, sizes = _rows_of(files)
    mask = self._keep({"reward": rows["reward"].numpy(),
                       "scored": rows["scored"].numpy() == 1,
                       "is_reference": rows["is_reference"].numpy() == 1,
                       "source_id": rows["source_id"].numpy(),
                       "sample_id": rows["sample_id"].numpy()})
    # Fewer shards than hosts: seqio would read every row and shard the rows.
    by_rows = shard_info is not None and len(files) < shard_info.num_shards
    if shard_info is not None and not by_rows and mask.any():
      starts = np.cumsum([0] + list(sizes))
      mine = range(shard_info.index, len(files), shard_info.num_shards)  # seqio's file shard
      if not any(mask[starts[f]:starts[f + 1]].any() for f in mine):
        raise ValueError(
            f"host {shard_info.index} of {shard_info.num_shards} reads shards"
            f" {[files[f] for f in mine]}, which hold none of the {int(mask.sum())} rows this"
            " step keeps (its filter would read them forever): write the grown dataset in"
            " more shards, or read it on fewer hosts")
    blocks = self._blocks(np.ones_like(mask) if by_rows else mask, sizes)
    index_of = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(files), tf.range(len(files), dtype=tf.int64)), default_value=-1)

    def blocks_of(path):
      return tf.data.Dataset.from_tensor_slices(blocks[index_of.lookup(path)])

    # seqio's own file shuffle, file sharding and interleave (two elements a block).
    indices = seqio.FileDataSource(
        blocks_of, {split: files}, cycle_length=_CYCLE, block_length=2).get_dataset(
            split=split, shuffle=shuffle, seed=seed,
            shard_info=None if by_rows else shard_info, **kwargs).unbatch()
    if by_rows:
      indices = indices.shard(shard_info.num_shards, shard_info.index)
    kept = tf.constant(mask)
    return indices.map(lambda i: {**{k: v[i] for k, v in rows.items()}, KEPT: kept[i]},
                       num_parallel_calls=tf.data.AUTOTUNE)


def drop_unkept(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Drops the rows a `KeptRowsSource` marks unkept (and the mark).

  A task's preprocessors run after seqio repeats the source, so a host whose share of
  a sharded epoch keeps no row reads on into the next epoch, as with the shards.
  """
  return dataset.filter(lambda ex: ex[KEPT]).map(
      lambda ex: {k: v for k, v in ex.items() if k != KEPT})


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
    in_memory: bool | None = None,
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
    in_memory: stream the kept rows from memory (`KeptRowsSource`: the same rows in the
      same order) rather than parse and filter the shards' every row each epoch; by
      default when the dataset has at most `MAX_ROWS_IN_MEMORY` rows.

  Returns:
    The task; its only split is "train"; examples carry the features the losses read.
  """
  manifest = grown.load_manifest(directory, verify_counts=verify_counts)
  paths = grown.tensorflow_shard_paths(directory, manifest)
  if in_memory is None:
    in_memory = manifest["num_rows"] <= MAX_ROWS_IN_MEMORY
  preprocessors = []
  if in_memory:  # the source streams the kept rows only (or marks them)
    source = KeptRowsSource(paths, functools.partial(
        kept_mask, threshold=threshold, include_references=include_references,
        include_samples=include_samples, row_keys=row_keys), manifest["num_rows"])
    preprocessors.append(drop_unkept)
  else:
    source = seqio.TFExampleDataSource(
        split_to_filepattern={"train": paths}, feature_description=grown.feature_spec(),
        num_input_examples={"train": manifest["num_rows"]}, cycle_length=_CYCLE,
        block_length=_BLOCK)
    if row_keys is not None:
      preprocessors.append(functools.partial(keep_rows, keys=row_keys))
    if threshold is not None:
      preprocessors.append(functools.partial(filter_by_reward, threshold=float(threshold),
                                             keep_unscored=include_references))
    if not include_samples:
      preprocessors.append(drop_samples)
    if not include_references:
      preprocessors.append(drop_references)
  if deduplicate:  # the first of a source's identical samples in the order read
    preprocessors.append(deduplicate_samples)
  preprocessors += [functools.partial(fill_unscored_rewards, value=float(unscored_reward)),
                    tokenize_inputs, sampled_targets, seqio.preprocessors.append_eos_after_trim]
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=source,
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
