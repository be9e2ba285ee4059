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


def word_edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
  """Levenshtein distance between two word lists (insertions, deletions, substitutions)."""
  previous = list(range(len(b) + 1))
  for i, x in enumerate(a, start=1):
    current = [i]
    for j, y in enumerate(b, start=1):
      current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
    previous = current
  return previous[-1]


class EditRating(Reward):
  """A rater that knows the correct translation: `max(0, 1 - penalty * word errors)`.

  Every wrong, missing or extra word (word-level edit distance to the reference,
  case and punctuation included) costs `penalty`, whatever the sentence's length,
  as an error-counting human rating (MQM-style) does: one wrong article is 0.8 at
  the default 0.2, an untranslated copy is 0. The demo uses it as its stand-in for
  human raters, on references that are known to be correct.
  """

  range = (0.0, 1.0)

  def __init__(self, penalty: float = 0.2):
    if penalty <= 0:
      raise ValueError(f"penalty={penalty} must be positive")
    self.penalty = float(penalty)
    self.name = "edit_rating" if penalty == 0.2 else f"edit_rating@{penalty:g}"

  def score(self, sources, hypotheses, references):
    del sources
    return np.array([max(0.0, 1.0 - self.penalty * word_edit_distance(h.split(), r.split()))
                     for h, r in zip(hypotheses, references)])


class DemoRater(Reward):
  """The demo's rater for any hypothesis of a demo-corpus source: `EditRating` against
  the generator's correct translation, whatever reference the row carries.

  A Grow step's rows carry the training targets, which the demo's flaw and noise
  make wrong; this rates them as the demo's stand-in for human raters does. The
  corpus settings must be those of the run (`configs/demo.gin`'s by default; the
  colour demo's has `grammar='colour'`); a source the corpus does not hold is an
  error that names it.
  """

  range = (0.0, 1.0)
  needs_reference = False
  name = "demo_rater"

  def __init__(self, penalty: float = 0.2, train_size: int = 20000,
               validation_size: int = 500, test_size: int = 500, seed: int = 0,
               forms: str = "simple", flaw: str = "adjective", grammar: str = "base"):
    from rest_jax.data import demo_corpus  # pylint: disable=g-import-not-at-top

    corpus = demo_corpus.generate_corpus(train_size, validation_size, test_size, seed,
                                         forms=forms, flaw=flaw, grammar=grammar)
    self.correct = {p.source: p.correct for split in corpus.values() for p in split}
    self.rating = EditRating(penalty)
    self._settings = (penalty, train_size, validation_size, test_size, seed, forms, flaw,
                      grammar)

  @property
  def identity(self) -> str:
    """Its corpus's settings decide what it takes for correct: they are in its identity."""
    return f"{self.name}{self._settings!r}"

  def score(self, sources, hypotheses, references):
    del references
    missing = next((s for s in sources if s not in self.correct), None)
    if missing is not None:
      raise ValueError(f"demo_rater: {missing!r} is not a source of the demo corpus with these"
                       " settings (train_size, seed, forms, flaw, grammar as the run's)")
    return self.rating.score(sources, hypotheses, [self.correct[s] for s in sources])
