"""A model from another library (standing in for t5x) runs the whole loop, named by gin.

The gin file is shaped like the README's t5x snippet: the model gin file of the other
library first, then rest_jax's run file. rest_jax must use that library's decode
functions with one key per batch, and must not import t5x itself.
"""

import os
import subprocess
import sys

import pytest

from tests import multihost_test

GIN = """
from __gin__ import dynamic_registration
from tests.fake_t5x import decoding as fake_decoding
from tests.fake_t5x import models as fake_models

include 'configs/demo.gin'

MODEL = @fake_models.EncoderDecoderModel()
fake_models.EncoderDecoderModel:
  module = %ARCHITECTURE
  input_vocabulary = %VOCABULARY
  output_vocabulary = %VOCABULARY
  optimizer_def = %OPTIMIZER
  decode_fn = @fake_decoding.beam_search
"""


@pytest.mark.slow
def test_rest_runs_on_a_foreign_t5x_api_model(tmp_path):
  (tmp_path / "fake_t5x_demo.gin").write_text(GIN)
  log = tmp_path / "decode_calls.txt"
  args = ["rest", f"--gin_file={tmp_path / 'fake_t5x_demo.gin'}",
          *[a for a in multihost_test.SMALL_REST if not a.startswith("--gin_file")],
          f"--gin.MODEL_DIR='{tmp_path / 'run'}'"]
  env = multihost_test._env(FAKE_T5X_LOG=str(log),  # pylint: disable=protected-access
                            XLA_FLAGS="--xla_force_host_platform_device_count=2")
  probe = ("import runpy, sys; sys.argv = ['rest_jax.main'] + sys.argv[1:];"
           "\ntry:\n  runpy.run_module('rest_jax.main', run_name='__main__')\nfinally:\n"
           "  print('T5X_IMPORTED', 't5x' in sys.modules)")
  proc = subprocess.run([sys.executable, "-c", probe, *args], cwd=multihost_test.ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "T5X_IMPORTED False" in proc.stdout
  calls = log.read_text().split()
  assert "temperature_sample" in calls and "beam_search" in calls  # Grow / evaluation
  assert (tmp_path / "run" / "report.md").exists()
  rows = multihost_test.grown_rows(tmp_path / "run" / "grow_1")
  assert len(rows) == 48 * 3
  assert os.path.isdir(tmp_path / "run" / "improve_1_2" / "checkpoints")
