"""Sampling throughput on "small-bench", as a fraction of this machine's matmul peak.

small-bench: d_model 256, 4+4 layers, 4 heads of 64, gated-GELU MLP 1024, vocabulary
8192, inputs of 64 tokens, 32 inputs x 4 samples, 64 decoded tokens, f32, random
weights, no early end (every sample runs its 64 steps), timed after compilation.

Grow at the paper's N: the same sampled rows as 200 sources x 4 samples, 32 x 25 (the
paper's WMT) and 8 x 100 (its IWSLT), each at T = 0.8 with per-token log-probabilities,
and their samples/s as a ratio to N = 4's. The encoder and the cross-attention keys and
values run once per source, so that ratio must not fall as N grows.

  python -m benchmarks.decode [--json rows.json] [--grow_rows 800]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from benchmarks import common
from rest_jax import decoding
from rest_jax.models import model as models, network

SMALL_BENCH = dict(vocab_size=8192, emb_dim=256, num_heads=4, head_dim=64, mlp_dim=1024,
                   num_encoder_layers=4, num_decoder_layers=4, dropout_rate=0.0)


def run(batch=32, samples=4, in_len=64, out_len=64, topk=0, temperature=1.0,
        token_log_probs=False):
  cfg = network.T5Config(**SMALL_BENCH)
  vocab = seqio.PassThroughVocabulary(cfg.vocab_size)
  model = models.EncoderDecoderModel(network.Transformer(cfg), vocab, vocab,
                                     decode_fn=decoding.temperature_sample)
  shapes = {"encoder_input_tokens": (batch, in_len), "decoder_input_tokens": (batch, out_len),
            "decoder_target_tokens": (batch, out_len)}
  params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
  batch_in = {"encoder_input_tokens": jax.random.randint(jax.random.PRNGKey(1), (batch, in_len),
                                                         2, cfg.vocab_size),
              "decoder_input_tokens": jnp.zeros((batch, out_len), jnp.int32)}
  sample = jax.jit(lambda p, b, r: model.predict_batch_with_aux(
      p, b, rng=r, num_decodes=samples, return_all_decodes=True,
      decoder_params={"eos_id": None, "temperature": temperature, "topk": topk,
                      "return_token_log_probs": token_log_probs}))
  seconds = common.median_seconds(lambda: sample(params, batch_in, jax.random.PRNGKey(2)))
  decodes = sample(params, batch_in, jax.random.PRNGKey(2))[0]
  assert np.asarray(decodes).shape == (batch, samples, out_len)
  gflops = common.useful_gflops(cfg, batch, samples, in_len, out_len)
  return batch * samples / seconds, gflops / seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--json", default=None)
  parser.add_argument("--grow_rows", type=int, default=800,
                      help="sampled rows of the N = 4 / 25 / 100 rows (a multiple of 100)")
  args = parser.parse_args()
  peak = common.matmul_peak_gflops()
  rows = []
  for name, kw in [("small-bench", {}), ("small-bench top-k 40", {"topk": 40}),
                   # What Grow runs: the paper's T = 0.8, per-token log-probabilities kept.
                   ("small-bench Grow (T 0.8, per-token log-probs)",
                    {"temperature": 0.8, "token_log_probs": True})]:
    samples_per_s, gflops = run(**kw)
    rows.append({"config": name, "samples_per_s": samples_per_s, "useful_gflops": gflops,
                 "peak_gflops": peak, "peak_fraction": gflops / peak})
  base = None
  for n in (4, 25, 100):
    samples_per_s, gflops = run(batch=args.grow_rows // n, samples=n, temperature=0.8,
                                token_log_probs=True)
    base = base or samples_per_s
    rows.append({"config": f"Grow N = {n} ({args.grow_rows // n} sources x {n})",
                 "samples_per_s": samples_per_s, "useful_gflops": gflops,
                 "peak_gflops": peak, "peak_fraction": gflops / peak,
                 "ratio_to_n4": samples_per_s / base})
  common.report(rows, args.json)


if __name__ == "__main__":
  main()
