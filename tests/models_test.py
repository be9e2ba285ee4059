"""The t5x model API of the built-in model: shapes, values and a slow reference decoder."""

import jax
import jax.numpy as jnp
import numpy as np

from rest_jax import decoding, inference, sampling
from tests.conftest import init_params, make_model

ENC = np.array([[5, 6, 7, 9, 1, 0, 0, 0], [8, 9, 10, 11, 12, 13, 1, 0]], np.int32)
TGT = np.array([[3, 4, 1, 0, 0, 0, 0, 0], [5, 6, 7, 1, 0, 0, 0, 0]], np.int32)


def _batch():
  dec_in = np.concatenate([np.zeros((2, 1), np.int32), TGT[:, :-1]], axis=1)
  return {"encoder_input_tokens": ENC, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": TGT, "decoder_loss_weights": (TGT > 0).astype(np.int32)}


def test_parameter_tree_follows_t5x_names_and_axes():
  model = make_model()
  variables = model.get_initial_variables(
      jax.random.PRNGKey(0), {k: (2, 8) for k in ("encoder_input_tokens", "decoder_input_tokens",
                                                   "decoder_target_tokens")})
  params, axes = variables["params"], variables["params_axes"]
  # t5x's layout: attention kernels are 2-D, `[embed, heads * kv]` and `[heads * kv, embed]`.
  assert params["encoder"]["layers_0"]["attention"]["query"]["kernel"].shape == (32, 32)
  assert axes["encoder"]["layers_0"]["attention"]["query"]["kernel_axes"].names == (
      "embed", "joined_kv")
  assert params["decoder"]["layers_1"]["encoder_decoder_attention"]["out"]["kernel"].shape == (
      32, 32)
  assert params["decoder"]["logits_dense"]["kernel"].shape == (32, 64)
  assert axes["token_embedder"]["embedding_axes"].names == ("vocab", "embed")
  assert axes["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel_axes"].names == ("embed", "mlp")


def test_loss_and_score_agree_with_log_softmax():
  model = make_model()
  params = init_params(model)
  batch = _batch()
  logits = model._compute_logits(params, batch)
  assert logits.shape == (2, 8, 64)
  log_probs = np.asarray(jax.nn.log_softmax(logits))
  expected = np.array([sum(log_probs[b, i, TGT[b, i]] for i in range(8) if TGT[b, i])
                       for b in range(2)])
  np.testing.assert_allclose(model.score_batch(params, batch), expected, rtol=1e-5)
  loss, metrics = model.loss_fn(params, batch, None)
  z = model._z_loss * np.square(jax.nn.logsumexp(logits, -1))
  nll = -(expected.sum()) + float(np.sum(z * (TGT > 0)))
  np.testing.assert_allclose(loss, nll, rtol=1e-5)  # t5x default: a sum over tokens
  assert 0.0 <= float(metrics["accuracy"].compute()) <= 1.0


def _reference_sample(model, params, enc, num_decodes, length, rng, temperature):
  """Slow sampler: recomputes the whole decoder for every position (no cache)."""
  rows = enc.shape[0] * num_decodes
  enc_rows = np.repeat(enc, num_decodes, axis=0)
  keys = decoding._row_keys(rng, rows)
  tokens = np.zeros((rows, length), np.int32)
  log_prob = np.zeros(rows)
  ended = np.zeros(rows, bool)
  for step in range(length):
    dec_in = np.concatenate([np.zeros((rows, 1), np.int32), tokens[:, :-1]], axis=1)
    batch = {"encoder_input_tokens": enc_rows, "decoder_input_tokens": dec_in,
             "decoder_target_tokens": np.ones_like(dec_in)}
    logits = model._compute_logits(params, batch)[:, step]
    u = decoding._uniform_per_row(keys, jnp.int32(step))
    tok, lp, _ = decoding.sample_logits(logits, u, temperature=temperature)
    tok, lp = np.where(ended, 0, tok), np.where(ended, 0.0, lp)
    tokens[:, step] = tok
    log_prob += lp
    ended |= tok == 1
  return tokens.reshape(enc.shape[0], num_decodes, length), log_prob.reshape(-1, num_decodes)


def _sorted(decodes, scores):
  order = np.argsort(scores, axis=-1)
  return (np.take_along_axis(decodes, order[:, :, None], 1), np.take_along_axis(scores, order, 1))


def test_cached_sampling_equals_uncached_sampling():
  model = make_model()
  params = init_params(model, seed=1)
  rng = jax.random.PRNGKey(7)
  batch = {"encoder_input_tokens": ENC, "decoder_input_tokens": np.zeros((2, 8), np.int32)}
  decodes, aux = model.predict_batch_with_aux(
      params, batch, rng=rng, num_decodes=3, return_all_decodes=True,
      decoder_params={"temperature": 1.5})
  assert decodes.shape == (2, 3, 8) and aux["scores"].shape == (2, 3)
  ref_decodes, ref_scores = _sorted(*_reference_sample(model, params, ENC, 3, 8, rng, 1.5))
  np.testing.assert_array_equal(decodes, ref_decodes)
  np.testing.assert_allclose(aux["scores"], ref_scores, rtol=1e-4, atol=1e-4)
  # The per-token log-probabilities the sampler returns equal a teacher-forced
  # recomputation: under the tempered distribution (behaviour) and at T = 1 (policy).
  _, aux_tokens = model.predict_batch_with_aux(
      params, batch, rng=rng, num_decodes=3, return_all_decodes=True,
      decoder_params={"temperature": 1.5, "return_token_log_probs": True})
  flat = np.asarray(decodes).reshape(6, 8)
  behaviour, policy = inference.teacher_forced_log_probs(
      model, params, np.repeat(ENC, 3, 0), flat, sampling.SamplingConfig(temperature=1.5), 1)
  np.testing.assert_allclose(np.asarray(aux_tokens["token_log_probs"]).reshape(6, 8),
                             behaviour, atol=2e-5)
  np.testing.assert_allclose(np.asarray(aux_tokens["policy_token_log_probs"]).reshape(6, 8),
                             policy, atol=2e-5)
  np.testing.assert_allclose(np.asarray(behaviour).sum(-1), np.asarray(aux["scores"]).reshape(6),
                             atol=1e-4)
  assert not np.allclose(behaviour, policy)


def test_beam_of_one_equals_greedy():
  params = init_params(make_model(), seed=2)
  batch = {"encoder_input_tokens": ENC, "decoder_input_tokens": np.zeros((2, 8), np.int32)}
  greedy, _ = make_model().predict_batch_with_aux(
      params, batch, decoder_params={"temperature": 0.0})
  beam, aux = make_model(decoding.beam_search).predict_batch_with_aux(
      params, batch, num_decodes=1, decoder_params={"alpha": 0.0})
  np.testing.assert_array_equal(beam, greedy)
  wide, wide_aux = make_model(decoding.beam_search).predict_batch_with_aux(
      params, batch, num_decodes=4, decoder_params={"alpha": 0.0})
  assert np.all(np.asarray(wide_aux["scores"]) >= np.asarray(aux["scores"]) - 1e-5)


def test_tied_embeddings_and_dropout():
  model = make_model(logits_via_embedding=True, dropout_rate=0.5)
  params = init_params(model)
  assert "logits_dense" not in params["decoder"]
  batch = _batch()
  a = model._compute_logits(params, batch, dropout_rng=jax.random.PRNGKey(0))
  b = model._compute_logits(params, batch, dropout_rng=jax.random.PRNGKey(1))
  c = model._compute_logits(params, batch)
  assert not np.allclose(a, b)
  np.testing.assert_allclose(c, model._compute_logits(params, batch), rtol=1e-6)


def test_cross_entropy_gradient_matches_autodiff():
  from rest_jax.models import model as models

  logits = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 11)) * 3
  targets = jax.random.randint(jax.random.PRNGKey(1), (3, 5), 0, 11)
  weights = jax.random.uniform(jax.random.PRNGKey(2), (3, 5))
  for z_loss, smoothing in [(0.0, 0.0), (1e-2, 0.0), (1e-3, 0.1)]:

    def reference(lg):
      vocab = lg.shape[-1]
      log_probs = jax.nn.log_softmax(lg)
      soft = jax.nn.one_hot(targets, vocab) * (1 - smoothing - smoothing / (vocab - 1)) + (
          smoothing / (vocab - 1))
      entropy = -jnp.sum(jnp.where(soft > 0, soft * jnp.log(soft), 0.0), -1)
      z = jax.nn.logsumexp(lg, -1)
      return jnp.sum(weights * (-jnp.sum(soft * log_probs, -1) - entropy + z_loss * z**2))

    ours = lambda lg: jnp.sum(  # noqa: E731
        weights * models.cross_entropy_with_logits(lg, targets, z_loss, smoothing)[0])
    np.testing.assert_allclose(ours(logits), reference(logits), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(reference)(logits), atol=1e-5)


def test_bfloat16_activations_are_selectable_and_the_default_of_the_big_sizes():
  import gin

  for size, want in (("tiny", "float32"), ("small", "bfloat16"), ("base", "bfloat16")):
    gin.clear_config()
    try:
      gin.parse_config_file(f"gin/models/t5_1_1_{size}.gin")
      assert gin.query_parameter("%ACTIVATION_DTYPE") == want, size
    finally:
      gin.clear_config()
  shapes = {k: (2, 8) for k in ("encoder_input_tokens", "decoder_input_tokens",
                                 "decoder_target_tokens")}
  batch = {k: np.random.default_rng(0).integers(2, 60, v).astype(np.int32)
           for k, v in shapes.items()}
  logits = {}
  for dtype in ("float32", "bfloat16"):
    model = make_model(dtype=dtype)
    params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
    assert jax.tree_util.tree_leaves(params)[0].dtype == np.float32  # parameters stay f32
    logits[dtype] = np.asarray(model._compute_logits(params, batch), np.float32)  # pylint: disable=protected-access
  assert np.mean(logits["float32"].argmax(-1) == logits["bfloat16"].argmax(-1)) > 0.9
  np.testing.assert_allclose(logits["bfloat16"], logits["float32"], atol=0.1)
