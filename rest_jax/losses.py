"""Offline-RL losses of the Improve step: BC, GOLD, BVMPO and OAC.

Each is a `LossFn` for `Trainer`: `(model, params, batch, dropout_rng) -> (loss, metrics)`,
computed from the model's `_compute_logits` and the batch's per-row features
written by Grow: `reward`, `value` (the behaviour policy's mean reward for the
row's source, a baseline), and `log_prob` (the row's log-likelihood under the
behaviour policy that sampled it).

- BC: negative log-likelihood of the kept samples (the ReST paper's best).
- GOLD (Pang & He, 2021): off-policy policy gradient whose per-token importance
  weight is the current policy's own (stop-gradient) token probability,
  lower-bounded by `gold_min_prob`, times the reward.
- BVMPO (V-MPO, Song et al. 2020, with the behaviour value as baseline): keep the
  `top_fraction` of rows by advantage `reward - value`, weight them by
  `softmax(advantage / temperature)` over the batch, maximise the weighted
  log-likelihood.
- OAC (offline actor-critic): policy gradient with advantage `reward - value`
  and a clipped sequence importance ratio `pi / mu` (stop-gradient).
Sequence log-likelihoods are per-token means, so long and short rows weigh alike.
"""

import dataclasses
from typing import Any, Dict, Mapping, Tuple

from clu import metrics as clu_metrics
import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class OfflineRLLoss:
  """A configured Improve loss (`name` in bc, gold, bvmpo, oac) usable as a `LossFn`.

  Attributes:
    name: which loss.
    gold_min_prob: GOLD's lower bound on the per-token importance weight.
    temperature: BVMPO's softmax temperature on advantages (reward scale).
    top_fraction: BVMPO's share of rows (by advantage) that get weight.
    max_ratio: OAC's clip on the importance ratio pi/mu.
  """

  name: str = "bc"
  gold_min_prob: float = 0.1
  temperature: float = 0.1
  top_fraction: float = 0.5
  max_ratio: float = 2.0

  def __post_init__(self):
    if self.name not in ("bc", "gold", "bvmpo", "oac"):
      raise ValueError(f"unknown Improve loss '{self.name}': use bc, gold, bvmpo or oac")

  def __call__(self, model, params, batch, dropout_rng) -> Tuple[Array, Dict[str, Any]]:
    logits = model._compute_logits(params, batch, dropout_rng)  # pylint: disable=protected-access
    return self.from_logits(logits, batch)

  def from_logits(self, logits: Array, batch: Mapping[str, Array]):
    targets = batch["decoder_target_tokens"]
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    token_lp = jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    lengths = jnp.maximum(jnp.sum(weights, -1), 1.0)
    mean_lp = jnp.sum(token_lp * weights, -1) / lengths   # per-row mean token log-prob
    rows = jnp.sum(weights, -1) > 0
    reward = batch.get("reward", jnp.ones(targets.shape[:1])).astype(jnp.float32)
    value = batch.get("value", jnp.zeros_like(reward)).astype(jnp.float32)
    advantage = reward - value
    num_rows = jnp.maximum(jnp.sum(rows), 1.0)
    extra = {}

    if self.name == "bc":
      loss = -jnp.sum(token_lp * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    elif self.name == "gold":
      importance = jax.lax.stop_gradient(jnp.maximum(jnp.exp(token_lp), self.gold_min_prob))
      per_token = importance * reward[:, None] * token_lp * weights
      loss = -jnp.sum(per_token) / jnp.maximum(jnp.sum(weights), 1.0)
    elif self.name == "bvmpo":
      masked = jnp.where(rows, advantage, -jnp.inf)
      k = max(1, int(round(self.top_fraction * targets.shape[0])))
      cutoff = jax.lax.top_k(masked, k)[0][-1]
      top = rows & (advantage >= cutoff)
      psi = jax.nn.softmax(jnp.where(top, advantage / self.temperature, -jnp.inf))
      psi = jax.lax.stop_gradient(jnp.where(top, psi, 0.0))
      loss = -jnp.sum(psi * mean_lp)
      extra["kept_fraction"] = jnp.sum(top) / num_rows
    else:  # oac
      behaviour = batch.get("log_prob", jnp.zeros_like(reward)).astype(jnp.float32)
      sequence_lp = jnp.sum(token_lp * weights, -1)
      ratio = jax.lax.stop_gradient(
          jnp.minimum(jnp.exp(jnp.minimum(sequence_lp - behaviour, 20.0)), self.max_ratio))
      loss = -jnp.sum(jnp.where(rows, ratio * advantage * mean_lp, 0.0)) / num_rows
      extra["importance_ratio"] = jnp.sum(jnp.where(rows, ratio, 0.0)) / num_rows

    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * weights
    one = jnp.array(1, jnp.int32)
    metrics = {
        "loss": clu_metrics.Average(total=loss, count=one),
        "accuracy": clu_metrics.Average(total=jnp.sum(correct), count=jnp.sum(weights)),
        "reward": clu_metrics.Average(total=jnp.sum(jnp.where(rows, reward, 0.0)),
                                      count=jnp.sum(rows)),
        "advantage": clu_metrics.Average(total=jnp.sum(jnp.where(rows, advantage, 0.0)),
                                         count=jnp.sum(rows)),
        "log_likelihood": clu_metrics.Average(total=jnp.sum(jnp.where(rows, mean_lp, 0.0)),
                                              count=jnp.sum(rows)),
    }
    metrics.update({k: clu_metrics.Average(total=v, count=one) for k, v in extra.items()})
    return loss, metrics
