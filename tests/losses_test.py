"""The Improve losses: each against an independent numpy computation of its formula, its
gradient against finite differences on a tiny model, and each raising the expected reward
of a toy problem whose best answer is known."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rest_jax import inference, losses, partitioning, sampling, trainer as trainer_lib
from tests.conftest import init_params, make_model

RNG = np.random.RandomState(0)
B, L, V = 4, 3, 5
LOGITS = RNG.randn(B, L, V).astype(np.float32)
REF_LOGITS = RNG.randn(B, L, V).astype(np.float32)
BATCH = {
    "decoder_target_tokens": np.array([[1, 2, 3], [4, 1, 0], [2, 2, 1], [3, 0, 0]], np.int32),
    "decoder_loss_weights": np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]], np.int32),
    "reward": np.array([0.9, 0.3, 0.6, 0.8], np.float32),
    "value": np.array([0.5, 0.5, 0.7, 0.7], np.float32),
    "value_loo": np.array([0.3, 0.9, 0.8, 0.6], np.float32),
    "is_reference": np.array([0, 0, 0, 1], np.float32),
    "scored": np.array([1, 1, 1, 1], np.float32),
    "behaviour_log_probs": -np.abs(RNG.randn(B, L)).astype(np.float32),
}


# --- independent numpy versions of the formulas in rest_jax/losses.py ---------------------

def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _token_lp(logits, batch):
  lp = _log_softmax(np.asarray(logits, np.float64))
  t = batch["decoder_target_tokens"]
  out = np.zeros(t.shape)
  for i in range(t.shape[0]):
    for j in range(t.shape[1]):
      out[i, j] = lp[i, j, t[i, j]]
  return out


def numpy_loss(cfg, logits, batch, ref_logits=None, kl_weight=0.0):
  m = batch["decoder_loss_weights"].astype(np.float64)
  lp = _token_lp(logits, batch)
  b = batch["behaviour_log_probs"]
  R = batch["reward"]
  n_tokens = m.sum()
  rows = [i for i in range(len(R)) if m[i].sum() > 0]
  S = [(m[i] * lp[i]).sum() for i in range(len(R))]
  if cfg.name == "bc":
    return -sum(S) / n_tokens
  if cfg.name == "gold":
    total = 0.0
    for i in rows:
      for t in range(m.shape[1]):
        if not m[i, t]:
          continue
        if batch["is_reference"][i] or cfg.gold_behaviour == "uniform":
          w = max(math.exp(lp[i, t]), cfg.gold_min_weight)
        else:
          w = min(max(math.exp(lp[i, t] - b[i, t]), cfg.gold_min_weight), cfg.gold_max_weight)
        total += w * R[i] * lp[i, t]
    return -total / n_tokens
  if cfg.name == "bvmpo":
    A = {i: R[i] - batch["value"][i] for i in rows}
    k = math.ceil(cfg.top_fraction * len(R))
    top = sorted(rows, key=lambda i: -A[i])[:k]
    z = sum(math.exp(A[i] / cfg.temperature) for i in top)
    mean_len = n_tokens / len(rows)
    loss = -sum(math.exp(A[i] / cfg.temperature) / z * S[i] for i in top) / mean_len
    if ref_logits is not None:
      ref = _log_softmax(np.asarray(ref_logits, np.float64))
      cur = _log_softmax(np.asarray(logits, np.float64))
      kl = sum(m[i, t] * np.sum(np.exp(ref[i, t]) * (ref[i, t] - cur[i, t]))
               for i in rows for t in range(m.shape[1])) / n_tokens
      loss += kl_weight * kl
    return loss
  # oac
  total = 0.0
  for i in rows:
    rho = min(math.exp((m[i] * (lp[i] - b[i])).sum()), cfg.max_ratio)
    total += rho * (R[i] - batch["value_loo"][i]) * S[i]
  return -total / n_tokens


CONFIGS = [
    losses.OfflineRLLoss("bc"),
    losses.OfflineRLLoss("gold", gold_min_weight=0.15, gold_max_weight=1.0),
    losses.OfflineRLLoss("gold", gold_behaviour="uniform"),
    losses.OfflineRLLoss("bvmpo", temperature=0.2, top_fraction=0.5),
    losses.OfflineRLLoss("bvmpo", temperature=0.5, top_fraction=1.0, kl_start=0.0, kl_end=0.0),
    losses.OfflineRLLoss("oac", max_ratio=1.0),
    losses.OfflineRLLoss("oac", max_ratio=5.0),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.name}-{c.gold_behaviour}"
                         f"-{c.top_fraction}-{c.max_ratio}-{c.kl_start}")
def test_each_loss_equals_its_formula_in_numpy(cfg):
  ref = REF_LOGITS if cfg.uses_reference_policy else None
  loss, metrics = cfg.from_logits(jnp.asarray(LOGITS), BATCH, ref, 0.3)
  np.testing.assert_allclose(float(loss), numpy_loss(cfg, LOGITS, BATCH, ref, 0.3), rtol=2e-5)
  assert np.isfinite(float(metrics["accuracy"].compute()))


def test_bvmpo_kl_term_and_its_annealing():
  cfg = losses.OfflineRLLoss("bvmpo", temperature=0.2)
  without, _ = cfg.from_logits(jnp.asarray(LOGITS), BATCH)
  with_kl, metrics = cfg.from_logits(jnp.asarray(LOGITS), BATCH, REF_LOGITS, 0.5)
  kl = float(metrics["kl_to_bc"].compute())
  assert kl > 0
  np.testing.assert_allclose(float(with_kl) - float(without), 0.5 * kl, rtol=1e-5)
  # The KL of a policy to itself is 0.
  _, same = cfg.from_logits(jnp.asarray(LOGITS), BATCH, LOGITS, 1.0)
  assert abs(float(same["kl_to_bc"].compute())) < 1e-6
  # lambda: 1 at the run's first Improve step, 1e-5 at its last, geometric between.
  weights = [cfg.kl_weight(k, 5) for k in range(5)]
  np.testing.assert_allclose(weights, np.geomspace(1.0, 1e-5, 5), rtol=1e-9)
  assert cfg.kl_weight(0, 1) == 1.0
  assert losses.OfflineRLLoss("bc").kl_weight(2, 5) == 0.0


def test_losses_that_need_rewards_refuse_unscored_rows():
  for name in ("bvmpo", "oac"):
    with pytest.raises(ValueError, match=f"'{name}' needs a reward and a baseline for every"
                       " row, but 3 mixed-in pairs have none"):
      losses.OfflineRLLoss(name).validate_rows(3, "mixed-in pairs")
  for name in ("bc", "gold"):
    losses.OfflineRLLoss(name).validate_rows(3, "mixed-in pairs")
  with pytest.raises(ValueError, match="unknown Improve loss 'ppo'"):
    losses.OfflineRLLoss("ppo")
  with pytest.raises(ValueError, match="both be positive"):
    losses.OfflineRLLoss("bvmpo", kl_start=1.0, kl_end=0.0)


# --- gradients against finite differences on a tiny model -------------------------------

def _tiny_batch():
  enc = np.array([[5, 6, 7, 1], [8, 9, 1, 0], [5, 9, 1, 0], [7, 7, 6, 1]], np.int32)
  batch = {k: v for k, v in BATCH.items()}
  tgt = batch["decoder_target_tokens"] + 2 * (batch["decoder_target_tokens"] > 0)
  batch["decoder_target_tokens"] = tgt
  batch["decoder_input_tokens"] = np.concatenate([np.zeros((B, 1), np.int32), tgt[:, :-1]], 1)
  batch["encoder_input_tokens"] = enc
  return batch


@pytest.mark.parametrize("name", ["bc", "gold", "bvmpo", "oac"])
def test_gradient_matches_finite_differences(name):
  """The gradient is the derivative of the loss with its weights held at their values.

  Importance and softmax weights are constants of the update (stop-gradient), so the
  finite difference is taken with them computed from the unperturbed policy
  (`weight_logits`, Pang & He's synced copy of the policy).
  """
  model = make_model(vocab_size=16)
  params = init_params(model, seed=3)
  reference = init_params(model, seed=4)
  batch = _tiny_batch()
  # Behaviour log-probabilities near the policy's, so that importance ratios are O(1).
  lp = np.asarray(losses._picked_log_probs(model._compute_logits(params, batch),
                                           batch["decoder_target_tokens"]))
  batch["behaviour_log_probs"] = (lp + 0.2 * RNG.randn(*lp.shape)).astype(np.float32)
  cfg = losses.OfflineRLLoss(name, temperature=0.3, max_ratio=3.0)
  args = {"reference_params": reference, "kl_weight": 0.7} if cfg.uses_reference_policy else {}
  grads = jax.grad(lambda p: cfg(model, p, batch, None, **args)[0])(params)
  logits0 = model._compute_logits(params, batch)
  ref_logits = model._compute_logits(reference, batch) if args else None

  def frozen(p):
    return cfg.from_logits(model._compute_logits(p, batch), batch, ref_logits,
                           args.get("kl_weight"), weight_logits=logits0)[0]

  direction = jax.tree_util.tree_map(
      lambda x: jax.random.normal(jax.random.PRNGKey(x.size), x.shape), params)
  norm = optax.global_norm(direction)
  direction = jax.tree_util.tree_map(lambda d: d / norm, direction)
  eps = 1e-2
  shift = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * d, params, direction)  # noqa: E731
  numeric = (float(frozen(shift(eps))) - float(frozen(shift(-eps)))) / (2 * eps)
  analytic = sum(float(jnp.sum(g * d)) for g, d in zip(jax.tree_util.tree_leaves(grads),
                                                         jax.tree_util.tree_leaves(direction)))
  assert abs(analytic) > 1e-3
  np.testing.assert_allclose(analytic, numeric, rtol=2e-2, atol=2e-4)


# --- a toy problem with a known best answer ------------------------------------------------

EOS = 1
BEST = (3, 4, EOS)
TOY_VOCAB = 6  # 0 pad, 1 EOS, 2..5 words


def toy_reward(seq):
  """1 for the best answer; partial credit for each position that matches it."""
  seq = tuple(seq)
  if seq == BEST:
    return 1.0
  return 0.5 * sum(a == b for a, b in zip(seq, BEST)) / len(BEST)


WORDS = (0, 2, 3, 4, 5)  # a sampler may draw the padding id too


def _all_sequences():
  """Every distinct decode of length <= 3 (ended by EOS or cut at 3 tokens)."""
  out = []
  for n in (1, 2, 3):
    for prefix in itertools.product(WORDS, repeat=n - 1):
      out.append(prefix + (EOS,))
  out += list(itertools.product(WORDS, repeat=3))  # cut, no EOS
  return out


def expected_reward(model, params, source):
  """sum_y pi(y | x) R(y) over every possible decode, exactly."""
  seqs = _all_sequences()
  tgt = np.zeros((len(seqs), 3), np.int32)
  for i, s in enumerate(seqs):
    tgt[i, : len(s)] = s
  _, policy = inference.teacher_forced_log_probs(
      model, params, np.repeat(source[None], len(seqs), 0), tgt,
      sampling.SamplingConfig(temperature=1.0), EOS)
  probs = np.exp(np.asarray(policy, np.float64).sum(-1))
  assert abs(probs.sum() - 1.0) < 1e-3, probs.sum()
  return float(np.sum(probs * np.array([toy_reward(s) for s in seqs])))


def _grow_rows(model, params, source, sources, samples, key):
  """N samples for each of `sources` copies of the source, with the rows' loss features."""
  cfg = sampling.SamplingConfig(temperature=0.8)
  decodes, aux = model.predict_batch_with_aux(
      params, {"encoder_input_tokens": np.repeat(source[None], sources, 0),
               "decoder_input_tokens": np.zeros((sources, 3), np.int32)},
      rng=jax.random.split(key, sources * samples).reshape(sources, samples, 2),
      num_decodes=samples, return_all_decodes=True,
      decoder_params={**cfg.decoder_params(model.decode_fn), "return_token_log_probs": True})
  decodes = np.asarray(decodes).reshape(-1, 3)
  behaviour = np.asarray(aux["token_log_probs"]).reshape(-1, 3)
  rewards = np.array([toy_reward(d[: list(d).index(EOS) + 1] if EOS in d else d)
                      for d in decodes], np.float32)
  group = rewards.reshape(sources, samples)
  value = np.repeat(group.mean(1), samples)
  loo = ((group.sum(1, keepdims=True) - group) / (samples - 1)).reshape(-1)
  return {"encoder_input_tokens": np.repeat(source[None], len(decodes), 0),
          "decoder_input_tokens": np.concatenate([np.zeros((len(decodes), 1), np.int32),
                                                  decodes[:, :-1]], 1),
          "decoder_target_tokens": decodes,
          "decoder_loss_weights": (decodes > 0).astype(np.int32),
          "behaviour_log_probs": behaviour, "reward": rewards, "value": value,
          "value_loo": loo.astype(np.float32), "is_reference": np.zeros_like(rewards),
          "scored": np.ones_like(rewards)}


@pytest.mark.parametrize("name", ["bc", "gold", "bvmpo", "oac"])
def test_each_loss_raises_the_expected_reward_of_a_toy_problem(name):
  model = make_model(vocab_size=TOY_VOCAB, num_encoder_layers=1, num_decoder_layers=1)
  source = np.array([2, 3, 1, 0], np.int32)
  params = init_params(model, batch=4, length=4, seed=11)
  bc_params = params
  start = expected_reward(model, params, source)
  cfg = losses.OfflineRLLoss(name, temperature=0.1, kl_start=1.0, kl_end=1e-2)
  rows = _grow_rows(model, params, source, sources=32, samples=8, key=jax.random.PRNGKey(5))
  one_device = partitioning.Partitioner(mesh_shape=(1, 1), devices=jax.devices()[:1])
  trainer = trainer_lib.Trainer(model, one_device,
                                trainer_lib.batch_input_shapes(32, {"inputs": 4, "targets": 3}),
                                optimizer=optax.adam(1e-2), loss_fn=cfg)
  state = trainer.state_from_params(params)
  for i, tau in enumerate((0.0, 0.1)):  # two Improve steps at rising thresholds
    kept = {k: v[rows["reward"] >= tau] for k, v in rows.items()}
    args = ({"reference_params": bc_params, "kl_weight": np.float32(cfg.kl_weight(i, 2))}
            if cfg.uses_reference_policy else {})
    for step in range(30):
      pick = np.random.RandomState(100 * i + step).choice(len(kept["reward"]), 32)
      state, _ = trainer.train_step(state, {k: v[pick] for k, v in kept.items()},
                                    jax.random.PRNGKey(0), args)
  end = expected_reward(model, state.params, source)
  # From a near-uniform policy (E[R] 0.02) every loss multiplies the expected reward.
  assert end > 3 * start and end > start + 0.05, (name, start, end)
