"""Shared by the benchmarks: the machine's measured matmul peak and the table/JSON output."""

import json
import statistics
import time
from typing import Callable, Dict, List

import jax
import jax.numpy as jnp


def median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
  """Median wall time of `fn()` (blocking on its result), after one warm-up call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_peak_gflops(n: int | None = None, repeats: int = 5) -> float:
  """The f32 GFLOP/s of a jitted n x n matmul (default precision): this run's peak.

  n defaults to 2048 on CPU and 8192 on an accelerator, where 2048 does not fill the chip.
  """
  n = n or (2048 if jax.default_backend() == "cpu" else 8192)
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  return 2 * n**3 / median_seconds(lambda: f(a), repeats) / 1e9


def report(rows: List[Dict], json_path: str | None) -> None:
  keys = list(dict.fromkeys(k for row in rows for k in row))  # every row's columns
  print(" | ".join(keys))
  for row in rows:
    print(" | ".join(f"{row[k]:.3g}" if isinstance(row.get(k), float) else str(row.get(k, ""))
                     for k in keys))
  if json_path:
    with open(json_path, "w") as f:
      json.dump(rows, f, indent=2)
