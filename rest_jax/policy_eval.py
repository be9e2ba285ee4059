"""Evaluation of a policy with a reward: greedy/beam output and best-of-N reranking.

For a split of a task: the mean reward, BLEU and chrF of the policy's greedy (or
beam) translations, and of best-of-N: N samples per source, the one the reward
prefers kept.
"""

from typing import Any, Dict, Mapping, Optional

import numpy as np

from rest_jax import decoding, faults, inference, partitioning
from rest_jax.data import metrics as metrics_lib
from rest_jax.rewards import Reward


class PolicyEvaluator:
  """Compiled decoders for one model, mesh and batch size, reused across evaluations."""

  def __init__(self, model, partitioner: partitioning.Partitioner, params_sharding: Any,
               reward: Reward, beam_size: int = 1, best_of_n: int = 4,
               temperature: float = 1.0, batch_size: int = 64, seed: int = 0):
    self.model = model
    self.reward = reward
    self.batch_size = batch_size
    self.best_of_n = best_of_n
    self.seed = seed
    self.beam = inference.PolicyDecoder(
        model, partitioner, params_sharding, beam_size, decode_fn=decoding.beam_search)
    self.sampler = None
    if best_of_n > 1:
      self.sampler = inference.PolicyDecoder(
          model, partitioner, params_sharding, best_of_n, {"temperature": temperature},
          decode_fn=decoding.temperature_sample)

  def __call__(self, params, task_name: str, split: str, feature_lengths: Mapping[str, int],
               max_examples: Optional[int] = None) -> Dict[str, float]:
    vocabulary = self.model.output_vocabulary
    length = feature_lengths["targets"]
    sources, references, hyps, best = [], [], [], []
    for batch in inference.source_batches(task_name, split, feature_lengths, self.batch_size,
                                          0, max_examples):
      valid = int(batch["valid"].sum())
      faults.point("eval.batch")
      dummy = np.zeros((len(batch["valid"]), self.beam.num_decodes, 2), np.uint32)
      out = self.beam.decode_global(params, batch["encoder_input_tokens"], length, dummy)
      texts = inference.decode_texts(vocabulary, out["tokens"][:, -1:])  # the best beam
      hyps += [t[0] for t in texts[:valid]]
      sources += batch["inputs"]
      references += batch["targets"]
      if self.sampler is not None:
        keys = inference.sample_keys(self.seed, 10**6, batch["source_id"], self.best_of_n)
        out = self.sampler.decode_global(params, batch["encoder_input_tokens"], length, keys)
        samples = inference.decode_texts(vocabulary, out["tokens"])
        flat = [s for row in samples[:valid] for s in row]
        scores = self.reward(inference.repeat_for(batch["inputs"], self.best_of_n), flat,
                             inference.repeat_for(batch["targets"], self.best_of_n))
        scores = scores.reshape(valid, self.best_of_n)
        best += [samples[i][int(np.argmax(scores[i]))] for i in range(valid)]
    results = _scores(self.reward, sources, hyps, references, "")
    if best:
      results.update(_scores(self.reward, sources, best, references, f"best_of_{self.best_of_n}_"))
    results["examples"] = float(len(references))
    return results


def _scores(reward: Reward, sources, hyps, refs, prefix: str) -> Dict[str, float]:
  return {
      f"{prefix}reward": float(np.mean(reward(sources, hyps, refs))),
      f"{prefix}bleu": metrics_lib.bleu(refs, hyps)["bleu"],
      f"{prefix}chrf": metrics_lib.chrf(refs, hyps)["chrf"],
  }
