"""Training throughput on "small-bench" (batch 64 x 64+64 tokens), vs the matmul peak.

  python -m benchmarks.train [--json rows.json]
"""

import argparse

import jax
import numpy as np
import seqio

from benchmarks import common
from benchmarks.decode import SMALL_BENCH
from rest_jax import partitioning, trainer as trainer_lib
from rest_jax.models import model as models, network


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  peak = common.matmul_peak_gflops()
  batch, length = 64, 64
  cfg = network.T5Config(**SMALL_BENCH)
  vocab = seqio.PassThroughVocabulary(cfg.vocab_size)
  model = models.EncoderDecoderModel(network.Transformer(cfg), vocab, vocab)
  partitioner = partitioning.Partitioner(devices=jax.devices()[:1])
  trainer = trainer_lib.Trainer(model, partitioner, trainer_lib.batch_input_shapes(
      batch, {"inputs": length, "targets": length}))
  rng = np.random.RandomState(0)
  tokens = rng.randint(2, cfg.vocab_size, (batch, length)).astype(np.int32)
  host_batch = {"encoder_input_tokens": tokens, "decoder_target_tokens": tokens,
                "decoder_input_tokens": np.roll(tokens, 1, axis=1),
                "decoder_loss_weights": np.ones_like(tokens)}
  device_batch = partitioner.shard_batch(host_batch)
  state = [trainer.init_state(jax.random.PRNGKey(0))]

  def step():
    state[0], metrics = trainer.train_step(state[0], device_batch, jax.random.PRNGKey(1))
    return metrics

  seconds = common.median_seconds(step, repeats=7)
  gflops = common.useful_gflops_per_step(cfg, batch, length, length) / seconds
  rows = [{"config": "small-bench train b64", "tokens_per_s": batch * length / seconds,
           "useful_gflops": gflops, "peak_gflops": peak, "peak_fraction": gflops / peak}]
  common.report(rows, args.json)


if __name__ == "__main__":
  main()
