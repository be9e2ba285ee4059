r"""Offline-RL losses of the Improve step: BC, GOLD, BVMPO and OAC.

Each is an `OfflineRLLoss` usable as the `Trainer`'s loss:
`(model, params, batch, dropout_rng, **loss_args) -> (loss, metrics)`. The batch
holds the grown dataset's rows (see `rest_jax.data.grown`): `decoder_target_tokens`
(the sampled token ids, or a reference's), `decoder_loss_weights` (m_t),
`behaviour_log_probs` (log mu(y_t | x, y_<t), the distribution Grow sampled
from: temperature, top-k, top-p applied), `reward` (R), `value` (the mean reward
of the source's samples), `value_loo` (the mean reward of its *other* samples),
`is_reference` and `scored`.

Notation: `lp_t = log pi_theta(y_t | x, y_<t)` at temperature 1, `b_t` the stored
behaviour log-probability, `S = sum_t m_t lp_t` a row's sequence log-likelihood,
`n = sum_t m_t` its length, `sg` stop-gradient, and sums over the rows `i` of a
batch.

- BC (the ReST paper's best): `L = -sum_i S_i / sum_i n_i`, the token-mean NLL.

- GOLD (Pang & He 2021, "Text Generation by Learning from Demonstrations"):
  off-policy policy gradient with per-token importance weights and the
  sequence reward as every token's return (gamma = 1, one terminal reward):
  `L = -sum_{i,t} m_t w_t R_i lp_t / sum_i n_i`,
  `w_t = sg(clip(exp(lp_t - b_t), u, c))` for the policy's samples, whose
  behaviour is known. Pang & He train on demonstrations whose behaviour is
  unknown and approximate it as uniform, which gives `w_t = sg(max(pi_t, u))`;
  that is what references (and mixed-in original pairs) get, and what every row
  gets with `gold_behaviour='uniform'`. Their lower bound `u` (`gold_min_weight`)
  is kept; a true ratio can exceed 1, so it is also truncated at `c`
  (`gold_max_weight`, 1 by default, which keeps the weights in Pang & He's
  range). Pang & He compute the weight with a periodically synced copy of the
  policy; here it is the current policy (no extra copy to keep).

- BVMPO (V-MPO, Song et al. 2020, with the behaviour policy's value as its
  baseline, as in the ReST paper): advantages `A_i = R_i - value_i`; only the
  rows in the top `top_fraction` of the batch by advantage (V-MPO's top half)
  get weight `psi_i = exp(A_i / eta) / sum_{j in top} exp(A_j / eta)`;
  `L = -sum_i psi_i S_i / nbar + lambda * KL`, with `nbar` the batch's mean row
  length (so the scale per token matches BC's) and
  `KL = mean over the batch's tokens of KL(pi_BC(. | x, y_<t) || pi_theta(. | x, y_<t))`
  computed exactly over the vocabulary against the frozen BC policy: a second
  forward pass with the BC parameters (the reference model of RLHF trainers).
  Stored log-probabilities cannot give it: they hold the behaviour policy's
  probability of one token per state, not pi_BC's whole distribution, and the
  behaviour policy is tempered. `lambda` is annealed from `kl_start` (1) to
  `kl_end` (1e-5) geometrically over the run's Improve steps, as in the ReST
  paper. Deviation from V-MPO: its temperature `eta` is learned through a dual
  loss; here it is fixed (`temperature`), like the top fraction.

- OAC (offline actor-critic with a Monte Carlo critic): the sequence-level
  importance ratio `rho_i = exp(sum_t m_t (lp_t - b_t)) = pi_theta(y_i|x) / mu(y_i|x)`
  on the stored sampled tokens and the tempered behaviour mu, truncated at `c`
  (`max_ratio`); the baseline is the leave-one-out mean reward of the source's
  other samples; `L = -sum_i sg(min(rho_i, c)) (R_i - value_loo_i) S_i / sum_i n_i`:
  the ratio and the gradient both use the whole sequence (one normalisation).

References (rows of the original data) were not sampled: Grow stores the Grow
policy's own log-probabilities (T = 1) as their behaviour, so their OAC ratio
starts at 1 and measures how far the policy moved. BVMPO and OAC need a reward
and a baseline for every row: with a reward that reads references, references
are not scored and these two losses refuse them (`validate_rows`), as they
refuse mixed-in original pairs.
"""

