"""The grown dataset: reward-annotated samples written by Grow, read back by Improve.

On disk (one directory per Grow step):

    shard-00000-of-00004.tfrecord   tf.train.Example rows (fields below)
    shard-00000-of-00004.json       the shard's row count, byte size and reward sum
    ...
    manifest.json                   written last: format version, shards, counts,
                                    reward statistics, and what produced the data
                                    (policy, sampling configuration, reward)

Row fields (format version 2):

    inputs, targets         text: the source and the sample (or reference) for people and metrics
    target_ids              the token ids Improve trains on: the sampled tokens as drawn
                            (through EOS, or all of them when the sample was cut), or the
                            tokenized reference
    behaviour_log_probs     per token (aligned with target_ids): log-probability under the
                            distribution sampled from (temperature, top-k, top-p applied)
    policy_log_probs        per token: log-probability under the sampling policy at T = 1
    ended_with_eos          1 if the sample ended with EOS, 0 if it was cut at the length
    reward, scored          the reward, and 1 if it was scored; a reference is never scored
                            by a reward that reads references (it would be scored against
                            itself): then scored = 0 and reward is NaN
    source_id, sample_id, is_reference
    value, value_loo        the mean reward of the source's samples, and of its other
                            samples (leave-one-out): the behaviour baselines

A reference's per-token log-probabilities are the Grow policy's at T = 1 (it was
not sampled; see `rest_jax.losses` for how each loss treats references).

A shard is written under a temporary name and renamed when complete, and its
sidecar is written after it, so a shard either exists whole or not at all; a
re-run skips the shards that exist. The manifest is written once every shard is
there. Reading checks the manifest against the shards: a missing shard, a size
or count mismatch, a truncated record or an older format is an error, not a
smaller dataset.
"""

import json
import math
import os
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf

from rest_jax import files

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
TEXT_FIELDS = ("inputs", "targets")
INT_FIELDS = ("source_id", "sample_id", "is_reference", "scored", "ended_with_eos")
FLOAT_FIELDS = ("reward", "value", "value_loo")
TOKEN_IDS = "target_ids"
TOKEN_FLOAT_FIELDS = ("behaviour_log_probs", "policy_log_probs")


class GrownDatasetError(RuntimeError):
  """A grown dataset that is incomplete, inconsistent or malformed."""


def shard_name(index: int, num_shards: int) -> str:
  return f"shard-{index:05d}-of-{num_shards:05d}.tfrecord"


def _sidecar(path: str) -> str:
  return path[: -len(".tfrecord")] + ".json"


def _example(row: Mapping[str, Any], index: int, shard: str) -> tf.train.Example:
  where = (f"{shard}: row {index} (source_id {row.get('source_id')}, sample_id"
           f" {row.get('sample_id')})")
  missing = [k for k in TEXT_FIELDS + INT_FIELDS + FLOAT_FIELDS + (TOKEN_IDS,)
             + TOKEN_FLOAT_FIELDS if k not in row]
  if missing:
    raise GrownDatasetError(f"{where} has no {missing}; nothing was written")
  features = {}
  for key in TEXT_FIELDS:
    value = row[key]
    value = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    features[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
  for key in INT_FIELDS:
    features[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(row[key])]))
  ids = [int(t) for t in row[TOKEN_IDS]]
  if not ids:
    raise GrownDatasetError(f"{where} has no target token ids; nothing was written")
  features[TOKEN_IDS] = tf.train.Feature(int64_list=tf.train.Int64List(value=ids))
  for key in TOKEN_FLOAT_FIELDS:
    values = [float(v) for v in row[key]]
    if len(values) != len(ids) or not all(math.isfinite(v) for v in values):
      raise GrownDatasetError(f"{where}: {key} must hold {len(ids)} finite values, one per"
                              f" target token; nothing was written")
    features[key] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
  for key in FLOAT_FIELDS:
    value = float(row[key])
    unscored_reward = key == "reward" and not int(row["scored"]) and math.isnan(value)
    if not (math.isfinite(value) or unscored_reward):
      raise GrownDatasetError(f"{where} has a non-finite {key} ({value}); nothing was written")
    features[key] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
  return tf.train.Example(features=tf.train.Features(feature=features))


