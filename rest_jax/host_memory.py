"""How the host's C allocator serves XLA's CPU buffers (glibc only; a command's first act).

When XLA runs on the CPU, every execution of a compiled step allocates its output and
temporary buffers and frees them at the end. With glibc's defaults, XLA's worker threads
allocate in arenas of their own, whose heaps are mmapped and shrunk when memory is freed,
so the next step touches new pages again. In 400 of the demo's BC steps on a 2-core host
(`python -m rest_jax.main train --gin_file=configs/demo_bc.gin`): 15.4 million page faults
and 41 s of system time beside 129 s of user time. Served from one arena whose heap is
never trimmed, the same pages are reused: 0.39 million page faults and 8.5 s of system
time, and the loop trained 4,561 target tokens/s against 3,661 and 3,844 in two runs
without (docs/measurements.md).

`tune()` sets that (`mallopt`): one arena, no mmapped chunks, no trimming. The memory a
process holds then stays at its peak, which is what a training job does anyway. It changes
only where buffers live, not what is computed (the demo's parameters after 400 BC steps are
the same bit for bit). It must run before other threads allocate: arenas that exist stay,
and a thread that ends leaves its arena to the next one. So `python -m rest_jax.main`
calls it before it imports TensorFlow or JAX.

It does nothing off glibc, where an accelerator does the work (its buffers are on the
device; many input-pipeline threads would share one arena's lock), where the user set the
allocator (any `MALLOC_*` variable, or `glibc.malloc` tunables in `GLIBC_TUNABLES`), on a
simulated mesh of several CPU devices (`--xla_force_host_platform_device_count`: their
computations run at once, and the test suite, which simulates 8, took 26 min 43 s tuned
against 23 min 1 s before; not isolated from the machine's drift), or with
REST_JAX_HOST_MALLOC=default.
"""

import ctypes
import glob
import os
import re
from typing import Mapping, Optional

# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
ENV = "REST_JAX_HOST_MALLOC"
# Device files of the accelerators JAX would run on: NVIDIA, AMD (ROCm), TPU VMs.
ACCELERATOR_FILES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")


def reason_to_skip(environ: Mapping[str, str] = os.environ) -> Optional[str]:
  """Why `tune` would leave the allocator as it is.

  Args:
    environ: the process's environment.

  Returns:
    The reason, or None when `tune` sets the allocator.
  """
  if environ.get(ENV, "tuned") == "default":
    return f"{ENV}=default"
  if any(key.startswith("MALLOC_") for key in environ) or (
      "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")):
    return "the allocator is set by the environment"
  devices = re.search(r"--xla_force_host_platform_device_count=(\d+)", environ.get("XLA_FLAGS", ""))
  if devices and int(devices.group(1)) > 1:
    return f"a simulated mesh of {devices.group(1)} CPU devices"
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms and platforms.split(",")[0].strip() != "cpu":
    return f"JAX_PLATFORMS={platforms}"
  if not platforms and any(glob.glob(p) for p in ACCELERATOR_FILES):
    return "an accelerator is attached"
  return None


def tune(environ: Mapping[str, str] = os.environ) -> bool:
  """Serves the process's allocations from one never-trimmed arena without mmapped chunks.

  Args:
    environ: the process's environment (`reason_to_skip`).

  Returns:
    Whether every setting took effect (False where skipped or not on glibc).
  """
  if reason_to_skip(environ) is not None:
    return False
  try:
    libc = ctypes.CDLL(None)  # the C library the process already runs on
  except (OSError, TypeError):
    return False
  if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
    return False  # musl and others: their own allocators, their own settings
  mallopt = libc.mallopt
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  # A trim threshold of -1 turns trimming off (mallopt(3)).
  done = [mallopt(param, value) for param, value in (
      (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))]
  return all(result == 1 for result in done)
