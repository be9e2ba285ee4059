"""`--multihost`: two local processes form one mesh through jax.distributed (gloo on CPU)."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

WORKER = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, numpy as np
    from rest_jax import partitioning
    partitioning.initialize_multihost(sys.argv[1], 2, int(sys.argv[2]))
    p = partitioning.Partitioner()
    assert p.mesh.devices.size == 4 and jax.process_count() == 2
    local = np.full((p.local_batch_size(8), 3), jax.process_index() + 1, np.float32)
    total = jax.jit(lambda x: x.sum(), out_shardings=p.replicated)(p.shard_batch(local))
    print("TOTAL", float(total))
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_share_one_mesh(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(WORKER)
  address = f"127.0.0.1:{_free_port()}"
  env = {**os.environ, "PYTHONPATH": os.getcwd(), "TF_CPP_MIN_LOG_LEVEL": "3"}
  procs = [subprocess.Popen([sys.executable, str(script), address, str(i)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=240) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-2000:]
    # 4 rows of 1s and 4 rows of 2s, 3 columns each: (4 + 8) * 3.
    assert "TOTAL 36.0" in out