def write_shard(directory: str, index: int, num_shards: int,
                rows: Iterable[Mapping[str, Any]],
                counts: Mapping[str, int] | None = None) -> Dict[str, Any]:
  """Writes one shard atomically and returns its sidecar record.

  Every row is checked (text fields present, finite floats) before the shard is
  renamed into place; on any error nothing of this shard is left behind. `counts`
  (e.g. the rows each reward guard fired on) are kept in the sidecar and summed
  into the manifest.
  """
  files.makedirs(directory)
  name = shard_name(index, num_shards)
  path = files.join(directory, name)
  count, reward_sum, sources = 0, 0.0, set()
  try:
    # A temporary file renamed into place on a file system; on an object store the
    # shard itself, which appears only once whole (rest_jax/files.py).
    with files.committed(path, "grown.shard_write") as target, \
        files.written_by_tensorflow(target) as local, tf.io.TFRecordWriter(local) as writer:
      for i, row in enumerate(rows):
        writer.write(_example(row, i, name).SerializeToString())
        count += 1
        reward_sum += float(row["reward"]) if int(row["scored"]) else 0.0
        sources.add(int(row["source_id"]))
      writer.flush()
  except (OSError, tf.errors.OpError) as e:  # e.g. the disk is full
    raise GrownDatasetError(
        f"{directory}: could not write shard {name} ({e}); nothing of this shard was kept,"
        " finished shards are intact and a re-run resumes from them") from e
  record = {"file": name, "count": count, "bytes": files.size(path),
            "reward_sum": reward_sum, "num_sources": len(sources)}
  if counts:
    record["counts"] = {k: int(v) for k, v in counts.items()}
  try:
    files.atomic_write_text(_sidecar(path), json.dumps(record), "grown.sidecar")
  except OSError as e:
    files.remove(path)  # a shard without its sidecar is not finished
    raise GrownDatasetError(f"{directory}: could not write the sidecar of shard {name} ({e});"
                            " the shard was removed and will be redone") from e
  return record


def remove_stale_temporaries(directory: str, shards: Iterable[int], num_shards: int,
                             manifest: bool = False) -> List[str]:
  """Deletes temporary files a killed run left for `shards` (and the manifest); returns them.

  Readers never see them (only renamed files count), but they would pile up. Each
  host cleans only its own shards', so no host removes a file another is writing.
  """
  prefixes = []
  for i in shards:
    path = files.join(directory, shard_name(i, num_shards))
    prefixes += [files.temporary_prefix(path), files.temporary_prefix(_sidecar(path))]
  if manifest:
    prefixes.append(files.temporary_prefix(MANIFEST))
  return files.remove_temporaries(directory, prefixes)


def completed_shards(directory: str, num_shards: int) -> List[int]:
  """Indices of the shards already written whole (shard file and sidecar present)."""
  done = []
  for i in range(num_shards):
    path = files.join(directory, shard_name(i, num_shards))
    if files.exists(path) and files.exists(_sidecar(path)):
      done.append(i)
  return done


def _read_sidecar(directory: str, index: int, num_shards: int) -> Dict[str, Any]:
  path = files.join(directory, shard_name(index, num_shards))
  if not (files.exists(path) and files.exists(_sidecar(path))):
    raise GrownDatasetError(f"{directory}: shard {shard_name(index, num_shards)} is missing")
  return json.loads(files.read_text(_sidecar(path)))


def shard_paths(directory: str, manifest: Mapping[str, Any]) -> List[str]:
  return [files.join(directory, s["file"]) for s in manifest["shards"]]


def tensorflow_shard_paths(directory: str, manifest: Mapping[str, Any]) -> List[str]:
  """The shards as TensorFlow reads them (local copies where it cannot reach them)."""
  return [files.readable_by_tensorflow(p) for p in shard_paths(directory, manifest)]


