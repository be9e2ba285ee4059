"""Decoding algorithms: temperature sampling and beam search.

Both are pure functions over a `tokens_to_logits` callback and know nothing
about the network (t5x's `decoding.py` contract). The callback advances every
row by one position against a cache that the caller owns:

    tokens_to_logits(tokens [rows] int32, step scalar int32, cache, phase int)
        -> (logits [rows, vocab] float32, new cache)

`phase` is a static Python int. A caller may split the positions into phases by
passing `phase_bounds` (increasing, the last equal to the decode length): phase
`p` covers the steps below `phase_bounds[p]` and runs as its own loop, so the
callback can size its work to the positions filled so far (the built-in model
keeps its self-attention cache in chunks and reads only the chunks in use).

Rows are grouped by input: row `b * num_decodes + n` is sample `n` of input `b`.
Everything runs in `lax.while_loop`s (one per phase) that stop as soon as every row has
produced EOS, so callers jit the whole decode.

Sampling avoids the costs that dominate a naive sampler on CPU backends: no
Gumbel noise per vocabulary entry (one uniform number per row and step) and no
cumulative sum over the whole vocabulary (a two-level inverse CDF over blocks).
"""

from collections.abc import Sequence
from typing import Any, Callable, NamedTuple, Tuple

import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array
Cache = Any
TokensToLogits = Callable[[Array, Array, Cache, int], Tuple[Array, Cache]]

# A log-probability that is never chosen: beam scores of dead beams, logits filtered out by
# top-k or top-p (rest_jax/sampling.py). exp() of it is 0 in float32 and bfloat16 alike.
NEG_INF = -1.0e7


def _phased_while_loop(cond, body, init, phase_bounds: Sequence[int] | None, length: int):
  """Runs `body(state, phase)` while `cond(state)`, one `while_loop` per phase."""
  bounds = tuple(phase_bounds) if phase_bounds else (length,)
  if list(bounds) != sorted(set(bounds)) or bounds[-1] != length:
    raise ValueError(f"phase_bounds {bounds} must increase and end at the length {length}")
  state = init
  for phase, bound in enumerate(bounds):
    state = lax.while_loop(
        lambda s, b=bound: cond(s) & (s.step < b),
        lambda s, p=phase: body(s, p),
        state,
    )
  return state


def _row_keys(rng: Array, rows: int) -> Array:
  """One PRNG key per row from a single key, or the given per-row keys.

  Per-row keys let a caller derive each sample's randomness from its identity
  (e.g. source id and sample index) rather than from its place in a batch.
  """
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    keys = rng if rng.ndim else jax.random.split(rng, rows)
    return keys.reshape(rows)
  if rng.ndim == 1:
    return jax.random.split(rng, rows)
  return rng.reshape(rows, rng.shape[-1])


def _uniform_per_row(row_keys: Array, step: Array) -> Array:
  return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, step)))(row_keys)


def _first_above(cumulative: Array, target: Array) -> Array:
  """Index of the first entry of each row's increasing `cumulative` that exceeds `target`."""
  index = jnp.sum((cumulative <= target[:, None]).astype(jnp.int32), axis=-1)
  return jnp.minimum(index, cumulative.shape[-1] - 1)


def _inverse_cdf(weights: Array, u: Array, block_size: int) -> Tuple[Array, Array]:
  """Draws an index per row with probability proportional to `weights` (>= 0).

  A cumulative sum over a large vocabulary is slow on CPU, so the draw is done
  in two levels: first a block of `block_size` entries by the blocks' total
  weights, then an entry inside the chosen block.

  Returns:
    The drawn indices `[rows]` and each row's total weight `[rows]`.
  """
  rows, vocab = weights.shape
  if vocab <= block_size:
    cumulative = jnp.cumsum(weights, axis=-1)
    return _first_above(cumulative, u * cumulative[:, -1]), cumulative[:, -1]
  if vocab % block_size:
    weights = jnp.pad(weights, ((0, 0), (0, block_size - vocab % block_size)))
  blocks = weights.reshape(rows, -1, block_size)
  block_cum = jnp.cumsum(jnp.sum(blocks, axis=-1), axis=-1)
  target = u * block_cum[:, -1]
  block = _first_above(block_cum, target)
  before = jnp.where(
      block > 0, jnp.take_along_axis(block_cum, jnp.maximum(block - 1, 0)[:, None], 1)[:, 0], 0.0
  )
  inner = jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0]
  offset = _first_above(jnp.cumsum(inner, axis=-1), target - before)
  # Rounding can point past the last non-zero weight (e.g. into the padding).
  return jnp.minimum(block * block_size + offset, vocab - 1), block_cum[:, -1]


