"""The grown dataset: write, check, filter at rising thresholds, read rows and rewards back."""

import json
import os

import numpy as np
import pytest
import seqio

from rest_jax.data import grown, grown_tasks

VOCAB = seqio.ByteVocabulary()


def _rows(shard, sources=3, samples=4):
  rows = []
  for s in range(sources):
    source_id = shard * sources + s
    for k in range(samples):
      rows.append({"inputs": f"src {source_id}", "targets": f"hyp {source_id} {k % 3}",
                   "reward": round(0.1 * k + 0.01 * source_id, 4), "source_id": source_id,
                   "sample_id": k, "is_reference": 0, "log_prob": -1.5 * k})
    rows.append({"inputs": f"src {source_id}", "targets": f"ref {source_id}", "reward": 1.0,
                 "source_id": source_id, "sample_id": samples, "is_reference": 1,
                 "log_prob": 0.0})
  return rows


def _write(directory, num_shards=2):
  rows = []
  for i in range(num_shards):
    rows += _rows(i)
    grown.write_shard(str(directory), i, num_shards, _rows(i))
  grown.write_manifest(str(directory), num_shards, {"policy": "ckpt/3", "reward": "chrf"})
  return rows


def _read(task, converter=None):
  if converter is None:
    ds = task.get_dataset({"inputs": 16, "targets": 16}, split="train", shuffle=False)
  else:
    ds = seqio.get_dataset(task.name, {"inputs": 16, "targets": 16}, dataset_split="train",
                           shuffle=False,
                           feature_converter=converter)
  return list(ds.as_numpy_iterator())


def test_round_trip_and_nested_thresholds(tmp_path):
  rows = _write(tmp_path)
  manifest = grown.load_manifest(str(tmp_path))
  assert manifest["num_rows"] == len(rows) == 30
  assert manifest["metadata"]["policy"] == "ckpt/3"
  assert manifest["reward"]["max"] == pytest.approx(1.0)
  kept = {}
  for tau in (0.0, 0.2, 0.3):
    task = grown_tasks.register_grown_task("grown_test", str(tmp_path), VOCAB, threshold=tau)
    examples = _read(task)
    expected = [r for r in rows if r["reward"] >= np.float32(tau)]
    assert [e["targets_pretokenized"].decode() for e in examples] == [
        r["targets"] for r in expected]
    np.testing.assert_allclose([e["reward"] for e in examples],
                               [r["reward"] for r in expected], rtol=1e-6)
    kept[tau] = {(e["source_id"], e["sample_id"]) for e in examples}
  assert kept[0.3] < kept[0.2] < kept[0.0]


def test_reference_and_duplicate_filters_and_quantiles(tmp_path):
  rows = _write(tmp_path)
  no_refs = _read(grown_tasks.register_grown_task(
      "grown_test", str(tmp_path), VOCAB, include_references=False))
  assert all(e["is_reference"] == 0 for e in no_refs) and len(no_refs) == 24
  unique = _read(grown_tasks.register_grown_task(
      "grown_test", str(tmp_path), VOCAB, deduplicate=True))
  # Samples k=0 and k=3 of a source are the same text ("hyp <id> 0").
  assert len(unique) == 30 - 6
  top = _read(grown_tasks.register_grown_task(
      "grown_test", str(tmp_path), VOCAB, top_quantile=0.2))
  assert len(top) == 6 and {e["is_reference"] for e in top} == {1}
  del rows


def test_rewards_reach_the_batch(tmp_path):
  _write(tmp_path)
  task = grown_tasks.register_grown_task("grown_test", str(tmp_path), VOCAB, threshold=0.25)
  batches = _read(task, grown_tasks.RewardEncDecFeatureConverter())
  assert set(batches[0]) == {"encoder_input_tokens", "decoder_input_tokens",
                             "decoder_target_tokens", "decoder_loss_weights", "reward"}
  assert all(b["reward"] >= 0.25 for b in batches)


def test_missing_manifest_truncated_and_missing_shards_are_errors(tmp_path):
  directory = tmp_path / "grow"
  grown.write_shard(str(directory), 0, 2, _rows(0))
  assert grown.completed_shards(str(directory), 2) == [0]
  with pytest.raises(grown.GrownDatasetError, match="shard-00001-of-00002.tfrecord is missing"):
    grown.write_manifest(str(directory), 2)
  with pytest.raises(grown.GrownDatasetError, match="has no manifest.json"):
    grown.load_manifest(str(directory))
  grown.write_shard(str(directory), 1, 2, _rows(1))
  grown.write_manifest(str(directory), 2)
  shard = directory / grown.shard_name(1, 2)
  data = shard.read_bytes()
  shard.write_bytes(data[: len(data) - 7])
  with pytest.raises(grown.GrownDatasetError, match="truncated or replaced"):
    grown.load_manifest(str(directory))
  os.remove(shard)
  with pytest.raises(grown.GrownDatasetError, match="listed in manifest.json but missing"):
    grown.load_manifest(str(directory))


def test_count_mismatch_and_bad_rewards(tmp_path):
  _write(tmp_path)
  manifest_path = tmp_path / grown.MANIFEST
  manifest = json.loads(manifest_path.read_text())
  manifest["shards"][0]["count"] += 1
  manifest_path.write_text(json.dumps(manifest))
  with pytest.raises(grown.GrownDatasetError, match="holds 15 rows, manifest.json says 16"):
    grown.load_manifest(str(tmp_path))
  bad = _rows(0)
  bad[5]["reward"] = float("nan")
  with pytest.raises(grown.GrownDatasetError, match="row 5 .*non-finite reward"):
    grown.write_shard(str(tmp_path / "bad"), 0, 1, bad)
  assert not [f for f in os.listdir(tmp_path / "bad") if f.endswith(".tfrecord")]
