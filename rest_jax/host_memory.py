"""How the host's C allocator serves XLA's CPU buffers (glibc only; a command's first act).

When XLA runs on the CPU, every execution of a compiled step allocates its output and
temporary buffers and frees them at the end. With glibc's defaults, an allocation that
large is served by a fresh `mmap` (above the mmap threshold, or in a thread's own arena,
whose heaps are mmapped) and given back to the kernel when freed, so the next step
touches new pages again. In 400 of the demo's BC steps on a 2-core host
(`python -m rest_jax.main train --gin_file=configs/demo_bc.gin`): 15.4 million page faults
and 41 s of system time beside 129 s of user time. Served from one arena's heap that is
never trimmed, the same pages are reused: 0.39 million page faults and 8.5 s, and the loop
trained 4,561 target tokens/s against 3,661 and 3,844 in two runs without (docs/measurements.md).

`tune()` sets that (`mallopt`): one arena, no mmapped chunks, no trimming. The memory a
process holds then stays at its peak, which is what a training job does anyway. It
changes no number a run computes: only where buffers live. It must run before any other
thread allocates (glibc fixes the arena limit when the second thread asks for an arena),
so `python -m rest_jax.main` calls it before importing TensorFlow or JAX.

It does nothing off Linux's glibc, where an accelerator does the work (its buffers are
on the device; many input-pipeline threads would share one arena's lock), when the user
set any `MALLOC_*` variable (theirs win), or with REST_JAX_HOST_MALLOC=default.
"""

import ctypes
import ctypes.util
import glob
import os
from typing import Mapping, Optional

# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
ENV = "REST_JAX_HOST_MALLOC"
# Device files of the accelerators JAX would run on (NVIDIA, TPU VMs' accel and vfio).
ACCELERATOR_FILES = ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")


def reason_to_skip(environ: Mapping[str, str] = os.environ) -> Optional[str]:
  """Why `tune` leaves the allocator as it is (None: it tunes it)."""
  if environ.get(ENV, "tuned") == "default":
    return f"{ENV}=default"
  if any(key.startswith("MALLOC_") for key in environ):
    return "a MALLOC_* variable is set"
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms and platforms.split(",")[0].strip() != "cpu":
    return f"JAX_PLATFORMS={platforms}"
  if not platforms and any(glob.glob(p) for p in ACCELERATOR_FILES):
    return "an accelerator is attached"
  return None


def tune(environ: Mapping[str, str] = os.environ) -> bool:
  """One never-trimmed arena, no mmapped chunks (see the module doc). Returns whether set."""
  if reason_to_skip(environ) is not None:
    return False
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: their own allocators
      return False
    mallopt = libc.mallopt
  except (OSError, AttributeError, TypeError):
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  # The trim threshold is an int: its largest value is as good as never.
  return all(mallopt(param, value) == 1 for param, value in (
      (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1)))
