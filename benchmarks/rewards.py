"""Reward scoring throughput, against the sampler measured in the same run.

For each reward: sentences/s on demo-corpus translations (about 15 words each), and
`scoring_share`, the share of a Grow step's time that scoring would take next to
small-bench sampling (samples/s measured here): sampling / (sampling + scoring).
MetricX runs at the architecture of its `large` checkpoints (mT5-large, random weights
written in the Hugging Face layout and loaded as a user's download is; speed does not
depend on the weights), on token ids of the length mT5's vocabulary gives these inputs
(about 1.3 pieces a word, measured on mT5); its `peak_fraction` is the matmul work the
inputs need (`metricx_gflops`, padding not counted) per second over this run's matmul peak,
timed after every length bucket has compiled.

  python -m benchmarks.rewards [--json rows.json] [--sentences 8000] [--metricx_size large]
      [--metricx_sentences 32] [--metricx_batch_size 8] [--metricx_dtypes float32,bfloat16]
"""

import argparse
import time

from benchmarks import common, decode
from rest_jax import rewards
from rest_jax.data import demo_corpus


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--json", default=None)
  parser.add_argument("--sentences", type=int, default=8000)
  parser.add_argument("--metricx_size", default="large", choices=sorted(METRICX_SIZES) + ["none"])
  parser.add_argument("--metricx_sentences", type=int, default=32)
  parser.add_argument("--metricx_batch_size", type=int, default=8)
  parser.add_argument("--rows", default="metrics,learned,embedding,metricx",
                      help="which rows to measure (comma-separated)")
  parser.add_argument("--metricx_dtypes", default="float32",
                      help="comma-separated, e.g. float32,bfloat16: one row each")
  args = parser.parse_args()
  pairs = demo_corpus.generate_splits(args.sentences, 0, 0, seed=7)["train"]
  sources = [en for en, _ in pairs]
  references = [de for _, de in pairs]
  hypotheses = references[1:] + references[:1]  # other sentences: realistic partial overlap
  samples_per_s, _ = decode.run()
  rows, which = [], args.rows.split(",")
  for name in ("bleu", "chrf", "chrf++", "ter") if "metrics" in which else ():
    for processes in (1, None):
      reward = rewards.MetricReward(name, processes=processes)
      reward(sources[:2000], hypotheses[:2000], references[:2000])  # warm up the workers
      start = time.perf_counter()
      reward(sources, hypotheses, references)
      per_s = len(pairs) / (time.perf_counter() - start)
      rows.append({"config": f"{name} x{reward.processes} proc", "sentences_per_s": per_s,
                   "sampling_samples_per_s": samples_per_s,
                   "scoring_share": samples_per_s / (samples_per_s + per_s)})
  if "learned" in which:
    rows.append(_learned_row(sources, hypotheses, references, samples_per_s))
  if "embedding" in which:
    rows.append(_embedding_row(sources, hypotheses, samples_per_s))
  if "metricx" in which and args.metricx_size != "none":
    n = args.metricx_sentences
    peak = common.matmul_peak_gflops()
    for dtype in args.metricx_dtypes.split(","):
      rows.append(_metricx_row(args.metricx_size, sources[:n], hypotheses[:n], references[:n],
                               samples_per_s, peak, args.metricx_batch_size, dtype))
  common.report(rows, args.json)


def _row(config, per_s, samples_per_s, **extra):
  return {"config": config, "sentences_per_s": per_s, "sampling_samples_per_s": samples_per_s,
          "scoring_share": samples_per_s / (samples_per_s + per_s), **extra}


def _embedding_row(sources, hypotheses, samples_per_s):
  """Universal Sentence Encoder Multilingual (numpy), N = 4 samples per source as in Grow."""
  reward = rewards.get("use-similarity")
  n = len(sources) // 4
  grow_sources = [s for s in sources[:n] for _ in range(4)]
  grow_hypotheses = hypotheses[: 4 * n]
  reward(grow_sources[:64], grow_hypotheses[:64])
  start = time.perf_counter()
  reward(grow_sources, grow_hypotheses)
  return _row("use-similarity (USE multilingual v3, N=4 per source)",
              len(grow_hypotheses) / (time.perf_counter() - start), samples_per_s)


