"""The grown dataset: reward-annotated samples written by Grow, read back by Improve.

On disk (one directory per Grow step):

    shard-00000-of-00004.tfrecord   tf.train.Example rows (fields below)
    shard-00000-of-00004.json       the shard's row count, byte size and reward sum
    ...
    manifest.json                   written last: shards, counts, reward statistics,
                                    and what produced the data (policy, reward)

Row fields: `inputs` and `targets` (text), `reward` (float), `source_id` and
`sample_id` (int), `is_reference` (0/1), plus any extra float features (e.g. the
behaviour policy's `log_prob`).

A shard is written under a temporary name and renamed when complete, and its
sidecar is written after it, so a shard either exists whole or not at all; a
re-run skips the shards that exist. The manifest is written once every shard is
there. Reading checks the manifest against the shards: a missing shard, a size
or count mismatch, or a truncated record is an error, not a smaller dataset.
"""

import json
import math
import os
import tempfile
from typing import Any, Dict, Iterable, List, Mapping, Sequence

import numpy as np
import tensorflow as tf

from rest_jax import faults, files

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
TEXT_FIELDS = ("inputs", "targets")
INT_FIELDS = ("source_id", "sample_id", "is_reference")


class GrownDatasetError(RuntimeError):
  """A grown dataset that is incomplete, inconsistent or malformed."""


def shard_name(index: int, num_shards: int) -> str:
  return f"shard-{index:05d}-of-{num_shards:05d}.tfrecord"


def _sidecar(path: str) -> str:
  return path[: -len(".tfrecord")] + ".json"


def _example(row: Mapping[str, Any], index: int, shard: str) -> tf.train.Example:
  features = {}
  for key in TEXT_FIELDS:
    value = row[key]
    value = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    features[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
  for key in INT_FIELDS:
    features[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(row[key])]))
  for key, value in row.items():
    if key in TEXT_FIELDS or key in INT_FIELDS:
      continue
    value = float(value)
    if not math.isfinite(value):
      raise GrownDatasetError(
          f"{shard}: row {index} (source_id {row.get('source_id')}, sample_id"
          f" {row.get('sample_id')}) has a non-finite {key} ({value}); nothing was written")
    features[key] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
  if "reward" not in features:
    raise GrownDatasetError(f"{shard}: row {index} has no reward")
  return tf.train.Example(features=tf.train.Features(feature=features))


def write_shard(directory: str, index: int, num_shards: int,
                rows: Iterable[Mapping[str, Any]]) -> Dict[str, Any]:
  """Writes one shard atomically and returns its sidecar record.

  Every row is checked (text fields present, finite floats) before the shard is
  renamed into place; on any error nothing of this shard is left behind.
  """
  os.makedirs(directory, exist_ok=True)
  name = shard_name(index, num_shards)
  path = os.path.join(directory, name)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=files.temporary_prefix(path))
  os.close(fd)
  count, reward_sum, sources = 0, 0.0, set()
  try:
    with tf.io.TFRecordWriter(tmp) as writer:
      for i, row in enumerate(rows):
        writer.write(_example(row, i, name).SerializeToString())
        count += 1
        reward_sum += float(row["reward"])
        sources.add(int(row["source_id"]))
      writer.flush()
    faults.point("grown.shard_write")
    os.replace(tmp, path)
  except (OSError, tf.errors.OpError) as e:  # e.g. the disk is full
    if os.path.exists(tmp):
      os.remove(tmp)
    raise GrownDatasetError(
        f"{directory}: could not write shard {name} ({e}); nothing of this shard was kept,"
        " finished shards are intact and a re-run resumes from them") from e
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  record = {"file": name, "count": count, "bytes": os.path.getsize(path),
            "reward_sum": reward_sum, "num_sources": len(sources)}
  try:
    files.atomic_write_text(_sidecar(path), json.dumps(record), "grown.sidecar")
  except OSError as e:
    os.remove(path)  # a shard without its sidecar is not finished
    raise GrownDatasetError(f"{directory}: could not write the sidecar of shard {name} ({e});"
                            " the shard was removed and will be redone") from e
  return record


def remove_stale_temporaries(directory: str, shards: Iterable[int], num_shards: int,
                             manifest: bool = False) -> List[str]:
  """Deletes temporary files a killed run left for `shards` (and the manifest); returns them.

  Readers never see them (only renamed files count), but they would pile up. Each
  host cleans only its own shards', so no host removes a file another is writing.
  """
  if not os.path.isdir(directory):
    return []
  prefixes = []
  for i in shards:
    path = os.path.join(directory, shard_name(i, num_shards))
    prefixes += [files.temporary_prefix(path), files.temporary_prefix(_sidecar(path))]
  if manifest:
    prefixes.append(files.temporary_prefix(MANIFEST))
  removed = []
  for name in os.listdir(directory):
    if any(name.startswith(p) for p in prefixes):
      os.remove(os.path.join(directory, name))
      removed.append(name)
  return removed


