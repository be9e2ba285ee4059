"""Rewards: batched `(sources, hypotheses, references) -> float array`, a registry and thresholds.

    reward = rest_jax.rewards.get("chrf")          # or bleu, chrf++, ter, learned
    scores = reward(sources, hypotheses, references)   # one finite value each, on reward.range

In gin: `REWARD = @rewards.get()` with `rewards.get.name = 'chrf'`, or an
`@rewards.Ensemble()` of several.
"""

from typing import Callable, Dict

from rest_jax.rewards.base import Ensemble, Reward, RewardError
from rest_jax.rewards.cache import Cached
from rest_jax.rewards.guards import Guarded
from rest_jax.rewards.sentence_metrics import DemoRater, EditRating, MetricReward
from rest_jax.rewards.thresholds import ThresholdSchedule

_REGISTRY: Dict[str, Callable[..., Reward]] = {}


def register(name: str, factory: Callable[..., Reward]) -> None:
  if name in _REGISTRY:
    raise ValueError(f"reward '{name}' is already registered")
  _REGISTRY[name] = factory


def get(name: str, **kwargs) -> Reward:
  """A reward by name: bleu, chrf, chrf++, ter, edit_rating, demo_rater (the demo's rater,
  rewards/sentence_metrics.py), learned (needs `model_dir=`),
  metricx (needs `checkpoint_dir=`; rewards/metricx.py), use-similarity (cross-lingual
  source-hypothesis embedding similarity, reference-free; rewards/embedding.py)."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown reward '{name}'; known: {sorted(_REGISTRY)}")
  return _REGISTRY[name](**kwargs)


def names():
  return sorted(_REGISTRY)


def _metricx(**kwargs) -> Reward:
  from rest_jax.rewards import metricx  # pylint: disable=g-import-not-at-top (imports JAX)

  return metricx.MetricX(**kwargs)


def _learned(**kwargs) -> Reward:
  from rest_jax.rewards import learned  # pylint: disable=g-import-not-at-top (imports JAX)

  return learned.LearnedReward(**kwargs)


for _kind in ("bleu", "chrf", "chrf++", "ter"):
  register(_kind, lambda _k=_kind, **kw: MetricReward(_k, **kw))
register("learned", _learned)
register("metricx", _metricx)


def _embedding(**kwargs) -> Reward:
  from rest_jax.rewards import embedding  # pylint: disable=g-import-not-at-top

  return embedding.EmbeddingSimilarity(**kwargs)


register("use-similarity", _embedding)
register("edit_rating", EditRating)
register("demo_rater", DemoRater)

__all__ = ["Cached", "DemoRater", "EditRating", "Ensemble", "Guarded", "MetricReward", "Reward",
           "RewardError", "ThresholdSchedule", "get", "names", "register"]
