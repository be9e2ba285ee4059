"""The Improve losses against hand computations on a tiny batch, and their gradient signs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rest_jax import losses

# Two rows, vocabulary 3, two target positions; row 1 has one real token.
LOGITS = jnp.array([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                    [[0.0, 0.0, 3.0], [0.0, 0.0, 0.0]]])
BATCH = {"decoder_target_tokens": jnp.array([[0, 1], [2, 0]]),
         "decoder_loss_weights": jnp.array([[1, 1], [1, 0]]),
         "reward": jnp.array([0.9, 0.3]), "value": jnp.array([0.5, 0.5]),
         "log_prob": jnp.array([-1.0, -0.2])}


def _token_lp():
  lp = np.asarray(jax.nn.log_softmax(LOGITS))
  return np.array([[lp[0, 0, 0], lp[0, 1, 1]], [lp[1, 0, 2], 0.0]])


def test_bc_is_the_token_mean_nll():
  t = _token_lp()
  loss, _ = losses.OfflineRLLoss("bc").from_logits(LOGITS, BATCH)
  np.testing.assert_allclose(loss, -(t[0, 0] + t[0, 1] + t[1, 0]) / 3, rtol=1e-6)


def test_gold_weights_tokens_by_their_clipped_probability_and_reward():
  t = _token_lp()
  p = np.maximum(np.exp(t), 0.1)
  expected = -(p[0, 0] * 0.9 * t[0, 0] + p[0, 1] * 0.9 * t[0, 1] + p[1, 0] * 0.3 * t[1, 0]) / 3
  loss, _ = losses.OfflineRLLoss("gold", gold_min_prob=0.1).from_logits(LOGITS, BATCH)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_bvmpo_weights_the_top_advantages_by_a_softmax():
  t = _token_lp()
  mean_lp = np.array([(t[0, 0] + t[0, 1]) / 2, t[1, 0]])
  loss, m = losses.OfflineRLLoss("bvmpo", temperature=0.1, top_fraction=0.5).from_logits(
      LOGITS, BATCH)
  np.testing.assert_allclose(loss, -mean_lp[0], rtol=1e-6)  # only the better row is kept
  loss_all, _ = losses.OfflineRLLoss("bvmpo", temperature=0.2, top_fraction=1.0).from_logits(
      LOGITS, BATCH)
  psi = np.exp(np.array([0.4, -0.2]) / 0.2)
  psi /= psi.sum()
  np.testing.assert_allclose(loss_all, -(psi * mean_lp).sum(), rtol=1e-6)
  assert float(m["kept_fraction"].compute()) == pytest.approx(0.5)


def test_oac_uses_clipped_importance_ratios_and_advantages():
  t = _token_lp()
  seq = np.array([t[0, 0] + t[0, 1], t[1, 0]])
  ratio = np.minimum(np.exp(seq - np.array([-1.0, -0.2])), 2.0)
  mean_lp = np.array([seq[0] / 2, seq[1]])
  expected = -np.mean(ratio * np.array([0.4, -0.2]) * mean_lp)
  loss, _ = losses.OfflineRLLoss("oac", max_ratio=2.0).from_logits(LOGITS, BATCH)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["bc", "gold", "bvmpo", "oac"])
def test_raising_the_high_reward_sample_lowers_the_loss(name):
  loss_fn = losses.OfflineRLLoss(name, top_fraction=0.5)
  grad = jax.grad(lambda lg: loss_fn.from_logits(lg, BATCH)[0])(LOGITS)
  # Row 0 has reward 0.9 (positive advantage): more logit on its targets = lower loss.
  assert grad[0, 0, 0] < 0 and grad[0, 1, 1] < 0


def test_unknown_loss_is_an_error():
  with pytest.raises(ValueError, match="unknown Improve loss 'ppo'"):
    losses.OfflineRLLoss("ppo")