import dataclasses
import math
from typing import Any, Dict, Mapping, Tuple

from clu import metrics as clu_metrics
import jax
import jax.numpy as jnp

Array = jax.Array
LOSSES = ("bc", "gold", "bvmpo", "oac")


@dataclasses.dataclass(frozen=True)
class OfflineRLLoss:
  """A configured Improve loss (`name` in bc, gold, bvmpo, oac); see the module docstring.

  Attributes:
    name: which loss.
    gold_min_weight: GOLD's lower bound u on a token's weight (Pang & He).
    gold_max_weight: GOLD's truncation c of a token's importance ratio.
    gold_behaviour: 'sampled' (the stored behaviour log-probabilities for the
      policy's samples, the uniform approximation for references) or 'uniform'
      (Pang & He's approximation for every row).
    temperature: BVMPO's eta, on the reward's scale.
    top_fraction: BVMPO's share of a batch's rows (by advantage) that get weight.
    kl_start: BVMPO's KL weight lambda at the first Improve step (0 = no KL term).
    kl_end: lambda at the last Improve step.
    max_ratio: OAC's truncation c of the sequence importance ratio.
  """

  name: str = "bc"
  gold_min_weight: float = 0.1
  gold_max_weight: float = 1.0
  gold_behaviour: str = "sampled"
  temperature: float = 0.1
  top_fraction: float = 0.5
  kl_start: float = 1.0
  kl_end: float = 1e-5
  max_ratio: float = 1.0

  def __post_init__(self):
    if self.name not in LOSSES:
      raise ValueError(f"unknown Improve loss '{self.name}': use one of {', '.join(LOSSES)}")
    if self.gold_behaviour not in ("sampled", "uniform"):
      raise ValueError(f"gold_behaviour={self.gold_behaviour!r}: use 'sampled' or 'uniform'")
    if not 0.0 < self.top_fraction <= 1.0:
      raise ValueError(f"top_fraction={self.top_fraction} must be in (0, 1]")
    if self.temperature <= 0 or self.max_ratio <= 0 or self.gold_max_weight <= 0:
      raise ValueError("temperature, max_ratio and gold_max_weight must be positive")
    if self.kl_start < 0 or self.kl_end < 0 or (self.kl_start > 0) != (self.kl_end > 0):
      raise ValueError(f"kl_start={self.kl_start} and kl_end={self.kl_end} must both be"
                       " positive (annealed geometrically) or both 0 (no KL term)")

  # --- what a loss needs ----------------------------------------------------

  @property
  def uses_reference_policy(self) -> bool:
    """Whether the loss reads the frozen BC policy (BVMPO's KL term)."""
    return self.name == "bvmpo" and self.kl_start > 0

  @property
  def needs_scored_rows(self) -> bool:
    """Whether every row needs a reward and a baseline (BVMPO, OAC)."""
    return self.name in ("bvmpo", "oac")

  def validate_rows(self, unscored_rows: int, what: str) -> None:
    """Refuses rows without a reward for the losses that need one (names `what`)."""
    if unscored_rows and self.needs_scored_rows:
      raise ValueError(
          f"Improve loss '{self.name}' needs a reward and a baseline for every row, but"
          f" {unscored_rows} {what} have none (a reward that reads references does not score"
          " them): leave them out (REFERENCES = 'drop', MIX_RATIO = 0) or use a"
          " reference-free reward")

  def kl_weight(self, improve_index: int, num_improve_steps: int) -> float:
    """lambda for the `improve_index`-th (0-based) of the run's Improve steps."""
    if not self.uses_reference_policy:
      return 0.0
    if num_improve_steps <= 1:
      return float(self.kl_start)
    frac = improve_index / (num_improve_steps - 1)
    return float(math.exp((1 - frac) * math.log(self.kl_start) + frac * math.log(self.kl_end)))

  # --- the loss ---------------------------------------------------------------

  def __call__(self, model, params, batch, dropout_rng, reference_params=None,
               kl_weight=None) -> Tuple[Array, Dict[str, Any]]:
    """The loss of a batch; with dropout on, the importance weights and the KL to BC
    come from a second, dropout-free pass.

    The stored behaviour log-probabilities were computed without dropout, and the
    frozen BC policy is evaluated without it: a ratio or KL against the dropout-on
    pass would be off by the dropout noise even at the behaviour (or BC) policy.
    The gradient of the policy-gradient term still goes through the dropout pass.
    """
    logits = model._compute_logits(params, batch, dropout_rng)  # pylint: disable=protected-access
    reference_logits = None
    uses_kl = reference_params is not None and self.uses_reference_policy
    if uses_kl:
      reference_logits = jax.lax.stop_gradient(
          model._compute_logits(reference_params, batch))  # pylint: disable=protected-access
    deterministic = None
    if (dropout_rng is not None and (uses_kl or self.name in ("gold", "oac"))
        and _has_dropout(model)):
      deterministic = model._compute_logits(params, batch)  # pylint: disable=protected-access
    return self.from_logits(
        logits, batch, reference_logits, kl_weight,
        weight_logits=None if deterministic is None else jax.lax.stop_gradient(deterministic),
        kl_logits=deterministic)

  def from_logits(self, logits: Array, batch: Mapping[str, Array],
                  reference_logits: Array | None = None, kl_weight=None,
                  weight_logits: Array | None = None, kl_logits: Array | None = None):
    """The loss and metrics from teacher-forced logits.

    Args:
      logits: the policy's, `[batch, length, vocab]`.
      batch: the rows (see the module docstring).
      reference_logits: the frozen BC policy's, for BVMPO's KL term.
      kl_weight: that term's lambda.
      weight_logits: the policy that computes the importance weights (GOLD's
        pi-tilde, OAC's pi in the ratio); default the current policy itself (its
        dropout-free pass when training with dropout). Pang & He use a periodically
        synced copy; the tests use the unperturbed policy to check gradients
        against finite differences.
      kl_logits: the current policy's logits that the KL to BC is taken against
        (with gradient); default `logits` (the dropout-free pass under dropout).
    """
    targets = batch["decoder_target_tokens"]
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    token_lp = _picked_log_probs(logits, targets)
    weight_lp = token_lp if weight_logits is None else _picked_log_probs(weight_logits, targets)
    weight_lp = jax.lax.stop_gradient(weight_lp)
    lengths = jnp.sum(weights, -1)
    rows = lengths > 0
    num_rows = jnp.maximum(jnp.sum(rows), 1.0)
    num_tokens = jnp.maximum(jnp.sum(weights), 1.0)
    sequence_lp = jnp.sum(token_lp * weights, -1)
    ones = jnp.ones(targets.shape[:1], jnp.float32)
    reward = batch.get("reward", ones).astype(jnp.float32)
    is_reference = batch.get("is_reference", 0 * ones).astype(jnp.float32) > 0
    behaviour = batch.get("behaviour_log_probs", jnp.zeros_like(token_lp)).astype(jnp.float32)
    extra = {}

    if self.name == "bc":
      advantage = reward - batch.get("value", reward).astype(jnp.float32)
      loss = -jnp.sum(sequence_lp) / num_tokens
    elif self.name == "gold":
      advantage = reward
      ratio = jnp.clip(jnp.exp(jnp.minimum(weight_lp - behaviour, 20.0)), self.gold_min_weight,
                       self.gold_max_weight)
      uniform = jnp.maximum(jnp.exp(weight_lp), self.gold_min_weight)
      if self.gold_behaviour == "uniform":
        token_weight = uniform
      else:
        token_weight = jnp.where(is_reference[:, None], uniform, ratio)
      loss = -jnp.sum(token_weight * reward[:, None] * token_lp * weights) / num_tokens
      extra["token_weight"] = jnp.sum(token_weight * weights) / num_tokens
    elif self.name == "bvmpo":
      advantage = reward - batch["value"].astype(jnp.float32)
      masked = jnp.where(rows, advantage, -jnp.inf)
      k = max(1, int(math.ceil(self.top_fraction * targets.shape[0])))
      cutoff = jax.lax.top_k(masked, k)[0][-1]
      top = rows & (advantage >= cutoff)
      psi = jax.nn.softmax(jnp.where(top, advantage / self.temperature, -jnp.inf))
      psi = jax.lax.stop_gradient(jnp.where(top, psi, 0.0))
      mean_length = jax.lax.stop_gradient(num_tokens / num_rows)
      loss = -jnp.sum(psi * sequence_lp) / mean_length
      extra["kept_fraction"] = jnp.sum(top) / num_rows
      if reference_logits is not None:
        kl = kl_to_reference(reference_logits, logits if kl_logits is None else kl_logits,
                             weights)
        loss = loss + jnp.asarray(kl_weight, jnp.float32) * kl
        extra["kl_to_bc"] = kl
        extra["kl_weight"] = jnp.asarray(kl_weight, jnp.float32)
    else:  # oac
      advantage = reward - batch["value_loo"].astype(jnp.float32)
      log_ratio = jnp.sum((weight_lp - behaviour) * weights, -1)
      ratio = jax.lax.stop_gradient(jnp.minimum(jnp.exp(jnp.minimum(log_ratio, 20.0)),
                                                self.max_ratio))
      loss = -jnp.sum(jnp.where(rows, ratio * advantage * sequence_lp, 0.0)) / num_tokens
      extra["importance_ratio"] = jnp.sum(jnp.where(rows, ratio, 0.0)) / num_rows
      extra["truncated_fraction"] = jnp.sum(
          rows & (log_ratio > math.log(self.max_ratio))) / num_rows

    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * weights
    one = jnp.array(1, jnp.int32)

    def row_mean(x):
      return clu_metrics.Average(total=jnp.sum(jnp.where(rows, x, 0.0)), count=jnp.sum(rows))

    metrics = {
        "loss": clu_metrics.Average(total=loss, count=one),
        "accuracy": clu_metrics.Average(total=jnp.sum(correct), count=jnp.sum(weights)),
        "reward": row_mean(reward),
        "advantage": row_mean(advantage),
        "log_likelihood": row_mean(sequence_lp / jnp.maximum(lengths, 1.0)),
        "reference_fraction": row_mean(is_reference.astype(jnp.float32)),
    }
    metrics.update({k: clu_metrics.Average(total=v, count=one) for k, v in extra.items()})
    return loss, metrics


def _has_dropout(model) -> bool:
  """Whether the model's network drops out (unknown: assume it does)."""
  config = getattr(getattr(model, "module", None), "config", None)
  rate = getattr(config, "dropout_rate", None)
  return rate is None or float(rate) > 0


def _picked_log_probs(logits: Array, targets: Array) -> Array:
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  return jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0]


def kl_to_reference(reference_logits: Array, logits: Array, weights: Array) -> Array:
  """Mean over weighted positions of KL(p_ref || p) over the vocabulary."""
  ref = jax.nn.log_softmax(reference_logits.astype(jnp.float32))
  cur = jax.nn.log_softmax(logits.astype(jnp.float32))
  per_token = jnp.sum(jnp.exp(ref) * (ref - cur), -1)
  return jnp.sum(per_token * weights) / jnp.maximum(jnp.sum(weights), 1.0)
