"""The grown dataset: write, check, filter at rising thresholds, read rows and rewards back."""

import json
import os

import numpy as np
import pytest
import seqio

from rest_jax import rewards
from rest_jax.data import grown, grown_tasks

VOCAB = seqio.ByteVocabulary()
EOS = VOCAB.eos_id


def _ids(text, eos=True):
  return list(VOCAB.encode(text)) + ([EOS] if eos else [])


def _row(source_id, sample_id, text, reward, is_reference=0, scored=1, eos=True, value=0.0,
         value_loo=0.0):
  ids = _ids(text, eos)
  return {"inputs": f"src {source_id}", "targets": text, "target_ids": ids,
          "behaviour_log_probs": [-0.5] * len(ids), "policy_log_probs": [-0.7] * len(ids),
          "ended_with_eos": int(eos), "reward": reward, "scored": scored,
          "source_id": source_id, "sample_id": sample_id, "is_reference": is_reference,
          "value": value, "value_loo": value_loo}


def _rows(shard, sources=3, samples=4, references_scored=True):
  rows = []
  for s in range(sources):
    source_id = shard * sources + s
    for k in range(samples):
      rows.append(_row(source_id, k, f"hyp {source_id} {k % 3}",
                       round(0.1 * k + 0.01 * source_id, 4)))
    if references_scored:
      rows.append(_row(source_id, samples, f"ref {source_id}", 0.95, is_reference=1))
    else:  # a reward that reads references never scores one against itself
      rows.append(_row(source_id, samples, f"ref {source_id}", float("nan"), is_reference=1,
                       scored=0))
  return rows


def _write(directory, num_shards=2, references_scored=True):
  rows = []
  for i in range(num_shards):
    rows += _rows(i, references_scored=references_scored)
    grown.write_shard(str(directory), i, num_shards, _rows(i, references_scored=references_scored))
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
  assert manifest["num_samples"] == 24 and manifest["num_references"] == 6
  assert manifest["metadata"]["policy"] == "ckpt/3"
  # Reward statistics are over the samples; the references' apart.
  assert manifest["reward"]["max"] == pytest.approx(0.35)
  assert manifest["reference_reward"]["count"] == 6
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


def test_improve_trains_on_the_stored_token_ids(tmp_path):
  """A cut sample stays cut (no EOS appended) and no text is tokenized again."""
  rows = [_row(0, 0, "ab", 0.9, eos=False), _row(0, 1, "abc", 0.8)]
  rows[0]["target_ids"] = [7, 8, 9]  # ids no tokenization of "ab" gives
  rows[0]["behaviour_log_probs"] = [-0.1, -0.2, -0.3]
  rows[0]["policy_log_probs"] = [-0.4, -0.5, -0.6]
  grown.write_shard(str(tmp_path), 0, 1, rows)
  grown.write_manifest(str(tmp_path), 1)
  task = grown_tasks.register_grown_task("grown_test", str(tmp_path), VOCAB, threshold=0.0)
  converter = grown_tasks.RewardEncDecFeatureConverter(
      scalar_features=grown_tasks.SCALAR_FEATURES, token_features=grown_tasks.TOKEN_FEATURES)
  batches = _read(task, converter)
  assert set(batches[0]) == {"encoder_input_tokens", "decoder_input_tokens",
                             "decoder_target_tokens", "decoder_loss_weights",
                             *grown_tasks.SCALAR_FEATURES, *grown_tasks.TOKEN_FEATURES}
  np.testing.assert_array_equal(batches[0]["decoder_target_tokens"][:4], [7, 8, 9, 0])
  np.testing.assert_array_equal(batches[0]["decoder_input_tokens"][:4], [0, 7, 8, 9])
  np.testing.assert_allclose(batches[0]["behaviour_log_probs"][:4], [-0.1, -0.2, -0.3, 0.0])
  np.testing.assert_allclose(batches[0]["policy_log_probs"][:4], [-0.4, -0.5, -0.6, 0.0])
  np.testing.assert_array_equal(batches[1]["decoder_target_tokens"][:4], _ids("abc"))