def completed_shards(directory: str, num_shards: int) -> List[int]:
  """Indices of the shards already written whole (shard file and sidecar present)."""
  done = []
  for i in range(num_shards):
    path = os.path.join(directory, shard_name(i, num_shards))
    if os.path.exists(path) and os.path.exists(_sidecar(path)):
      done.append(i)
  return done


def _read_sidecar(directory: str, index: int, num_shards: int) -> Dict[str, Any]:
  path = os.path.join(directory, shard_name(index, num_shards))
  if not (os.path.exists(path) and os.path.exists(_sidecar(path))):
    raise GrownDatasetError(f"{directory}: shard {shard_name(index, num_shards)} is missing")
  with open(_sidecar(path)) as f:
    return json.load(f)


def shard_paths(directory: str, manifest: Mapping[str, Any]) -> List[str]:
  return [os.path.join(directory, s["file"]) for s in manifest["shards"]]


def read_rewards(paths: Sequence[str]) -> np.ndarray:
  """Every row's reward, in shard order."""
  spec = {"reward": tf.io.FixedLenFeature([], tf.float32)}
  ds = tf.data.TFRecordDataset(list(paths)).map(lambda r: tf.io.parse_single_example(r, spec))
  try:
    return np.array([x["reward"] for x in ds.as_numpy_iterator()], np.float32)
  except tf.errors.DataLossError as e:
    raise GrownDatasetError(f"a shard of {os.path.dirname(paths[0])} is truncated or corrupt:"
                            f" {e.message}") from None


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
  paths = [os.path.join(directory, s["file"]) for s in shards]
  rewards = read_rewards(paths)
  total = sum(s["count"] for s in shards)
  if rewards.size != total:
    raise GrownDatasetError(f"{directory}: shards hold {rewards.size} rows, sidecars say {total}")
  manifest = {
      "format_version": FORMAT_VERSION,
      "num_shards": num_shards,
      "num_rows": total,
      "shards": shards,
      "reward": reward_statistics(rewards),
      "metadata": dict(metadata or {}),
  }
  files.atomic_write_text(os.path.join(directory, MANIFEST), json.dumps(manifest, indent=2),
                     "grown.manifest")
  return manifest


def load_manifest(directory: str, verify_counts: bool = True) -> Dict[str, Any]:
  """Reads and checks `manifest.json` against the shards.

  Raises:
    GrownDatasetError: no manifest (the Grow step did not finish), a missing
      shard, a shard whose size or row count differs from the manifest, or a
      truncated shard.
  """
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    raise GrownDatasetError(
        f"{directory} has no {MANIFEST}: the Grow step that writes it did not finish")
  with open(path) as f:
    manifest = json.load(f)
  for shard in manifest["shards"]:
    shard_path = os.path.join(directory, shard["file"])
    if not os.path.exists(shard_path):
      raise GrownDatasetError(f"{shard_path} is listed in {MANIFEST} but missing")
    size = os.path.getsize(shard_path)
    if size != shard["bytes"]:
      raise GrownDatasetError(
          f"{shard_path} has {size} bytes, {MANIFEST} says {shard['bytes']}: truncated or"
          " replaced")
    if verify_counts:
      try:
        count = sum(1 for _ in tf.data.TFRecordDataset(shard_path))
      except tf.errors.DataLossError as e:
        raise GrownDatasetError(f"{shard_path} is corrupt: {e.message}") from None
      if count != shard["count"]:
        raise GrownDatasetError(
            f"{shard_path} holds {count} rows, {MANIFEST} says {shard['count']}")
  return manifest


def feature_spec(paths: Sequence[str]) -> Dict[str, tf.io.FixedLenFeature]:
  """Parsing spec of a grown dataset's rows (float extras found in its first row)."""
  spec = {k: tf.io.FixedLenFeature([], tf.string) for k in TEXT_FIELDS}
  spec.update({k: tf.io.FixedLenFeature([], tf.int64) for k in INT_FIELDS})
  for record in tf.data.TFRecordDataset(list(paths)).take(1):
    example = tf.train.Example.FromString(record.numpy())
    for key, feature in example.features.feature.items():
      if key not in spec and feature.HasField("float_list"):
        spec[key] = tf.io.FixedLenFeature([], tf.float32)
  spec.setdefault("reward", tf.io.FixedLenFeature([], tf.float32))
  return spec