def _log_prob_of(logits: Array, tokens: Array) -> Array:
  picked = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def sample_logits(
    logits: Array,
    u: Array,
    *,
    temperature: float = 1.0,
    topk: int = 0,
    topp: float = 0.0,
    block_size: int = 128,
) -> Tuple[Array, Array, Array]:
  """Draws one token per row.

  Args:
    logits: `[rows, vocab]` float32 model logits.
    u: `[rows]` uniform numbers in [0, 1), one per row.
    temperature: 0 means greedy (argmax).
    topk: if > 0, sample among the `topk` most likely tokens.
    topp: if > 0, sample from the smallest set of tokens whose probability
      (after top-k) reaches `topp` (nucleus sampling).
    block_size: block width of the two-level inverse CDF.

  Returns:
    Tokens `[rows]`, their log-probabilities `[rows]` under the distribution
    sampled from (temperature, top-k and top-p applied: the behaviour policy;
    0 for greedy, which is deterministic), and under the model's own
    distribution at temperature 1 (the policy).
  """
  logits = logits.astype(jnp.float32)
  if temperature == 0.0:
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return tokens, jnp.zeros(tokens.shape, jnp.float32), _log_prob_of(logits, tokens)
  scaled = logits if temperature == 1.0 else logits / temperature
  if topk > 0 or topp > 0.0:
    k = topk if topk > 0 else logits.shape[-1]
    values, indices = lax.top_k(scaled, k)  # descending
    # The row maximum equals values[:, 0], but slicing top_k's output makes XLA's
    # CPU backend replace its fast top-k with a full sort (60x slower).
    top = jnp.max(scaled, axis=-1, keepdims=True)
    weights = jnp.exp(values - top)
    if topp > 0.0:
      probs = weights / jnp.sum(weights, axis=-1, keepdims=True)
      mass_before = jnp.cumsum(probs, axis=-1) - probs
      weights = jnp.where(mass_before < topp, weights, 0.0)
    choice, total = _inverse_cdf(weights, u, block_size)
    tokens = jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    picked = jnp.take_along_axis(values, choice[:, None], axis=-1)[:, 0]
    return tokens, picked - top[:, 0] - jnp.log(total), _log_prob_of(logits, tokens)
  top = jnp.max(scaled, axis=-1, keepdims=True)
  weights = jnp.exp(scaled - top)
  tokens, total = _inverse_cdf(weights, u, block_size)
  # The exponentials (and their sum) computed for the draw give the behaviour
  # log-probability; at temperature 1 it is the policy's too.
  picked = jnp.take_along_axis(scaled, tokens[:, None], axis=-1)[:, 0]
  behaviour = picked - top[:, 0] - jnp.log(total)
  if temperature == 1.0:
    return tokens, behaviour, behaviour
  return tokens, behaviour, _log_prob_of(logits, tokens)


class _SampleState(NamedTuple):
  step: Array          # scalar int32: position being decoded
  tokens: Array        # [rows, length] decoded tokens so far (0 after EOS)
  current: Array       # [rows] token fed at `step`
  ended: Array         # [rows] bool
  log_prob: Array      # [rows] summed behaviour log-probabilities of sampled tokens
  token_log_probs: Any   # None, or ([rows, length] behaviour, [rows, length] policy)
  cache: Cache


