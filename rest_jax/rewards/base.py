"""The reward interface: a named, batched, checked `(sources, hypotheses, references) -> scores`."""

import abc
from typing import Sequence, Tuple

import numpy as np


class RewardError(RuntimeError):
  """A reward that failed, or returned a wrong-length or non-finite result."""


def _snippet(text: str, limit: int = 60) -> str:
  return text if len(text) <= limit else text[:limit] + "..."


class Reward(abc.ABC):
  """A batched reward on a documented scale.

  Subclasses implement `score`; calling the reward validates the result: one
  finite value per hypothesis. A failure names the reward and the example.

  Attributes:
    name: registry name (e.g. "chrf").
    range: `(low, high)` of the scale; thresholds are given on it.
    needs_reference: whether scores depend on the reference.
  """

  name: str = "reward"
  range: Tuple[float, float] = (0.0, 1.0)
  # False for reference-free (quality-estimation) rewards, usable without references.
  needs_reference: bool = True

  @abc.abstractmethod
  def score(self, sources: Sequence[str], hypotheses: Sequence[str],
            references: Sequence[str]) -> np.ndarray:
    """One score per hypothesis (no validation)."""

  @property
  def identity(self) -> str:
    """What the scores depend on, as text: equal identities give equal scores.

    Score caches and `rest`'s step records key on it, so a reward whose scores
    depend on more than its name (a trained model's parameters, a checkpoint, a
    penalty) says so here.
    """
    return self.name

  def __call__(self, sources: Sequence[str], hypotheses: Sequence[str],
               references: Sequence[str] | None = None) -> np.ndarray:
    n = len(hypotheses)
    references = list(references) if references is not None else [""] * n
    if len(sources) != n or len(references) != n:
      raise RewardError(
          f"reward '{self.name}': {len(sources)} sources, {n} hypotheses and"
          f" {len(references)} references; they must match")
    try:
      values = np.asarray(self.score(list(sources), list(hypotheses), references), np.float64)
    except RewardError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise RewardError(self._locate_failure(sources, hypotheses, references, e)) from e
    if values.shape != (n,):
      raise RewardError(
          f"reward '{self.name}' returned shape {values.shape} for {n} hypotheses")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
      i = int(bad[0])
      raise RewardError(
          f"reward '{self.name}' gave {values[i]} for example {i} (hypothesis"
          f" {_snippet(hypotheses[i])!r}, reference {_snippet(references[i])!r});"
          f" {bad.size} non-finite values in all")
    return values

  def _locate_failure(self, sources, hypotheses, references, error) -> str:
    """Rescores one example at a time to name the one that fails."""
    for i in range(len(hypotheses)):
      try:
        self.score([sources[i]], [hypotheses[i]], [references[i]])
      except Exception as e:  # pylint: disable=broad-except
        return (f"reward '{self.name}' failed on example {i} (hypothesis"
                f" {_snippet(hypotheses[i])!r}): {type(e).__name__}: {e}")
    return f"reward '{self.name}' failed on a batch of {len(hypotheses)}: {error}"


class Ensemble(Reward):
  """A weighted mean of rewards; its range is the weighted mean of theirs."""

  def __init__(self, rewards: Sequence[Reward], weights: Sequence[float] | None = None,
               name: str | None = None):
    if not rewards:
      raise ValueError("an ensemble needs at least one reward")
    weights = [1.0] * len(rewards) if weights is None else [float(w) for w in weights]
    if len(weights) != len(rewards) or any(w < 0 for w in weights) or sum(weights) <= 0:
      raise ValueError(f"ensemble weights {weights} must be non-negative, one per reward")
    total = sum(weights)
    self.rewards = list(rewards)
    self.weights = [w / total for w in weights]
    self.name = name or "+".join(f"{w:.2g}*{r.name}" for r, w in zip(self.rewards, self.weights))
    self.needs_reference = any(r.needs_reference for r in self.rewards)
    self.range = (sum(w * r.range[0] for r, w in zip(self.rewards, self.weights)),
                  sum(w * r.range[1] for r, w in zip(self.rewards, self.weights)))

  @property
  def identity(self) -> str:
    return "+".join(f"{w!r}*{r.identity}" for r, w in zip(self.rewards, self.weights))

  def score(self, sources, hypotheses, references):
    return sum(w * r(sources, hypotheses, references) for r, w in zip(self.rewards, self.weights))
