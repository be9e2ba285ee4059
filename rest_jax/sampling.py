"""The sampling configuration: one object from gin to every decode call that samples.

Grow, best-of-N evaluation and `infer` all sample with a `SamplingConfig`
(`SAMPLING` in `gin/runs/rest.gin`). It knows how to call each decode function
the project supports so that sampling really samples:

- rest_jax's `decoding.temperature_sample` takes `temperature`, `topk` (0 = off)
  and `topp` (0 = off) as they are;
- t5x's `decoding.temperature_sample` defaults to `topk=1`, which is greedy, and
  rescales the returned log-probabilities unless told otherwise, so every
  argument is passed explicitly: `topk=0` when top-k is off, and
  `rescale_log_probs=True` so that its scores are log-probabilities under the
  distribution actually sampled from (the behaviour policy), as ours are.

`log_probs` gives that distribution for teacher-forced logits, which is how a
sample's per-token behaviour log-probabilities are recomputed for a decode
function that returns only sequence sums (t5x's).
"""

import dataclasses
import importlib
import inspect
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp

from rest_jax.decoding import NEG_INF  # one value for every decode and filter


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How a policy samples (the behaviour distribution of Grow).

  Attributes:
    temperature: logits are divided by it; 0 is greedy (argmax). The ReST paper
      samples at 0.8.
    topk: sample among the `topk` most likely tokens; 0 = off.
    topp: nucleus sampling, the smallest set of tokens whose probability (after
      top-k) reaches `topp`; 0 = off.
  """

  temperature: float = 0.8
  topk: int = 0
  topp: float = 0.0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"SamplingConfig.temperature={self.temperature} must be >= 0")
    if self.topk < 0:
      raise ValueError(f"SamplingConfig.topk={self.topk} must be >= 0 (0 = off)")
    if not 0.0 <= self.topp <= 1.0:
      raise ValueError(f"SamplingConfig.topp={self.topp} must be in [0, 1] (0 = off)")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0

  @property
  def is_policy(self) -> bool:
    """Whether the behaviour distribution is the policy itself (T = 1, no filter)."""
    return self.temperature == 1.0 and self.topk == 0 and self.topp in (0.0, 1.0)

  def decoder_params(self, decode_fn: Callable[..., Any]) -> Dict[str, Any]:
    """Keyword arguments for `decode_fn` that sample with this configuration.

    Every knob is passed explicitly, so no decode function falls back to a
    default of its own (t5x's `topk=1` would make sampling greedy).
    """
    params = {"temperature": float(self.temperature), "topk": int(self.topk),
              "topp": float(self.topp)}
    accepted = inspect.signature(decode_fn).parameters
    if "rescale_log_probs" in accepted:  # t5x: score under the distribution sampled from
      params["rescale_log_probs"] = True
    missing = [k for k in ("temperature", "topk", "topp") if k not in accepted]
    if missing and not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
      raise ValueError(f"decode function {decode_fn.__module__}.{decode_fn.__name__} takes no"
                       f" {missing}: it cannot sample with {self}")
    return params

  def log_probs(self, logits: jax.Array) -> jax.Array:
    """Log-probabilities `[..., vocab]` of the distribution sampled from, given model logits.

    Temperature first, then top-k, then top-p, as both samplers apply them;
    masked tokens get a very negative value. Greedy decoding is deterministic:
    the argmax gets log-probability 0 and every other token `NEG_INF`.
    """
    logits = logits.astype(jnp.float32)
    if self.greedy:
      best = jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=jnp.bool_)
      return jnp.where(best, 0.0, NEG_INF)
    scaled = logits / self.temperature
    if self.topk > 0:
      kth = jax.lax.top_k(scaled, self.topk)[0][..., -1:]
      scaled = jnp.where(scaled >= kth, scaled, NEG_INF)
    if 0.0 < self.topp < 1.0:
      ordered = -jnp.sort(-scaled, axis=-1)
      probs = jax.nn.softmax(ordered, axis=-1)
      mass_before = jnp.cumsum(probs, axis=-1) - probs
      kept = jnp.where(mass_before < self.topp, ordered, jnp.inf)
      scaled = jnp.where(scaled >= jnp.min(kept, axis=-1, keepdims=True), scaled, NEG_INF)
    return jax.nn.log_softmax(scaled, axis=-1)


GREEDY = SamplingConfig(temperature=0.0)


def sampler_of(model) -> Callable[..., Any]:
  """The temperature sampler of the library the model decodes with.

  A model carries its decode function (t5x's `EncoderDecoderModel._decode_fn`,
  usually `beam_search`); its sampler is the `temperature_sample` of the same
  module, so a t5x model samples with `t5x.decoding.temperature_sample` and a
  model of any other library with that library's own, whatever package the
  model's class lives in.
  """
  decode_fn = getattr(model, "_decode_fn", None) or getattr(model, "decode_fn", None)
  if decode_fn is None:
    raise ValueError(f"{type(model).__name__} carries no decode function (_decode_fn)")
  if getattr(decode_fn, "__name__", "") == "temperature_sample":
    return decode_fn
  module = importlib.import_module(decode_fn.__module__)
  sampler = getattr(module, "temperature_sample", None)
  if sampler is None:
    raise ValueError(f"the model decodes with {decode_fn.__module__}.{decode_fn.__name__}, and"
                     f" {decode_fn.__module__} has no temperature_sample to sample with")
  return sampler


def beam_search_of(model) -> Callable[..., Any]:
  """The beam search of the library the model decodes with (see `sampler_of`)."""
  decode_fn = getattr(model, "_decode_fn", None) or getattr(model, "decode_fn", None)
  if getattr(decode_fn, "__name__", "") == "beam_search":
    return decode_fn
  module = importlib.import_module(decode_fn.__module__)
  search = getattr(module, "beam_search", None)
  if search is None:
    raise ValueError(f"{decode_fn.__module__} has no beam_search")
  return search
