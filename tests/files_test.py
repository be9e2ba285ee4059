"""MODEL_DIR anywhere t5x can write: the path layer (rest_jax/files.py) on an object store.

A real bucket cannot be reached here, so a local directory registered as an object
store stands in: everything rest_jax writes there takes the object-store path (each
file written once under its final name, never renamed; a grown dataset committed by
its manifest, written last). `gs://` paths are built and joined without a network.
"""

import json
import os

import pytest

from rest_jax import files, layout, run_state, selection
from rest_jax.data import grown
from tests.grown_test import _rows


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  root = tmp_path / "bucket"
  root.mkdir()
  monkeypatch.setattr(files, "_EXTRA_OBJECT_STORES", [str(root)])
  return root


def _all_names(root):
  return [n for _, _, names in os.walk(root) for n in names]


def test_gs_paths_are_object_store_paths():
  assert files.is_object_store("gs://bucket/run") and not files.is_object_store("/tmp/run")
  assert files.join("gs://bucket/run", "grow_1", grown.MANIFEST) == (
      "gs://bucket/run/grow_1/manifest.json")
  assert files.absolute("gs://bucket/run") == "gs://bucket/run"


def test_a_grown_dataset_is_written_once_and_committed_by_its_manifest(bucket):
  directory = str(bucket / "run" / "grow_1")
  renamed = []
  original = os.replace
  try:
    os.replace = lambda *a: renamed.append(a) or original(*a)  # noqa: E731
    for shard in range(2):
      grown.write_shard(directory, shard, 2, _rows(shard))
    assert grown.completed_shards(directory, 2) == [0, 1]
    with pytest.raises(grown.GrownDatasetError, match="no manifest.json"):
      grown.load_manifest(directory)  # shards without a manifest are not a dataset yet
    manifest = grown.write_manifest(directory, 2, {"seed": 0})
  finally:
    os.replace = original
  # Nothing renamed in the bucket (an object store has no atomic rename); only TensorFlow's
  # local copies of the shards (the stand-in is a store TensorFlow does not reach) were.
  assert not [r for r in renamed if str(bucket) in os.fspath(r[1])], renamed
  assert not any(n.startswith(files.TMP_PREFIX) for n in _all_names(bucket))
  assert grown.load_manifest(directory)["num_rows"] == manifest["num_rows"] == 30
  assert grown.remove_stale_temporaries(directory, [0, 1], 2, manifest=True) == []


def test_state_selection_and_report_files_on_an_object_store(bucket):
  model_dir = str(bucket / "run")
  files.makedirs(model_dir)
  progress = run_state.RunState.load(model_dir)
  progress.steps["bc"] = {"seconds": 1.0}
  progress.save()
  assert json.loads(files.read_text(files.join(model_dir, layout.STATE_FILE)))["steps"] == {
      "bc": {"seconds": 1.0}}
  sel = selection.Selection(files.join(model_dir, "bc"), selection.SelectionConfig(eval_period=1))
  sel.history = [(1, 0.5)]
  sel._write()  # pylint: disable=protected-access
  assert selection.Selection(files.join(model_dir, "bc")).history == [(1, 0.5)]
  files.atomic_write_bytes(files.join(model_dir, "plot.png"), b"\x89PNG")
  assert files.size(files.join(model_dir, "plot.png")) == 4
  assert not any(n.startswith(files.TMP_PREFIX) for n in _all_names(bucket))


def test_posix_writes_leave_no_temporary_after_a_failure(tmp_path):
  target = tmp_path / "state.json"
  with pytest.raises(RuntimeError):
    with files.committed(target) as tmp:
      with open(tmp, "w") as f:
        f.write("partial")
      raise RuntimeError("killed mid-write")
  assert not target.exists() and os.listdir(tmp_path) == []


def test_tensorflow_reaches_what_epath_sends_it(monkeypatch):
  """TF's file systems: local paths, and gs:// while etils.epath uses TensorFlow for it."""
  monkeypatch.delenv("EPATH_USE_TF", raising=False)
  assert files.tensorflow_reaches("/tmp/run") and files.tensorflow_reaches("gs://b/run")
  assert not files.tensorflow_reaches("s3://b/run")  # TF 2.x has no s3 file system
  monkeypatch.setenv("EPATH_USE_TF", "false")  # epath: gcsfs
  assert not files.tensorflow_reaches("gs://b/run") and files.tensorflow_reaches("/tmp/run")
