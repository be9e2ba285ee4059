"""MODEL_DIR on `gs://`, against a GCS JSON API server on the loopback.

`gcp-storage-emulator` serves the GCS API; the libraries rest_jax writes through are
pointed at it the way each one documents: etils.epath (state, selection, report,
manifests; orbax's metadata) through gcsfs (`EPATH_USE_TF=false`,
`STORAGE_EMULATOR_HOST`), orbax's arrays through tensorstore
(`TENSORSTORE_GCS_HTTP_URL`). The emulator keeps no object generations and ignores
GCS's preconditions, which the OCDBT commits of orbax's default format need, so the
checkpoints are written one TensorStore array per leaf
(`checkpoints.Checkpointer.use_ocdbt = False`). TensorFlow's own GCS client has no endpoint setting
(TF 2.21), so the grown shards it writes and reads take the path any TF-less store
takes (rest_jax/files.py: written locally and uploaded whole, read from a local
copy), and TensorBoard's files are not written (the metrics go to the log).

A small `rest` runs uninterrupted into a local folder, its fault points traced; the
same command with `MODEL_DIR` in the bucket is then SIGKILLed at a grown shard's
upload and at a moment drawn from that trace, re-run to the end, and must end as the
uninterrupted run did, bit for bit (where a run writes does not change what it
computes). Its grown dataset is then read back through its seqio task.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import seqio

from rest_jax import files, layout
from rest_jax.data import grown, grown_tasks
from tests import multihost_test
from tests.faults import preemption_test

pytest.importorskip("gcp_storage_emulator", reason="pip install gcp-storage-emulator gcsfs")
pytest.importorskip("gcsfs", reason="pip install gcsfs")

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("REST_JAX_FAULT_SEED", "20261202"))
BUCKET = "rest-jax-test"
# The emulator rewrites the metadata of every object it holds at each write, so a
# write costs more the more the bucket holds: the run has one layer each side, saves
# checkpoints only at the end of each step and has one Improve step; every writer runs.
GCS_RUN = ["--gin.checkpoints.Checkpointer.use_ocdbt=False",
           "--gin.network.T5Config.num_encoder_layers=1",
           "--gin.network.T5Config.num_decoder_layers=1",
           "--gin.rest.rest.checkpoint_period=1000", "--gin.THRESHOLDS=[0.0]"]
TRAINED = ("bc", "improve_1_1")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
  """A GCS API server on a free loopback port, with the bucket; yields the client env."""
  port = multihost_test._free_port()  # pylint: disable=protected-access
  log = tmp_path_factory.mktemp("gcs") / "emulator.log"
  with open(log, "w") as out:
    server = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
         f"--port={port}", "--in-memory", f"--default-bucket={BUCKET}", "--quiet"],
        stdout=out, stderr=subprocess.STDOUT)
  url = f"http://127.0.0.1:{port}"
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "EPATH_USE_TF": "false", "GOOGLE_CLOUD_PROJECT": "rest-jax-test",
         # It serves one request at a time, with Python's default backlog of 5.
         "TENSORSTORE_GCS_REQUEST_CONCURRENCY": "2"}
  saved = {k: os.environ.get(k) for k in env}
  try:
    deadline = time.time() + 60
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=1).read()
        break
      except OSError:
        assert server.poll() is None and time.time() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)
    os.environ.update(env)  # this process reads the bucket too (gcsfs, tensorstore)
    _epath_reads_environment()
    yield env
  finally:
    server.terminate()
    server.wait(timeout=30)
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    _epath_reads_environment()


def _epath_reads_environment():
  """etils.epath reads `EPATH_USE_TF` once per process (a cached check): read it again."""
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top

  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access


def test_rest_on_gs_resumes_after_sigkill_to_the_end_state_of_an_uninterrupted_run(
    emulator, tmp_path):
  run = preemption_test.Runner(tmp_path, GCS_RUN)
  reference = tmp_path / "reference"
  assert run(reference, trace=tmp_path / "trace") == 0
  trace = preemption_test._trace(tmp_path / "trace")  # pylint: disable=protected-access
  expected = preemption_test._end_state(reference, TRAINED)  # pylint: disable=protected-access

  run.env.update(emulator)
  killed = f"gs://{BUCKET}/run"
  rng = random.Random(SEED)
  kills = ["grown.shard_write:2", f"{rng.choice(trace)}:1"]
  fired = [fault for fault in kills if run(killed, fault=fault) == -signal.SIGKILL]
  assert fired, f"seed {SEED}: no kill fired: {run.log}"
  assert run(killed) == 0
  preemption_test._assert_same_end_state(  # pylint: disable=protected-access
      expected, killed, run.log, TRAINED)
  # Everything is in the bucket; nothing went to a local folder named after the URL.
  assert not os.path.exists(os.path.join(multihost_test.ROOT, "gs:"))
  names = files.listdir(killed)
  # (TensorBoard's files, which only TensorFlow writes, are the local run's alone.)
  assert sorted(names) == sorted(set(os.listdir(reference)) - {layout.SUMMARIES}), names
  assert "(selected)" in files.read_text(files.join(killed, "report.md"))

  # The grown dataset, read back through its seqio task.
  grow_dir = files.join(killed, "grow_1")
  manifest = grown.load_manifest(grow_dir, verify_counts=True)
  task = grown_tasks.register_grown_task(
      "gcs_test_grown", grow_dir, seqio.ByteVocabulary(), threshold=None)
  rows = list(task.get_dataset(None, split="train", shuffle=False,
                               try_in_mem_cache=False).as_numpy_iterator())
  assert len(rows) == manifest["num_rows"] > 0
  stored = multihost_test.grown_rows(grow_dir)
  for row in rows:
    key = (int(row["source_id"]), int(row["sample_id"]))
    assert tuple(row["targets"].tolist()) == stored[key][2], key
  print(f"\ngs:// (GCS API emulator): {len(fired)} kills fired at {fired}; resumed to the"
        f" uninterrupted end state; {len(rows)} grown rows read back through seqio;"
        f" {json.dumps(names)}")