# mT5's sizes, as MetricX's checkpoints use them (config.json of google/mt5-<size>).
METRICX_SIZES = {
    "small": dict(d_model=512, d_kv=64, d_ff=1024, num_heads=6, num_layers=8),
    "base": dict(d_model=768, d_kv=64, d_ff=2048, num_heads=12, num_layers=12),
    "large": dict(d_model=1024, d_kv=64, d_ff=2816, num_heads=16, num_layers=24),
}


def _metricx_row(size, sources, hypotheses, references, samples_per_s, peak, batch_size=8,
                 dtype="float32"):
  """MetricX-24 (with reference) at mT5-`size` in `dtype`, on this run's devices.

  `peak_fraction` is against the float32 matmul peak, so a bfloat16 row can exceed 1.
  """
  import os  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top

  from rest_jax.rewards import hf_t5, metricx  # pylint: disable=g-import-not-at-top

  config = dict(METRICX_SIZES[size], vocab_size=250112, feed_forward_proj="gated-gelu",
                tie_word_embeddings=False, model_type="mt5",
                num_decoder_layers=METRICX_SIZES[size]["num_layers"])
  fixture = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "tests", "fixtures", "metricx", "spiece.model")
  with tempfile.TemporaryDirectory() as directory:
    start = time.perf_counter()
    hf_t5.random_checkpoint(directory, config, seed=0)
    shutil.copy(fixture, os.path.join(directory, "spiece.model"))  # tokenize is not timed
    reward = metricx.MetricX(directory, version=24, batch_size=batch_size, dtype=dtype,
                             progress_bar=False)
    load_s = time.perf_counter() - start
  rng = np.random.default_rng(0)
  ids = [list(rng.integers(3, 250000, size=int(1.3 * len(
      metricx.input_text(24, s, h, r).split())))) for s, h, r in zip(sources, hypotheses,
                                                                    references)]
  reward._score_ids(ids)  # pylint: disable=protected-access (compiles every length bucket)
  start = time.perf_counter()
  reward._score_ids(ids)  # pylint: disable=protected-access
  seconds = time.perf_counter() - start
  gflops = metricx_gflops(reward.config, [len(x) for x in ids])
  return _row(f"metricx24 mT5-{size} {dtype} (random weights, ~{np.mean([len(x) for x in ids]):.0f}"
              f" tokens, batch {batch_size})", len(ids) / seconds, samples_per_s,
              useful_gflops=gflops / seconds, peak_fraction=gflops / seconds / peak,
              load_s=load_s)


def metricx_gflops(cfg, lengths) -> float:
  """Matmul GFLOPs MetricX must do for inputs of `lengths` tokens (padding not counted).

  The encoder over every token; the decoder's one step: its cross-attention keys and
  values over the encoder's tokens, its projections and MLP for one token, the logits.
  """
  d, hk, m, v = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  flops = 0
  for n in lengths:
    flops += n * cfg.num_encoder_layers * (2 * (4 * d * hk + 3 * d * m) + 2 * 2 * n * hk)
    flops += n * cfg.num_decoder_layers * 2 * 2 * d * hk  # cross-attention keys, values
    flops += cfg.num_decoder_layers * 2 * (6 * d * hk + 3 * d * m + 2 * n * hk) + 2 * d * v
  return flops / 1e9


def _learned_row(sources, hypotheses, references, samples_per_s):
  """The learned model's forward (default size, random weights: speed does not depend on them)."""
  import jax  # pylint: disable=g-import-not-at-top

  from rest_jax import partitioning  # pylint: disable=g-import-not-at-top
  from rest_jax.data import vocab  # pylint: disable=g-import-not-at-top
  from rest_jax.rewards import learned  # pylint: disable=g-import-not-at-top

  model = learned.RewardModel(learned.RewardModelConfig(vocab_size=384, max_length=96),
                              vocab.DemoVocabulary())
  partitioner = partitioning.Partitioner()
  params = model.get_initial_variables(jax.random.PRNGKey(0), {"tokens": (1, 96)})["params"]
  scorer = learned.Scorer(model, partitioner, partitioner.replicated, 256)
  scorer(params, model.tokenize(sources[:256], hypotheses[:256], references[:256]))
  start = time.perf_counter()
  scorer(params, model.tokenize(sources, hypotheses, references))
  per_s = len(sources) / (time.perf_counter() - start)
  return {"config": "learned (2 layers, d128, incl. tokenizing)", "sentences_per_s": per_s,
          "sampling_samples_per_s": samples_per_s,
          "scoring_share": samples_per_s / (samples_per_s + per_s)}


if __name__ == "__main__":
  main()