def _parsed_columns(paths: Sequence[str], spec: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """Every row's `spec` features, parsed by `spec`, in shard order, one array per feature.

  Rows are parsed in batches: one element at a time, tf.data's per-element cost made
  reading a Grow step's 20,000 rows take 5.2 s (0.27 s in batches).
  """
  ds = tf.data.TFRecordDataset([files.readable_by_tensorflow(p) for p in paths])
  ds = ds.batch(_PARSE_BATCH).map(lambda r: tf.io.parse_example(r, spec))
  parts: Dict[str, List[np.ndarray]] = {k: [] for k in spec}
  try:
    for batch in ds.as_numpy_iterator():
      for k in spec:
        parts[k].append(batch[k])
  except tf.errors.DataLossError as e:
    raise GrownDatasetError(f"a shard of {os.path.dirname(paths[0])} is truncated or corrupt:"
                            f" {e.message}") from None
  return {k: np.concatenate(v) if v else np.zeros((0,), spec[k].dtype.as_numpy_dtype)
          for k, v in parts.items()}


_PARSE_BATCH = 4096


def _local_identities(paths: Sequence[str]) -> Tuple | None:
  """Each file's (device, inode, mtime, size), or None if one is on an object store: a
  shard is written once and renamed into place, so a rewritten one is another file."""
  if any(files.is_object_store(p) or "://" in str(p) for p in paths):
    return None
  try:
    stats = [os.stat(p) for p in paths]
  except OSError:
    return None
  return tuple((s.st_dev, s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)


_COLUMNS_CACHE: Dict[Tuple, Dict[str, np.ndarray]] = {}


def read_columns(paths: Sequence[str]) -> Dict[str, np.ndarray]:
  """Every row's `reward`, `scored`, `is_reference`, `source_id` and `sample_id`, in shard
  order (read-only arrays).

  Local shards' columns are kept for the process: a run reads one Grow step's a few
  dozen times (every step's kept rows, thresholds and reports; 0.18 s each for the
  demo's 20,000 rows), and the files themselves tell when they were rewritten.
  """
  key = _local_identities(paths)
  if key is not None:
    key = (tuple(paths), key)
    if key not in _COLUMNS_CACHE:
      if len(_COLUMNS_CACHE) >= 8:
        _COLUMNS_CACHE.pop(next(iter(_COLUMNS_CACHE)))
      columns = _read_columns(paths)
      for array in columns.values():
        array.setflags(write=False)
      _COLUMNS_CACHE[key] = columns
    return dict(_COLUMNS_CACHE[key])
  return _read_columns(paths)


def _read_columns(paths: Sequence[str]) -> Dict[str, np.ndarray]:
  ints = ("scored", "is_reference", "source_id", "sample_id")
  columns = _parsed_columns(paths, {"reward": tf.io.FixedLenFeature([], tf.float32),
                                    **{k: tf.io.FixedLenFeature([], tf.int64) for k in ints}})
  return {
      "reward": columns["reward"].astype(np.float32),
      "scored": columns["scored"].astype(bool),
      "is_reference": columns["is_reference"].astype(bool),
      "source_id": columns["source_id"].astype(np.int64),
      "sample_id": columns["sample_id"].astype(np.int64),
  }


def read_texts(paths: Sequence[str]) -> Dict[str, List]:
  """Every row's source and sample texts (`inputs`, `targets`), `is_reference`, `source_id`."""
  spec = {k: tf.io.FixedLenFeature([], tf.string) for k in TEXT_FIELDS}
  spec.update({k: tf.io.FixedLenFeature([], tf.int64) for k in ("is_reference", "source_id")})
  columns = _parsed_columns(paths, spec)
  out: Dict[str, List] = {k: [t.decode("utf-8") for t in columns[k]] for k in TEXT_FIELDS}
  out["is_reference"] = [bool(r) for r in columns["is_reference"]]
  out["source_id"] = [int(r) for r in columns["source_id"]]
  return out


def sample_rewards(paths: Sequence[str]) -> np.ndarray:
  """The rewards of the policy's samples (no references), in shard order.

  Quantile thresholds and reward plots are taken over these: a reference's reward
  (when it has one) says nothing about what the policy samples.
  """
  columns = read_columns(paths)
  return columns["reward"][~columns["is_reference"]]


def reward_statistics(rewards: np.ndarray) -> Dict[str, Any]:
  if rewards.size == 0:
    return {"count": 0}
  qs = [1, 5, 10, 25, 50, 75, 90, 95, 99]
  return {"count": int(rewards.size), "mean": float(rewards.mean()),
          "std": float(rewards.std()), "min": float(rewards.min()), "max": float(rewards.max()),
          "percentiles": {str(q): float(np.percentile(rewards, q)) for q in qs}}


def write_manifest(directory: str, num_shards: int,
                   metadata: Mapping[str, Any] | None = None) -> Dict[str, Any]:
  """Checks that every shard is complete, then writes `manifest.json` (last).

  Args:
    directory: the grown dataset's directory.
    num_shards: shards the Grow step was split into.
    metadata: what produced the data (policy checkpoint, reward config, seed...).

  Raises:
    GrownDatasetError: a shard is missing (the message names it).
  """
  shards = [_read_sidecar(directory, i, num_shards) for i in range(num_shards)]
  paths = [files.join(directory, s["file"]) for s in shards]
  columns = read_columns(paths)
  total = sum(s["count"] for s in shards)
  if columns["reward"].size != total:
    raise GrownDatasetError(
        f"{directory}: shards hold {columns['reward'].size} rows, sidecars say {total}")
  samples, references = ~columns["is_reference"], columns["is_reference"]
  manifest = {
      "format_version": FORMAT_VERSION,
      "num_shards": num_shards,
      "num_rows": total,
      "num_samples": int(samples.sum()),
      "num_references": int(references.sum()),
      "shards": shards,
      # Over the samples; the references' own (when scored) apart.
      "reward": reward_statistics(columns["reward"][samples]),
      "reference_reward": reward_statistics(
          columns["reward"][references & columns["scored"]]),
      "metadata": dict(metadata or {}),
  }
  counts: Dict[str, int] = {}
  for s in shards:
    for key, value in s.get("counts", {}).items():
      counts[key] = counts.get(key, 0) + value
  if counts:
    manifest["counts"] = counts
  files.atomic_write_text(files.join(directory, MANIFEST), json.dumps(manifest, indent=2),
                          "grown.manifest")
  return manifest


def load_manifest(directory: str, verify_counts: bool = True) -> Dict[str, Any]:
  """Reads and checks `manifest.json` against the shards.

  Raises:
    GrownDatasetError: no manifest (the Grow step did not finish), another
      format version, a missing shard, a shard whose size or row count differs
      from the manifest, or a truncated shard.
  """
  path = files.join(directory, MANIFEST)
  if not files.exists(path):
    raise GrownDatasetError(
        f"{directory} has no {MANIFEST}: the Grow step that writes it did not finish")
  manifest = json.loads(files.read_text(path))
  version = manifest.get("format_version")
  if version != FORMAT_VERSION:
    raise GrownDatasetError(
        f"{directory} is a grown dataset of format version {version}; this rest_jax reads"
        f" version {FORMAT_VERSION} (rows with the sampled token ids and per-token behaviour"
        " log-probabilities, which an older Grow step did not store): move it aside and re-run"
        " its Grow step")
  for shard in manifest["shards"]:
    shard_path = files.join(directory, shard["file"])
    if not files.exists(shard_path):
      raise GrownDatasetError(f"{shard_path} is listed in {MANIFEST} but missing")
    size = files.size(shard_path)
    if size != shard["bytes"]:
      raise GrownDatasetError(
          f"{shard_path} has {size} bytes, {MANIFEST} says {shard['bytes']}: truncated or"
          " replaced")
    if verify_counts:
      try:
        count = sum(1 for _ in tf.data.TFRecordDataset(files.readable_by_tensorflow(shard_path)))
      except tf.errors.DataLossError as e:
        raise GrownDatasetError(f"{shard_path} is corrupt: {e.message}") from None
      if count != shard["count"]:
        raise GrownDatasetError(
            f"{shard_path} holds {count} rows, {MANIFEST} says {shard['count']}")
  return manifest


def feature_spec() -> Dict[str, Any]:
  """Parsing spec of a grown dataset's rows (`tf.io.parse_single_example`)."""
  spec = {k: tf.io.FixedLenFeature([], tf.string) for k in TEXT_FIELDS}
  spec.update({k: tf.io.FixedLenFeature([], tf.int64) for k in INT_FIELDS})
  spec.update({k: tf.io.FixedLenFeature([], tf.float32) for k in FLOAT_FIELDS})
  spec[TOKEN_IDS] = tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True)
  spec.update({k: tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True)
               for k in TOKEN_FLOAT_FIELDS})
  return spec