def test_unscored_references_and_sample_quantiles(tmp_path):
  """With a reward that reads references, references carry no reward of their own."""
  _write(tmp_path, references_scored=False)
  manifest = grown.load_manifest(str(tmp_path))
  assert manifest["reference_reward"]["count"] == 0
  columns = grown.read_columns(grown.shard_paths(str(tmp_path), manifest))
  assert np.all(np.isnan(columns["reward"][columns["is_reference"]]))
  assert not np.any(columns["scored"][columns["is_reference"]])
  for tau in (0.0, 0.3):  # kept at every threshold, with the reward the loss is given
    examples = _read(grown_tasks.register_grown_task(
        "grown_test", str(tmp_path), VOCAB, threshold=tau, unscored_reward=1.0))
    refs = [e for e in examples if e["is_reference"]]
    assert len(refs) == 6 and {float(e["reward"]) for e in refs} == {1.0}
  dropped = _read(grown_tasks.register_grown_task(
      "grown_test", str(tmp_path), VOCAB, threshold=0.0, include_references=False))
  assert len(dropped) == 24
  # The top 25% by quantile (rest's rule: the samples' 0.75 quantile, 'lower', so at least
  # a quarter of them) is taken over the samples: the references take no part.
  tau, sample_rewards = _top_quarter(tmp_path)
  top = _read(grown_tasks.register_grown_task(
      "grown_test", str(tmp_path), VOCAB, threshold=tau, include_references=False))
  assert len(top) == np.sum(sample_rewards >= tau) >= 24 // 4


def _top_quarter(directory):
  """The threshold of the top 25% of the samples by reward, as `rest` resolves it, and the
  samples' rewards."""
  paths = grown.shard_paths(str(directory), grown.load_manifest(str(directory)))
  sample_rewards = grown.sample_rewards(paths)
  return rewards.ThresholdSchedule([0.75], quantiles=True).resolve(sample_rewards)[0], \
      sample_rewards


def test_reference_and_duplicate_filters_and_quantiles(tmp_path):
  _write(tmp_path)
  no_refs = _read(grown_tasks.register_grown_task(
      "grown_test", str(tmp_path), VOCAB, include_references=False))
  assert all(e["is_reference"] == 0 for e in no_refs) and len(no_refs) == 24
  unique = _read(grown_tasks.register_grown_task(
      "grown_test", str(tmp_path), VOCAB, deduplicate=True))
  # Samples k=0 and k=3 of a source are the same text ("hyp <id> 0").
  assert len(unique) == 30 - 6
  # The top 25% of the samples' rewards (>= 0.3) keep 6 samples; scored references
  # (0.95) pass that threshold too.
  tau, sample_rewards = _top_quarter(tmp_path)
  top = _read(grown_tasks.register_grown_task(
      "grown_test", str(tmp_path), VOCAB, threshold=tau))
  assert len(top) == np.sum(sample_rewards >= tau) + 6
  assert sum(e["is_reference"] for e in top) == 6


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


def test_an_older_format_is_refused_by_name(tmp_path):
  _write(tmp_path)
  manifest_path = tmp_path / grown.MANIFEST
  manifest = json.loads(manifest_path.read_text())
  manifest["format_version"] = 1
  manifest_path.write_text(json.dumps(manifest))
  with pytest.raises(grown.GrownDatasetError, match="format version 1; this rest_jax reads"
                     " version 2"):
    grown.load_manifest(str(tmp_path))


