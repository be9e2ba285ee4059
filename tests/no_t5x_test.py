"""The built-in model runs the whole loop without importing t5x.

t5x is an optional dependency: users install it themselves, and a run of the built-in
model must not need it (nor pay its import time). The real-t5x path is tests/t5x_test.py.
"""

import subprocess
import sys

import pytest

from tests import multihost_test

# Runs rest_jax.main as `python -m` would, then says whether t5x was ever imported.
PROBE = ("import runpy, sys; sys.argv = ['rest_jax.main'] + sys.argv[1:]\n"
         "try:\n  runpy.run_module('rest_jax.main', run_name='__main__')\nfinally:\n"
         "  print('T5X_IMPORTED', 't5x' in sys.modules)")


@pytest.mark.slow
def test_a_built_in_model_run_never_imports_t5x(tmp_path):
  args = ["rest", *multihost_test.SMALL_REST, f"--gin.MODEL_DIR='{tmp_path / 'run'}'"]
  env = multihost_test._env(  # pylint: disable=protected-access
      XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=multihost_test.ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "T5X_IMPORTED False" in proc.stdout
  assert (tmp_path / "run" / "report.md").exists()