def temperature_sample(
    tokens_to_logits: TokensToLogits,
    cache: Cache,
    *,
    batch_size: int,
    max_decode_length: int,
    rng: Array,
    eos_id: int | None,
    num_decodes: int = 1,
    temperature: float = 1.0,
    topk: int = 0,
    topp: float = 0.0,
    prompt: Array | None = None,
    initial_token: int = 0,
    block_size: int = 128,
    phase_bounds: Sequence[int] | None = None,
    return_token_log_probs: bool = False,
):
  """Samples `num_decodes` sequences per input with a cache, in one while loop.

  Args:
    tokens_to_logits: the model's one-step function (see module docstring).
    cache: initial cache for `batch_size * num_decodes` rows.
    batch_size: number of inputs.
    max_decode_length: length of the returned sequences.
    rng: one PRNG key, or per-row keys shaped `[batch, num_decodes, ...]`.
    eos_id: a row ends after producing it; None disables early ending.
    num_decodes: samples per input.
    temperature: sampling temperature; 0 is greedy.
    topk: see `sample_logits`; 0 = off.
    topp: see `sample_logits`; 0 = off.
    prompt: optional `[batch * num_decodes, max_decode_length]` decoder input
      tokens; non-zero entries after position 0 force the token at the
      previous position (t5x's `prompt_with_targets`). Forced tokens add no
      log-probability.
    initial_token: token fed at position 0 (T5: 0, the padding id).
    block_size: see `sample_logits`.
    phase_bounds: see the module docstring; default one phase.
    return_token_log_probs: also return every sampled token's log-probability
      under the behaviour distribution and under the policy (0 for forced,
      ended and padding positions).

  Returns:
    `(decodes [batch, num_decodes, length], log_probs [batch, num_decodes])`,
    the samples of each input sorted by increasing log-probability under the
    distribution sampled from (t5x's order with `rescale_log_probs=True`: the
    most likely is last); with `return_token_log_probs` a third element
    `{"behaviour": [batch, num_decodes, length], "policy": [...]}` in the same
    order.
  """
  rows = batch_size * num_decodes
  row_keys = _row_keys(rng, rows)
  never_ends = eos_id is None

  def cond(state: _SampleState) -> Array:
    return (state.step < max_decode_length) & ~jnp.all(state.ended)

  def body(state: _SampleState, phase: int) -> _SampleState:
    logits, cache = tokens_to_logits(state.current, state.step, state.cache, phase)
    u = _uniform_per_row(row_keys, state.step)
    token, log_prob, policy_log_prob = sample_logits(
        logits, u, temperature=temperature, topk=topk, topp=topp, block_size=block_size
    )
    if prompt is not None:
      forced = lax.dynamic_index_in_dim(
          prompt, jnp.minimum(state.step + 1, max_decode_length - 1), axis=1, keepdims=False
      )
      forced = jnp.where(state.step + 1 < max_decode_length, forced, 0)
      token = jnp.where(forced > 0, forced, token)
      log_prob = jnp.where(forced > 0, 0.0, log_prob)
      policy_log_prob = jnp.where(forced > 0, 0.0, policy_log_prob)
    token = jnp.where(state.ended, 0, token)
    log_prob = jnp.where(state.ended, 0.0, log_prob)
    ended = state.ended if never_ends else state.ended | (token == eos_id)
    tokens = lax.dynamic_update_slice(state.tokens, token[:, None], (0, state.step))
    token_log_probs = state.token_log_probs
    if token_log_probs is not None:
      policy_log_prob = jnp.where(state.ended, 0.0, policy_log_prob)
      token_log_probs = tuple(
          lax.dynamic_update_slice(table, value[:, None], (0, state.step))
          for table, value in zip(token_log_probs, (log_prob, policy_log_prob)))
    return _SampleState(state.step + 1, tokens, token, ended, state.log_prob + log_prob,
                        token_log_probs, cache)

  init = _SampleState(
      step=jnp.array(0, jnp.int32),
      tokens=jnp.zeros((rows, max_decode_length), jnp.int32),
      current=jnp.full((rows,), initial_token, jnp.int32),
      ended=jnp.zeros((rows,), bool),
      log_prob=jnp.zeros((rows,), jnp.float32),
      token_log_probs=((jnp.zeros((rows, max_decode_length), jnp.float32),) * 2
                       if return_token_log_probs else None),
      cache=cache,
  )
  final = _phased_while_loop(cond, body, init, phase_bounds, max_decode_length)
  log_probs = final.log_prob.reshape(batch_size, num_decodes)
  order = jnp.argsort(log_probs, axis=-1)

  def in_order(x):  # [rows, length] -> [batch, num_decodes, length], sorted
    x = x.reshape(batch_size, num_decodes, max_decode_length)
    return jnp.take_along_axis(x, order[:, :, None], axis=1)

  out = (in_order(final.tokens), jnp.take_along_axis(log_probs, order, axis=1))
  if not return_token_log_probs:
    return out
  behaviour, policy = final.token_log_probs
  return out + ({"behaviour": in_order(behaviour), "policy": in_order(policy)},)


def brevity_penalty(alpha: float, length: Array) -> Array:
  """GNMT length penalty `((5 + length) / 6) ** alpha`."""
  return ((5.0 + length) / 6.0) ** alpha


class _BeamState(NamedTuple):
  step: Array
  live_seqs: Array      # [batch, beam, length]
  live_log_probs: Array  # [batch, beam]
  finished_seqs: Array  # [batch, beam, length]
  finished_scores: Array  # [batch, beam], length-penalised
  finished_flags: Array  # [batch, beam]
  current: Array        # [batch * beam]
  cache: Cache


def _gather_beams(x: Array, beam_indices: Array) -> Array:
  """Selects `x[b, beam_indices[b, j]]` for leaves shaped `[batch, beams, ...]`."""
  index = beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


def _gather_cache(cache: Cache, beam_indices: Array, batch_size: int) -> Cache:
  def gather(leaf):
    grouped = leaf.reshape((batch_size, -1) + leaf.shape[1:])
    return _gather_beams(grouped, beam_indices).reshape(leaf.shape)

  return jax.tree_util.tree_map(gather, cache)