def test_count_mismatch_and_bad_rows(tmp_path):
  _write(tmp_path)
  manifest_path = tmp_path / grown.MANIFEST
  manifest = json.loads(manifest_path.read_text())
  manifest["shards"][0]["count"] += 1
  manifest_path.write_text(json.dumps(manifest))
  with pytest.raises(grown.GrownDatasetError, match="holds 15 rows, manifest.json says 16"):
    grown.load_manifest(str(tmp_path))
  bad = _rows(0)
  bad[5]["reward"] = float("nan")  # a scored row must have a finite reward
  with pytest.raises(grown.GrownDatasetError, match="row 5 .*non-finite reward"):
    grown.write_shard(str(tmp_path / "bad"), 0, 1, bad)
  assert not [f for f in os.listdir(tmp_path / "bad") if f.endswith(".tfrecord")]
  bad = _rows(0)
  bad[2]["behaviour_log_probs"] = bad[2]["behaviour_log_probs"][:-1]
  with pytest.raises(grown.GrownDatasetError, match="row 2.*one per target token"):
    grown.write_shard(str(tmp_path / "bad"), 0, 1, bad)


def test_shard_counts_are_summed_into_the_manifest(tmp_path):
  directory = str(tmp_path / "grow")
  grown.write_shard(directory, 0, 2, _rows(0), {"guard_copy": 2, "guard_empty": 1})
  grown.write_shard(directory, 1, 2, _rows(1), {"guard_copy": 3})
  manifest = grown.write_manifest(directory, 2)
  assert manifest["counts"] == {"guard_copy": 5, "guard_empty": 1}


def test_columns_are_read_again_when_a_shard_is_rewritten(tmp_path):
  """`read_columns` keeps a Grow step's columns for the process, but a shard written anew
  (the same name and byte size, other rewards: a Grow step redone with another reward) is
  read again; the arrays it hands out cannot be changed in place."""
  _write(tmp_path)
  paths = grown.shard_paths(str(tmp_path), grown.load_manifest(str(tmp_path)))
  first = grown.read_columns(paths)
  assert grown.read_columns(paths)["reward"] is first["reward"]  # kept, not parsed again
  with pytest.raises(ValueError):
    first["reward"][0] = 1.0
  rescored = [dict(row, reward=round(1.0 - row["reward"], 4)) if row["scored"] else row
              for row in _rows(0)]
  size = os.path.getsize(paths[0])
  grown.write_shard(str(tmp_path), 0, 2, rescored)
  assert os.path.getsize(paths[0]) == size
  again = grown.read_columns(paths)
  np.testing.assert_allclose(again["reward"][:len(rescored)],
                             [row["reward"] for row in rescored], rtol=1e-6)
  assert not np.allclose(again["reward"], first["reward"])


def _uneven_shards(directory, sizes, references_scored=True):
  """Shards of `sizes` rows (one in five a reference), rewards spread over [0, 1)."""
  for i, size in enumerate(sizes):
    rows = []
    for j in range(size):
      reference = j % 5 == 4
      scored = references_scored or not reference
      rows.append(_row(100 * i + j // 5, j % 5, f"hyp {i} {j // 5} {j % 5 % 3}",
                       ((i * 37 + j * 11) % 100) / 100 if scored else float("nan"),
                       is_reference=int(reference), scored=int(scored)))
    grown.write_shard(str(directory), i, len(sizes), rows)
  grown.write_manifest(str(directory), len(sizes))


def _stream(task, count, shuffle, seed, shard_info=None):
  # Not seqio's in-memory cache of a small source (every epoch the first one's order):
  # a grown dataset over 10,000 rows, the demo's, is read anew each epoch.
  # A small shuffle buffer (seqio's is 1,000; the same for both sources) fills from few
  # epochs of a host's share.
  ds = task.get_dataset(None, split="train", shuffle=shuffle, seed=seed, num_epochs=None,
                        shard_info=shard_info, trim_output_features=False,
                        try_in_mem_cache=False, shuffle_buffer_size=64)
  return list(ds.take(count).as_numpy_iterator())


