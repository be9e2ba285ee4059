"""Reward scoring throughput, against the sampler measured in the same run.

For each reward: sentences/s on demo-corpus translations (about 15 words each), and
`scoring_share`, the share of a Grow step's time that scoring would take next to
small-bench sampling (samples/s measured here): sampling / (sampling + scoring).

  python -m benchmarks.rewards [--json rows.json] [--sentences 8000]
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
  args = parser.parse_args()
  pairs = demo_corpus.generate_splits(args.sentences, 0, 0, seed=7)["train"]
  sources = [en for en, _ in pairs]
  references = [de for _, de in pairs]
  hypotheses = references[1:] + references[:1]  # other sentences: realistic partial overlap
  samples_per_s, _ = decode.run()
  rows = []
  for name in ("bleu", "chrf", "chrf++", "ter"):
    for processes in (1, None):
      reward = rewards.MetricReward(name, processes=processes)
      reward(sources[:2000], hypotheses[:2000], references[:2000])  # warm up the workers
      start = time.perf_counter()
      reward(sources, hypotheses, references)
      per_s = len(pairs) / (time.perf_counter() - start)
      rows.append({"config": f"{name} x{reward.processes} proc", "sentences_per_s": per_s,
                   "sampling_samples_per_s": samples_per_s,
                   "scoring_share": samples_per_s / (samples_per_s + per_s)})
  rows.append(_learned_row(sources, hypotheses, references, samples_per_s))
  common.report(rows, args.json)


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
