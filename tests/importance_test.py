"""Importance ratios and the KL to BC at the behaviour policy: 1 and 0, with dropout on
(they come from a dropout-free pass) and in bfloat16 (the stored log-probabilities and the
training pass agree within the stated tolerance)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rest_jax import inference, losses, partitioning, sampling, trainer as trainer_lib
from tests.conftest import init_params, make_model

ROWS, LENGTH = 8, 6
# In bfloat16 Grow stores the log-probabilities of a teacher-forced pass, the computation
# Improve trains with: measured equal to it (0.0 nats), where the cached decode's own
# values differ by up to 0.04 nats per 12-token sequence of the tiny model. A sequence's
# log-ratio at the behaviour policy stays within:
BF16_SEQUENCE_TOLERANCE = 1e-4


def _behaviour_rows(model, params, temperature=1.0, seed=0):
  """Samples of the model with their stored behaviour log-probabilities, as Grow stores them."""
  sources = np.random.RandomState(seed).randint(2, 60, size=(ROWS, LENGTH)).astype(np.int32)
  cfg = sampling.SamplingConfig(temperature=temperature)
  tokens, aux = model.predict_batch_with_aux(
      params, {"encoder_input_tokens": sources,
               "decoder_input_tokens": np.zeros((ROWS, LENGTH), np.int32)},
      rng=jax.random.split(jax.random.PRNGKey(seed), ROWS).reshape(ROWS, 1, 2), num_decodes=1,
      return_all_decodes=True,
      decoder_params={**cfg.decoder_params(model.decode_fn), "return_token_log_probs": True})
  out = {"tokens": tokens, "behaviour_log_probs": aux["token_log_probs"]}
  tokens = np.asarray(out["tokens"])[:, 0]
  mask = np.asarray(inference.through_first_eos(tokens, 1))
  targets = np.where(mask, np.maximum(tokens, 1), 0)
  ones = np.ones(ROWS, np.float32)
  return {"encoder_input_tokens": sources,
          "decoder_input_tokens": np.concatenate([np.zeros((ROWS, 1), np.int32),
                                                  targets[:, :-1]], 1),
          "decoder_target_tokens": targets, "decoder_loss_weights": mask.astype(np.int32),
          "behaviour_log_probs": np.asarray(out["behaviour_log_probs"])[:, 0] * mask,
          "reward": ones, "value": 0.5 * ones, "value_loo": 0.5 * ones,
          "is_reference": 0 * ones, "scored": ones}


def _log_ratios(model, params, batch):
  """Per-sequence log pi/mu of the training pass (dropout off) against the stored mu."""
  logits = model._compute_logits(params, batch)  # pylint: disable=protected-access
  lp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)),
                           batch["decoder_target_tokens"][..., None], -1)[..., 0]
  mask = batch["decoder_loss_weights"]
  return np.asarray(jnp.sum((lp - batch["behaviour_log_probs"]) * mask, -1))


def test_ratios_and_kl_at_the_behaviour_policy_with_dropout_on():
  model = make_model(dropout_rate=0.3)
  params = init_params(model)
  batch = _behaviour_rows(model, params)
  assert batch["decoder_loss_weights"].sum() > ROWS  # real samples, not all EOS at once
  rng = jax.random.PRNGKey(7)
  _, oac = losses.OfflineRLLoss("oac", max_ratio=100.0)(model, params, batch, rng)
  np.testing.assert_allclose(float(oac["importance_ratio"].compute()), 1.0, atol=1e-4)
  _, gold = losses.OfflineRLLoss("gold", gold_min_weight=0.0, gold_max_weight=100.0)(
      model, params, batch, rng)
  np.testing.assert_allclose(float(gold["token_weight"].compute()), 1.0, atol=1e-4)
  _, bvmpo = losses.OfflineRLLoss("bvmpo")(model, params, batch, rng,
                                           reference_params=params, kl_weight=1.0)
  assert abs(float(bvmpo["kl_to_bc"].compute())) < 1e-6
  # The policy-gradient term still trains through dropout: another key, another loss.
  loss_a, _ = losses.OfflineRLLoss("oac", max_ratio=100.0)(model, params, batch, rng)
  loss_b, _ = losses.OfflineRLLoss("oac", max_ratio=100.0)(model, params, batch,
                                                           jax.random.PRNGKey(8))
  assert float(loss_a) != float(loss_b)


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_ratios_at_the_behaviour_policy_in_bfloat16(temperature):
  """Grow's stored behaviour log-probabilities of a bf16 model (dropout off) against the
  training pass: every sequence's importance ratio at the behaviour policy is 1."""
  model = make_model(dtype=jnp.bfloat16)
  assert not inference.computes_in_float32(model)
  partitioner = partitioning.Partitioner(mesh_shape=(1, 1), devices=jax.devices()[:1])
  trainer = trainer_lib.Trainer(model, partitioner,
                                trainer_lib.batch_input_shapes(ROWS, {"inputs": LENGTH,
                                                                      "targets": LENGTH}))
  params = trainer.init_state(jax.random.PRNGKey(0)).params
  cfg = sampling.SamplingConfig(temperature=temperature)
  decoder = inference.PolicyDecoder(model, partitioner, trainer.params_sharding, 1, cfg,
                                    token_log_probs=True)
  sources = np.random.RandomState(0).randint(2, 60, size=(ROWS, LENGTH)).astype(np.int32)
  out = decoder(params, sources, LENGTH, inference.sample_keys(0, 1, np.arange(ROWS), 1))
  tokens = np.asarray(out["tokens"])[:, 0]
  mask = np.asarray(inference.through_first_eos(tokens, 1))
  batch = {"encoder_input_tokens": sources,
           "decoder_input_tokens": np.concatenate([np.zeros((ROWS, 1), np.int32),
                                                   tokens[:, :-1]], 1),
           "decoder_target_tokens": np.where(mask, np.maximum(tokens, 1), 0),
           "decoder_loss_weights": mask.astype(np.int32)}

  @jax.jit
  def training_pass(p, b):  # compiled, as the train step computes it
    logits = model._compute_logits(p, b).astype(jnp.float32)  # pylint: disable=protected-access
    return jnp.take_along_axis(cfg.log_probs(logits), tokens[..., None], -1)[..., 0]

  mu = np.asarray(out["behaviour_log_probs"])[:, 0]
  log_ratio = np.sum((np.asarray(training_pass(params, batch)) - mu) * mask, -1)
  assert mask.sum() > ROWS and np.max(np.abs(log_ratio)) < BF16_SEQUENCE_TOLERANCE, log_ratio