def sampled_from(directory: str, bc_dir: str, reward=None) -> str:
  """`directory` if it is a finished grown dataset sampled from the BC policy `bc_dir` and
  scored by `reward` (a ValueError naming what differs otherwise)."""
  manifest = load_manifest(directory, verify_counts=False)
  meta = manifest["metadata"]
  policy = meta.get("policy")
  if policy and os.path.abspath(policy) != os.path.abspath(bc_dir):
    raise ValueError(
        f"GROW_FROM = {directory!r} was sampled from the policy {policy}, but this run's BC"
        f" policy is {bc_dir}: set BC_FROM = {policy!r} as well (Improve trains from the"
        " policy that sampled it)")
  if reward is None:
    return directory
  if meta.get("reward_reads_references") and not reward.needs_reference:
    raise ValueError(
        f"GROW_FROM = {directory!r} was scored by {meta.get('reward')!r}, a reward that reads"
        f" references: its original pairs carry no reward, and this run's REWARD"
        f" ({reward.name!r}) filters them by theirs. Grow again with this run's reward")
  theirs = meta.get("reward_identity")
  mine = json.loads(json.dumps(reward.identity, default=str))
  if (theirs if theirs is not None else meta.get("reward")) != (
      mine if theirs is not None else reward.name):
    raise ValueError(
        f"GROW_FROM = {directory!r} was scored by another reward ({meta.get('reward')!r},"
        f" {theirs}) than this run's REWARD ({reward.name!r}, {mine}): its thresholds and"
        " rewards would not be this run's. Grow again, or set REWARD to the one it used")
  return directory


def samples_by_source(directory: str) -> Tuple[List[str], List[List[str]]]:
  """Each source of a grown dataset (by source id) and its samples' texts."""
  texts = read_texts(shard_paths(directory, load_manifest(directory, verify_counts=False)))
  sources: Dict[int, str] = {}
  samples: Dict[int, List[str]] = {}
  for sid, src, hyp, ref in zip(texts["source_id"], texts["inputs"], texts["targets"],
                                texts["is_reference"]):
    sources[sid] = src
    if not ref:
      samples.setdefault(sid, []).append(hyp)
  ids = sorted(samples)
  return [sources[i] for i in ids], [samples[i] for i in ids]
