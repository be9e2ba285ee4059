"""Decoding on hand-made logits: exact tokens, stopping, top-k/top-p, beam search."""

import jax
import jax.numpy as jnp
import numpy as np

from rest_jax import decoding


def _table_callback(table):
  """Logits depend only on the current token: `table[token]` (a Markov chain)."""
  table = jnp.asarray(table, jnp.float32)

  def tokens_to_logits(tokens, step, cache, phase):
    return table[tokens], cache + 1

  return tokens_to_logits


def test_greedy_follows_the_argmax_chain_and_stops_at_eos():
  # 0 -> 3 -> 2 -> 1 (EOS); from 1 anything.
  table = np.full((4, 4), -10.0)
  table[0, 3] = table[3, 2] = table[2, 1] = table[1, 1] = 5.0
  decodes, scores, per_token = decoding.temperature_sample(
      _table_callback(table), jnp.zeros(()), batch_size=2, max_decode_length=6,
      rng=jax.random.PRNGKey(0), eos_id=1, temperature=0.0, return_token_log_probs=True)
  np.testing.assert_array_equal(decodes[:, 0], [[3, 2, 1, 0, 0, 0]] * 2)
  # Greedy is deterministic: its behaviour log-probability is 0 (as t5x's with
  # rescale_log_probs); the policy's per-token log-probabilities are the model's.
  np.testing.assert_array_equal(scores, 0.0)
  np.testing.assert_array_equal(per_token["behaviour"], 0.0)
  step_lp = float(jax.nn.log_softmax(jnp.asarray(table[0]))[3])
  np.testing.assert_allclose(per_token["policy"][:, 0], [[step_lp] * 3 + [0.0] * 3] * 2,
                             rtol=1e-5)


def test_loop_stops_when_every_row_ended():
  table = np.full((4, 4), -10.0)
  table[0, 1] = table[1, 1] = 10.0
  calls = []

  def tokens_to_logits(tokens, step, cache, phase):
    jax.debug.callback(lambda s: calls.append(int(s)), step)
    return jnp.asarray(table)[tokens], cache

  decodes, _ = decoding.temperature_sample(
      tokens_to_logits, jnp.zeros(()), batch_size=2, max_decode_length=50,
      rng=jax.random.PRNGKey(0), eos_id=1, temperature=0.0)
  jax.effects_barrier()
  assert calls == [0]  # one step, not fifty
  np.testing.assert_array_equal(decodes[:, 0, :3], [[1, 0, 0]] * 2)


def test_sampling_matches_the_distribution():
  probs = np.array([0.0, 0.1, 0.2, 0.3, 0.4] + [0.0] * 251)  # vocab 256: two levels
  logits = np.log(np.maximum(probs, 1e-30))
  rows = 20000
  u = jax.random.uniform(jax.random.PRNGKey(1), (rows,))
  tokens, log_probs, policy = decoding.sample_logits(
      jnp.tile(jnp.asarray(logits, jnp.float32), (rows, 1)), u, block_size=16)
  freq = np.bincount(np.asarray(tokens), minlength=256)[:5] / rows
  np.testing.assert_allclose(freq, probs[:5], atol=0.015)
  np.testing.assert_allclose(np.exp(log_probs), probs[np.asarray(tokens)], rtol=1e-4)
  np.testing.assert_allclose(policy, log_probs, rtol=1e-6)  # T = 1: behaviour = policy


def test_topk_and_topp_restrict_the_support():
  probs = np.array([0.05, 0.15, 0.3, 0.5])
  logits = jnp.log(jnp.array([probs] * 4000))
  u = jax.random.uniform(jax.random.PRNGKey(2), (4000,))
  topk, topk_lp, policy = decoding.sample_logits(logits, u, topk=2)
  assert set(np.unique(np.asarray(topk))) == {2, 3}
  # Behaviour: the renormalised top-2 distribution; policy: the model's own.
  np.testing.assert_allclose(np.exp(topk_lp), probs[np.asarray(topk)] / 0.8, rtol=1e-5)
  np.testing.assert_allclose(np.exp(policy), probs[np.asarray(topk)], rtol=1e-5)
  topp, topp_lp, _ = decoding.sample_logits(logits, u, topp=0.6)  # {3: .5, 2: .3} reach .6
  assert set(np.unique(np.asarray(topp))) == {2, 3}
  np.testing.assert_allclose(np.exp(topp_lp), probs[np.asarray(topp)] / 0.8, rtol=1e-5)
  greedy, greedy_lp, _ = decoding.sample_logits(logits, u, temperature=0.0)
  assert set(np.unique(np.asarray(greedy))) == {3}
  np.testing.assert_array_equal(greedy_lp, 0.0)


def test_tempered_log_probs_are_the_tempered_distribution():
  probs = np.array([0.05, 0.15, 0.3, 0.5])
  logits = jnp.log(jnp.array([probs] * 3000))
  u = jax.random.uniform(jax.random.PRNGKey(3), (3000,))
  tokens, behaviour, policy = decoding.sample_logits(logits, u, temperature=0.8)
  tempered = probs ** (1 / 0.8) / np.sum(probs ** (1 / 0.8))
  tokens = np.asarray(tokens)
  np.testing.assert_allclose(np.exp(behaviour), tempered[tokens], rtol=1e-5)
  np.testing.assert_allclose(np.exp(policy), probs[tokens], rtol=1e-5)
  np.testing.assert_allclose(np.bincount(tokens, minlength=4) / 3000, tempered, atol=0.02)


def test_per_row_keys_make_a_sample_independent_of_its_batch():
  table = np.random.RandomState(0).randn(8, 8)
  keys = jax.random.split(jax.random.PRNGKey(3), 6).reshape(3, 2, 2)
  run = lambda k, b: decoding.temperature_sample(  # noqa: E731
      _table_callback(table), jnp.zeros(()), batch_size=b, num_decodes=2,
      max_decode_length=10, rng=k, eos_id=None)
  full, _ = run(keys, 3)
  alone, _ = run(keys[1:2], 1)
  assert sorted(map(tuple, np.asarray(full[1]).tolist())) == sorted(
      map(tuple, np.asarray(alone[0]).tolist()))


def test_beam_search_finds_the_best_sequence_greedy_misses():
  # From 0: token 2 (p=.6) then anything flat, or token 3 (p=.4) then EOS with p~1.
  v = 6
  table = np.full((v, v), -20.0)
  table[0, 2], table[0, 3] = np.log(0.6), np.log(0.4)
  table[2, :] = np.log(1.0 / v)
  table[3, 1] = 0.0
  table[1, 1] = 0.0
  decodes, scores = decoding.beam_search(
      _table_callback(table), jnp.zeros((2,)), batch_size=1, max_decode_length=4, eos_id=1,
      num_decodes=2, alpha=0.0)
  np.testing.assert_array_equal(decodes[0, -1], [3, 1, 0, 0])
  np.testing.assert_allclose(scores[0, -1], np.log(0.4), rtol=1e-4)
  assert scores[0, 0] <= scores[0, 1]
