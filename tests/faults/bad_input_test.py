"""Bad input: each case stops with an error that names what is wrong, and nothing is lost.

(Also covered elsewhere: a corrupt or missing checkpoint in tests/train_test.py, a truncated
or miscounted shard in tests/grown_test.py, thresholds that keep nothing in
tests/steps_test.py, malformed data lines in tests/translation_tasks_test.py; and, on a
whole `rest` run, a corrupt checkpoint and a hand-truncated shard in
tests/faults/preemption_test.py.)
"""

import errno
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from rest_jax import checkpoints, commands, inference, main, partitioning
from rest_jax.data import grown, parallel_text, pipeline, tasks
from tests.conftest import grown_row, make_model


def _rows(source, n=4):
  return [grown_row(source, i, f"t{i}") for i in range(n)]


def test_empty_data_files_are_errors(tmp_path):
  src, tgt = tmp_path / "train.de", tmp_path / "train.en"
  src.write_bytes(b"")
  tgt.write_bytes(b"")
  with pytest.raises(parallel_text.ParallelTextError, match="train.de, .*train.en: no sentence"
                     r" pairs \(empty file\)"):
    list(parallel_text.read_parallel_text((str(src), str(tgt))))
  bad = tmp_path / "bad.tsv"
  bad.write_bytes(b"one column\n\tempty source\n")
  with pytest.raises(parallel_text.ParallelTextError, match=r"bad.tsv: no sentence pairs \(all 2"
                     " lines were bad\\)"):
    list(parallel_text.read_parallel_text(str(bad), skip_bad_lines=True,
                                          counter=parallel_text.SkipCounter()))


@pytest.mark.parametrize("binding,named", [
    ("NO_SUCH_CONFIGURABLE.x = 1", "NO_SUCH_CONFIGURABLE"),
    ("rest.rest.num_grow_stepz = 2", "num_grow_stepz"),
])
def test_unknown_gin_binding_is_named(binding, named):
  try:
    with pytest.raises(ValueError, match=named):
      main.parse_gin(["configs/demo.gin"], [binding, "MODEL_DIR = '/tmp/unused'"])
  finally:
    gin.clear_config()


def test_overlong_sources_are_cut_and_counted_or_rejected():
  lengths = {"inputs": 6, "targets": 5}  # demo sentences are ~12 pieces long
  batch = next(inference.source_batches(tasks.DEMO_TASK, "validation", lengths, 8))
  assert batch["overlength"] == 8
  eos = 1
  assert all(row[-1] == eos for row in batch["encoder_input_tokens"])  # cut, EOS kept
  assert all(len(t) == 5 and t[-1] == eos for t in batch["target_tokens"])
  with pytest.raises(ValueError, match=r"rest_demo_en_de/validation example 0 \(inputs\) has \d+"
                     " tokens, more than the feature length 6"):
    next(inference.source_batches(tasks.DEMO_TASK, "validation", lengths, 8, overlength="error"))


def test_overlong_training_examples_are_cut_and_counted_or_rejected():
  model = make_model()
  config = pipeline.DatasetConfig(tasks.DEMO_TASK, {"inputs": 6, "targets": 5}, "validation", 8,
                                  shuffle=False)
  before = pipeline.overlength_count(config)
  batch = next(pipeline.batch_iterator(config, model.FEATURE_CONVERTER_CLS(pack=False),
                                       num_epochs=1))
  assert batch["encoder_input_tokens"].shape == (8, 6)
  assert np.all(batch["encoder_input_tokens"][:, -1] == 1)  # EOS kept at the cut
  assert pipeline.overlength_count(config) - before >= 8
  strict = pipeline.DatasetConfig(tasks.DEMO_TASK, {"inputs": 6, "targets": 5}, "test", 8,
                                  shuffle=False, overlength="error")
  with pytest.raises(tf.errors.InvalidArgumentError, match="rest_demo_en_de/test: an example has"
                     " more inputs tokens than the feature length 6"):
    next(pipeline.batch_iterator(strict, model.FEATURE_CONVERTER_CLS(pack=False), num_epochs=1))


def test_disk_full_while_writing_a_shard_keeps_finished_shards(tmp_path, monkeypatch):
  directory = str(tmp_path / "grow")
  grown.write_shard(directory, 0, 2, _rows(0))
  before = sorted(os.listdir(directory))
  real = tf.io.TFRecordWriter

  class FullDisk(real):
    def write(self, record):
      raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(tf.io, "TFRecordWriter", FullDisk)
  with pytest.raises(grown.GrownDatasetError, match="could not write shard"
                     " shard-00001-of-00002.tfrecord .*No space left on device.*finished shards"
                     " are intact"):
    grown.write_shard(directory, 1, 2, _rows(1))
  monkeypatch.setattr(tf.io, "TFRecordWriter", real)
  assert sorted(os.listdir(directory)) == before  # no partial shard, no temporary file
  assert grown.completed_shards(directory, 2) == [0]
  grown.write_shard(directory, 1, 2, _rows(1))  # space again: the re-run completes it
  assert grown.write_manifest(directory, 2)["num_rows"] == 8


def test_a_step_without_its_policy_checkpoint_says_which(tmp_path):
  partitioner = partitioning.Partitioner(mesh_shape=(8, 1))
  with pytest.raises(checkpoints.CheckpointError, match=f"no checkpoint in {tmp_path}"):
    commands._policy(make_model(), str(tmp_path), {"inputs": 8, "targets": 8},  # pylint: disable=protected-access
                     partitioner, batch_size=8)


def test_a_malformed_fault_spec_is_rejected_at_start(monkeypatch):
  monkeypatch.setenv("REST_JAX_FAULT", "grow.sampel:1")
  with pytest.raises(ValueError, match="REST_JAX_FAULT='grow.sampel:1': expected SITE:COUNT"):
    main.main(["data", "show", "--task=rest_demo_en_de"])


@pytest.mark.parametrize("args, says", [
    (["rest", "--gin_file=configs/no_such.gin"], "gin file 'configs/no_such.gin' not found"),
    (["rest", "--gin_file=configs/demo.gin", "--gin.MODEL_DIR=/tmp/x"],
     "Unable to parse value. (a gin binding): MODEL_DIR = /tmp/x"),
    (["rest", "--gin_file=configs/demo.gin", "--gin.NO_SUCH.x=1", "--gin.MODEL_DIR='/tmp/x'"],
     "No configurable matching 'NO_SUCH'"),
    (["data", "show", "--task=no_such_task"], "unknown seqio task or mixture 'no_such_task'"),
])
def test_user_errors_are_one_line_without_a_traceback_or_start_up_noise(args, says):
  import subprocess
  import sys

  env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",
                                                           "REST_JAX_VERBOSE")}
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  proc = subprocess.run([sys.executable, "-m", "rest_jax.main", *args], cwd=root, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
  assert "absl::InitializeLog" not in proc.stderr and "cuda" not in proc.stderr, proc.stderr
  assert len(proc.stderr.strip().splitlines()) <= 4, proc.stderr
  if "--task=no_such_task" in args:  # --verbose is one switch for every error: checked once
    verbose = subprocess.run([sys.executable, "-m", "rest_jax.main", *args, "--verbose"],
                             cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
