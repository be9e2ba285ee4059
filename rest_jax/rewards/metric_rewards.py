"""Sentence-level BLEU, chrF, chrF++ and TER rewards (sacrebleu), each on [0, 1].

Scoring is pure Python, so large batches are spread over worker processes
(spawned, not forked, since the parent runs JAX threads).
"""

import concurrent.futures
import multiprocessing
import os
from typing import List, Sequence

import numpy as np
import sacrebleu

from rest_jax.rewards.base import Reward

# Below this many hypotheses, scoring inline beats shipping them to workers.
_MIN_PARALLEL = 512
_POOLS = {}


def _metric(kind: str):
  if kind == "bleu":
    return sacrebleu.metrics.BLEU(effective_order=True)
  if kind == "chrf":
    return sacrebleu.metrics.CHRF()
  if kind == "chrf++":
    return sacrebleu.metrics.CHRF(word_order=2)
  if kind == "ter":
    return sacrebleu.metrics.TER()
  raise ValueError(f"unknown metric {kind}")


def _to_reward(kind: str, score: float) -> float:
  if kind == "ter":  # an edit rate (lower is better, may exceed 100)
    return max(0.0, 1.0 - score / 100.0)
  return score / 100.0


def score_chunk(kind: str, hypotheses: Sequence[str], references: Sequence[str]) -> List[float]:
  metric = _metric(kind)
  return [_to_reward(kind, metric.sentence_score(h, [r]).score)
          for h, r in zip(hypotheses, references)]


def _pool(processes: int) -> concurrent.futures.ProcessPoolExecutor:
  if processes not in _POOLS:
    _POOLS[processes] = concurrent.futures.ProcessPoolExecutor(
        processes, mp_context=multiprocessing.get_context("spawn"))
  return _POOLS[processes]


class MetricReward(Reward):
  """A reference-based sacrebleu metric as a reward on [0, 1] (1 = identical).

  Args:
    kind: "bleu" (sentence BLEU with effective order), "chrf", "chrf++" or "ter"
      (reported as `max(0, 1 - TER/100)`).
    processes: worker processes for large batches (default: all cores; 1 = inline).
  """

  range = (0.0, 1.0)

  def __init__(self, kind: str, processes: int | None = None):
    _metric(kind)  # validates the kind
    self.kind = kind
    self.name = kind
    self.processes = processes or os.cpu_count() or 1

  def score(self, sources, hypotheses, references):
    del sources
    n = len(hypotheses)
    if self.processes <= 1 or n < _MIN_PARALLEL:
      return np.asarray(score_chunk(self.kind, hypotheses, references))
    size = -(-n // (4 * self.processes))
    futures = [_pool(self.processes).submit(score_chunk, self.kind, hypotheses[i:i + size],
                                            references[i:i + size]) for i in range(0, n, size)]
    return np.concatenate([np.asarray(f.result()) for f in futures])
