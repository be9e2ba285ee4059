"""Improve-step thresholds: absolute values on a reward's scale, or quantiles of the grown data."""

import dataclasses
from typing import List, Sequence, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class ThresholdSchedule:
  """`tau_1 < tau_2 < ... < tau_I`, absolute or as quantiles of the Grow step's rewards.

  Attributes:
    values: the thresholds. With `quantiles=True` each is the share of rows
      *below* the threshold (0.5 = keep the better half), in [0, 1).
    quantiles: read `values` as quantiles of the grown dataset's rewards.
  """

  values: Sequence[float]
  quantiles: bool = False

  def validate(self, reward_range: Tuple[float, float]) -> None:
    """Raises ValueError unless strictly increasing and inside the range."""
    values = list(self.values)
    if not values:
      raise ValueError("the threshold schedule is empty")
    if any(b <= a for a, b in zip(values, values[1:])):
      raise ValueError(f"thresholds must increase strictly, got {values}")
    low, high = (0.0, 1.0) if self.quantiles else reward_range
    upper_ok = (lambda v: v < high) if self.quantiles else (lambda v: v <= high)
    for v in values:
      if not (low <= v and upper_ok(v)):
        kind = "quantile thresholds" if self.quantiles else "thresholds on this reward"
        raise ValueError(f"threshold {v} is outside [{low}, {high}] ({kind})")

  def resolve(self, rewards: np.ndarray | None = None) -> List[float]:
    """Absolute thresholds; quantile ones need the grown dataset's rewards."""
    if not self.quantiles:
      return [float(v) for v in self.values]
    if rewards is None or np.size(rewards) == 0:
      raise ValueError("quantile thresholds need the grown dataset's rewards")
    return [float(np.quantile(rewards, q, method="lower")) for q in self.values]
