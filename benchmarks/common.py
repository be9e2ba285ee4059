"""Shared by the benchmarks: this run's measured peaks, FLOP counts, the table/JSON output.

No seqio or TensorFlow here: `benchmarks.accelerator` runs where there is none.
"""

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


def matmul_peak_gflops(n: int | None = None, repeats: int = 5, dtype=jnp.float32) -> float:
  """The GFLOP/s of a jitted n x n matmul in `dtype` (default precision): this run's peak.

  n defaults to 2048 on CPU and 8192 on an accelerator, where 2048 does not fill the chip.
  """
  n = n or (2048 if jax.default_backend() == "cpu" else 8192)
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x: x @ x)
  return 2 * n**3 / median_seconds(lambda: f(a), repeats) / 1e9


def memory_bandwidth_gbs(megabytes: int | None = None, repeats: int = 5) -> float:
  """GB/s of a jitted elementwise pass over `megabytes` (read once, written once).

  Defaults to 256 MB on CPU and 4 GB on an accelerator (well beyond any cache).
  """
  megabytes = megabytes or (256 if jax.default_backend() == "cpu" else 4096)
  x = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
  f = jax.jit(lambda v: v * 1.0001 + 1.0)
  return 2 * x.nbytes / median_seconds(lambda: f(x), repeats) / 1e9


def report(rows: List[Dict], json_path: str | None) -> None:
  keys = list(dict.fromkeys(k for row in rows for k in row))  # every row's columns
  print(" | ".join(keys))
  for row in rows:
    print(" | ".join(f"{row[k]:.3g}" if isinstance(row.get(k), float) else str(row.get(k, ""))
                     for k in keys))
  if json_path:
    with open(json_path, "w") as f:
      json.dump(rows, f, indent=2)


def useful_gflops_per_step(cfg, batch, in_len, out_len) -> float:
  """Forward matmul FLOPs x 3 (forward + two backward matmuls)."""
  d, hk, m, v = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  enc = in_len * cfg.num_encoder_layers * (2 * (4 * d * hk + 3 * d * m) + 4 * in_len * hk)
  dec = out_len * (cfg.num_decoder_layers * (2 * (6 * d * hk + 3 * d * m) + 4 * out_len * hk
                                              + 4 * in_len * hk) + 2 * d * v)
  cross_kv = in_len * cfg.num_decoder_layers * 4 * d * hk
  return 3 * batch * (enc + dec + cross_kv) / 1e9


def useful_gflops(cfg, batch, samples, in_len, out_len) -> float:
  """Matmul FLOPs a decoder must do: projections, MLP, logits, causal attention.

  The encoder and the cross-attention keys/values are counted once per input;
  self-attention only over the positions already decoded.
  """
  d, h, k, m, v = cfg.emb_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  hk = h * k
  enc_layer = 2 * (4 * d * hk + 3 * d * m) + 2 * 2 * in_len * hk   # per token
  encoder = batch * in_len * (cfg.num_encoder_layers * enc_layer)
  cross_kv = batch * in_len * cfg.num_decoder_layers * 2 * 2 * d * hk
  per_token = cfg.num_decoder_layers * 2 * (4 * d * hk + 2 * d * hk + 3 * d * m) + 2 * d * v
  attention = sum(cfg.num_decoder_layers * 2 * 2 * hk * ((t + 1) + in_len) for t in range(out_len))
  decoder = batch * samples * (out_len * per_token + attention)
  return (encoder + cross_kv + decoder) / 1e9