@pytest.mark.parametrize("references_scored", [True, False])
def test_kept_rows_stream_from_memory_as_from_the_shards(tmp_path, references_scored):
  """`KeptRowsSource` gives the rows seqio's shard reader and the filters give, in the same
  order, over several epochs (each with its own file shuffle), with and without shuffling,
  on one of two hosts (files sharded) and one of 32 (more hosts than files: rows
  sharded), for every selection a training step makes (with unscored references: one),
  and one epoch of deduplicated rows. 20 shards of uneven sizes (one empty, some short of a block) are more
  than the interleave's 16 at a time."""
  sizes = [37, 16, 3, 0, 50, 21, 16, 33, 5, 40, 17, 9, 64, 2, 31, 15, 18, 1, 44, 26]
  _uneven_shards(tmp_path, sizes, references_scored)
  rng = np.random.default_rng(0)
  keys = [grown_tasks.row_key(100 * i + j // 5, j % 5)
          for i, size in enumerate(sizes) for j in range(size) if rng.random() < 0.2]
  selections = [dict(threshold=0.5), dict(threshold=0.9, include_samples=False),
                dict(threshold=0.3, include_references=False), dict(row_keys=keys)]
  columns = grown.read_columns(grown.shard_paths(str(tmp_path), grown.load_manifest(
      str(tmp_path))))
  for number, selection in enumerate(selections if references_scored else selections[:1]):
    epoch = int(grown_tasks.kept_mask(columns, **selection).sum())
    assert epoch > 0
    streams = {}
    for in_memory in (False, True):
      task = grown_tasks.register_grown_task(
          f"grown_memory_{number}_{in_memory}", str(tmp_path), VOCAB, in_memory=in_memory,
          **selection)
      assert isinstance(task.source, grown_tasks.KeptRowsSource) == in_memory
      streams[in_memory] = [
          _stream(task, 3 * epoch + 7, shuffle=True, seed=0),
          _stream(task, 2 * epoch, shuffle=False, seed=None),
          _stream(task, 3 * epoch, shuffle=True, seed=3,
                  shard_info=seqio.ShardInfo(index=1, num_shards=2)),
          _stream(task, max(epoch // 8, 6), shuffle=True, seed=5,
                  shard_info=seqio.ShardInfo(index=3, num_shards=32))]
    for read, kept in zip(*streams.values()):
      assert len(read) == len(kept)
      for a, b in zip(read, kept):
        assert a.keys() == b.keys()
        for key in a:
          np.testing.assert_array_equal(a[key], b[key], err_msg=f"{selection} {key}")
    order = [[(e["source_id"], e["sample_id"]) for e in s[:2 * epoch]]
             for s in streams[True][:2]]
    assert order[0] != order[1]  # shuffled
  # Deduplication keeps the first of a source's identical samples in the order read (its
  # table outlives an epoch: one epoch).
  unique = [[(e["source_id"], e["sample_id"]) for e in grown_tasks.register_grown_task(
      f"grown_memory_unique_{in_memory}", str(tmp_path), VOCAB, in_memory=in_memory,
      threshold=0.2, deduplicate=True).get_dataset(
          None, split="train", shuffle=True, seed=1, trim_output_features=False,
          try_in_mem_cache=False).as_numpy_iterator()] for in_memory in (False, True)]
  assert unique[0] == unique[1]
  assert 0 < len(unique[0]) < grown_tasks.kept_mask(columns, threshold=0.2).sum()
  if references_scored:
    # A host whose shards keep nothing would filter forever on the shards: an error here.
    nothing = grown_tasks.register_grown_task(
        "grown_memory_none", str(tmp_path), VOCAB, in_memory=True,
        row_keys=[grown_tasks.row_key(0, 0)])  # a row of shard 0
    with pytest.raises(ValueError, match="host 1 of 2 reads shards.*none of the 1 rows"):
      nothing.get_dataset(None, split="train", shard_info=seqio.ShardInfo(index=1, num_shards=2))