def beam_search(
    tokens_to_logits: TokensToLogits,
    cache: Cache,
    *,
    batch_size: int,
    max_decode_length: int,
    eos_id: int | None,
    num_decodes: int = 4,
    alpha: float = 0.6,
    initial_token: int = 0,
    phase_bounds: Sequence[int] | None = None,
) -> Tuple[Array, Array]:
  """Beam search with a GNMT length penalty, in one while loop.

  `num_decodes` is the beam size (t5x's meaning). The loop stops when no live
  beam can still beat the worst finished one of its input.

  Args:
    tokens_to_logits: the model's one-step function; its cache leaves must have
      `batch * num_decodes` rows first, and they are reordered as beams move.
    cache: initial cache.
    batch_size: number of inputs.
    max_decode_length: length of the returned sequences.
    eos_id: end-of-sequence token; None lets every beam run to the end.
    num_decodes: beam size.
    alpha: length-penalty exponent (0 disables it).
    initial_token: token fed at position 0.
    phase_bounds: see the module docstring; default one phase.

  Returns:
    `(decodes [batch, beam, length], scores [batch, beam])`, sorted by
    increasing length-penalised score (best last).
  """
  beam = num_decodes
  length = max_decode_length
  final_penalty = brevity_penalty(alpha, float(length))

  def cond(state: _BeamState) -> Array:
    best_live = state.live_log_probs[:, 0] / final_penalty
    worst_finished = jnp.min(state.finished_scores, axis=1)
    can_improve = jnp.any(best_live > worst_finished)
    return (state.step < length) & can_improve

  def body(state: _BeamState, phase: int) -> _BeamState:
    logits, cache = tokens_to_logits(state.current, state.step, state.cache, phase)
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch_size, beam, vocab)
    candidates = (state.live_log_probs[:, :, None] + log_probs).reshape(batch_size, beam * vocab)
    top_log_probs, top_index = lax.top_k(candidates, 2 * beam)
    from_beam = top_index // vocab
    token = (top_index % vocab).astype(jnp.int32)
    seqs = _gather_beams(state.live_seqs, from_beam)
    seqs = lax.dynamic_update_slice(seqs, token[:, :, None], (0, 0, state.step))
    is_eos = jnp.zeros_like(token, bool) if eos_id is None else token == eos_id

    live_scores, keep = lax.top_k(jnp.where(is_eos, NEG_INF, top_log_probs), beam)
    live_seqs = _gather_beams(seqs, keep)
    current = jnp.take_along_axis(token, keep, axis=1).reshape(-1)
    cache = _gather_cache(cache, jnp.take_along_axis(from_beam, keep, axis=1), batch_size)

    penalty = brevity_penalty(alpha, (state.step + 1).astype(jnp.float32))
    # Only an EOS among the best `beam` candidates finishes a hypothesis (as in
    # Hugging Face's beam search); this makes a beam of one exactly greedy.
    finishes = is_eos & (jnp.arange(2 * beam) < beam)[None, :]
    new_scores = jnp.where(finishes, top_log_probs / penalty, NEG_INF)
    all_scores = jnp.concatenate([state.finished_scores, new_scores], axis=1)
    all_seqs = jnp.concatenate([state.finished_seqs, seqs], axis=1)
    all_flags = jnp.concatenate([state.finished_flags, finishes], axis=1)
    finished_scores, pick = lax.top_k(all_scores, beam)
    return _BeamState(
        step=state.step + 1,
        live_seqs=live_seqs,
        live_log_probs=live_scores,
        finished_seqs=_gather_beams(all_seqs, pick),
        finished_scores=finished_scores,
        finished_flags=jnp.take_along_axis(all_flags, pick, axis=1),
        current=current,
        cache=cache,
    )

  first_beam_only = jnp.where(jnp.arange(beam) == 0, 0.0, NEG_INF)
  init = _BeamState(
      step=jnp.array(0, jnp.int32),
      live_seqs=jnp.zeros((batch_size, beam, length), jnp.int32),
      live_log_probs=jnp.tile(first_beam_only[None], (batch_size, 1)),
      finished_seqs=jnp.zeros((batch_size, beam, length), jnp.int32),
      finished_scores=jnp.full((batch_size, beam), NEG_INF),
      finished_flags=jnp.zeros((batch_size, beam), bool),
      current=jnp.full((batch_size * beam,), initial_token, jnp.int32),
      cache=cache,
  )
  final = _phased_while_loop(cond, body, init, phase_bounds, length)
  # Inputs with no finished beam fall back to their live beams.
  any_finished = jnp.any(final.finished_flags, axis=1)
  seqs = jnp.where(any_finished[:, None, None], final.finished_seqs, final.live_seqs)
  scores = jnp.where(
      any_finished[:, None], final.finished_scores,
      final.live_log_probs / brevity_penalty(alpha, final.step.astype(jnp.float32)),
  )
  return seqs[:, ::-1], scores[:, ::-1]
