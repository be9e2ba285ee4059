"""The host allocator's tuning (`rest_jax.host_memory`): when it applies, and what it changes."""

import json
import os
import subprocess
import sys

import pytest

from rest_jax import host_memory, main

# A small network's training step (matmuls, GELU, softmax, their gradients), as XLA runs
# a policy's on the CPU, 20 times after a first, compiling call: the process's page faults
# over those steps. `tune()` runs first unless told not to.
_PROBE = """
import json, resource, sys
from rest_jax import host_memory
tuned = host_memory.tune() if sys.argv[1] == "tune" else False
import jax, jax.numpy as jnp

def loss(w, x):
  h = x
  for a, b in w:
    h = h + jax.nn.gelu(h @ a) @ b
  return jnp.mean(jax.nn.log_softmax(h @ w[0][0]) ** 2)

@jax.jit
def step(w, x):
  return jax.tree_util.tree_map(lambda p, g: p - 1e-3 * g, w, jax.grad(loss)(w, x))

k = jax.random.PRNGKey(0)
w = [(jax.random.normal(k, (128, 512)) * 0.05, jax.random.normal(k, (512, 128)) * 0.05)
     for _ in range(4)]
x = jax.random.normal(k, (1536, 128))
w = jax.block_until_ready(step(w, x))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
  w = step(w, x)
w = jax.block_until_ready(w)
print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                  - before, "value": float(w[0][0].sum())}))
"""


def _probe(mode):
  env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in (
      "JAX_PLATFORMS", "XLA_FLAGS", host_memory.ENV)}
  env["JAX_PLATFORMS"] = "cpu"
  out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, check=True,
                       capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_reuses_pages_and_changes_no_number():
  default, tuned = _probe("default"), _probe("tune")
  assert tuned["tuned"] and not default["tuned"]
  # glibc's defaults map each step's buffers afresh: thousands of page faults a step
  # (this host: 14,600 a step, against 2,100 tuned).
  assert default["faults"] > 20 * 5000, default
  assert tuned["faults"] < default["faults"] / 4, (default, tuned)
  assert tuned["value"] == default["value"]  # bit for bit


@pytest.mark.parametrize("environ,skipped", [
    ({}, False),
    ({"JAX_PLATFORMS": "cpu"}, False),
    ({host_memory.ENV: "default"}, True),
    ({"MALLOC_ARENA_MAX": "4"}, True),  # the user's own setting wins
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, True),
    ({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, False),
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, True),  # the suite's mesh
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}, False),
    ({"JAX_PLATFORMS": "cuda"}, True),
    ({"JAX_PLATFORMS": "tpu,cpu"}, True),
])
def test_when_it_applies(environ, skipped, monkeypatch):
  monkeypatch.setattr(host_memory, "ACCELERATOR_FILES", ())
  assert (host_memory.reason_to_skip(environ) is not None) == skipped


def test_an_attached_accelerator_keeps_the_defaults(tmp_path, monkeypatch):
  (tmp_path / "nvidia0").write_text("")
  monkeypatch.setattr(host_memory, "ACCELERATOR_FILES", (str(tmp_path / "nvidia[0-9]*"),))
  assert host_memory.reason_to_skip({}) == "an accelerator is attached"
  assert host_memory.reason_to_skip({"JAX_PLATFORMS": "cpu"}) is None  # CPU asked for
  assert not host_memory.tune({})


def test_the_command_line_tunes_first(monkeypatch):
  """`run` tunes before anything else, TensorFlow's and JAX's import (`_quiet_startup`)
  included. (JAX is imported in this process already: the order is what is checked.)"""
  calls = []

  def tune():
    calls.append(True)
    raise SystemExit(7)

  monkeypatch.setattr(host_memory, "tune", tune)
  monkeypatch.setattr(main, "_quiet_startup", lambda: calls.append("imported"))
  monkeypatch.setattr(sys, "argv", ["rest_jax", "rest"])
  with pytest.raises(SystemExit):
    main.run()
  assert calls == [True]


def test_plan_simulates_its_mesh_before_the_allocator_is_set(monkeypatch):
  """`plan --mesh=4x2` simulates 8 CPU devices: the setting must see them and stay off."""
  seen = []
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setattr(host_memory, "tune", lambda: seen.append(
      host_memory.reason_to_skip()) or sys.exit(7))
  monkeypatch.setattr(sys, "argv", ["rest_jax", "plan", "--mesh=4x2"])
  with pytest.raises(SystemExit):
    main.run()
  assert seen == ["a simulated mesh of 8 CPU devices"]


def test_importing_the_command_line_starts_no_thread():
  """Arenas that exist stay (and a thread that ends leaves its arena to the next): `main`
  must import nothing that runs a thread before `run` tunes. (This sees the threads alive
  after the import, not one that came and went.)"""
  out = subprocess.run([sys.executable, "-c", "import os, rest_jax.main;"
                        " print(len(os.listdir('/proc/self/task')))"],
                       check=True, capture_output=True, text=True).stdout
  assert out.split() == ["1"]
