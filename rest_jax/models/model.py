"""`EncoderDecoderModel`: the t5x model API over the built-in network.

Method names, arguments, batch keys and return shapes follow
`t5x.models.EncoderDecoderModel`, so everything above this module (trainer, Grow,
Improve) works the same with a real t5x model configured by gin.

What differs is inside `predict_batch_with_aux`: the encoder runs once per input
and each decoder layer's cross-attention keys/values are projected once per
input and shared by that input's `num_decodes` rows, instead of being copied
per sample and re-projected at every step.
"""

import functools
import inspect
from typing import TYPE_CHECKING, Any, Callable, Mapping, MutableMapping, Tuple

from clu import metrics as clu_metrics
from flax import linen as nn
from flax.core import unfreeze
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rest_jax import decoding

if TYPE_CHECKING:  # seqio imports TensorFlow; the model runs without it
  import seqio

Array = jax.Array
PyTree = Any
Batch = Mapping[str, Array]

NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def cross_entropy_with_logits(
    logits: Array, targets: Array, z_loss: float = 0.0, label_smoothing: float = 0.0
) -> Tuple[Array, Array]:
  """Per-token cross entropy and its z-loss part (t5x's definitions).

  The gradient is written by hand (`softmax * (1 + 2 z log Z) - smoothed one-hot`)
  so that backpropagation builds no `[tokens, vocab]` one-hot or scatter: on a
  large vocabulary the automatic one costs more than the output layer itself.

  Args:
    logits: `[..., vocab]`.
    targets: `[...]` int token ids.
    z_loss: coefficient of `log(Z)^2`, which keeps the softmax normaliser near 1.
    label_smoothing: mass spread uniformly over the other tokens.

  Returns:
    `(loss, z_loss_part)`, each shaped like `targets`; `loss` includes the z-loss.
  """
  return _cross_entropy_fwd(logits, targets, z_loss, label_smoothing)[0]


def _smoothing(vocab: int, label_smoothing: float) -> Tuple[float, float, float]:
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1) if vocab > 1 else 0.0
  # Entropy of the smoothed target, subtracted so that the minimum loss is 0 (t5x).
  normalizer = 0.0
  if label_smoothing:
    normalizer = -(confidence * np.log(confidence) + (vocab - 1) * low * np.log(low + 1e-20))
  return confidence, low, normalizer


def _cross_entropy_fwd(logits, targets, z_loss, label_smoothing):
  vocab = logits.shape[-1]
  confidence, low, normalizer = _smoothing(vocab, label_smoothing)
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), -1)[..., 0]
  loss = confidence * (log_z - target_logit)
  if label_smoothing:
    loss = loss + low * ((vocab - 1) * log_z - (jnp.sum(logits, -1) - target_logit)) - normalizer
  z_part = z_loss * jnp.square(log_z)
  return (loss + z_part, z_part), (logits, targets, log_z)


def _cross_entropy_bwd(z_loss, label_smoothing, residuals, cotangents):
  logits, targets, log_z = residuals
  g_loss, g_z = cotangents
  confidence, low, _ = _smoothing(logits.shape[-1], label_smoothing)
  softmax = jnp.exp(logits - log_z[..., None])
  # d loss / d log Z = 1 (+ 2 z log Z from the z-loss); d z_part / d log Z = 2 z log Z.
  scale = g_loss * (1.0 + 2.0 * z_loss * log_z) + g_z * 2.0 * z_loss * log_z
  is_target = jnp.arange(logits.shape[-1]) == targets[..., None]
  smoothed = jnp.where(is_target, confidence, low)
  grad = softmax * scale[..., None] - smoothed * g_loss[..., None]
  return grad, None


cross_entropy_with_logits.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


def _normalizer(weights: Array, loss_normalizing_factor) -> Array:
  if loss_normalizing_factor is None:
    return jnp.array(1.0, jnp.float32)  # t5x default: sum over tokens
  if loss_normalizing_factor == NUM_REAL_TARGET_TOKENS:
    return jnp.maximum(jnp.sum(weights), 1.0)
  return jnp.asarray(loss_normalizing_factor, jnp.float32)


class _EncDecFeatureConverter:
  """`seqio.EncDecFeatureConverter`, imported when first asked for.

  seqio imports TensorFlow; the model itself does not need it, so it also runs where
  there is none (an accelerator machine: `benchmarks/accelerator.py`).
  """

  def __get__(self, obj, objtype=None):
    import seqio  # pylint: disable=g-import-not-at-top

    return seqio.EncDecFeatureConverter


class EncoderDecoderModel:
  """Encoder-decoder with the t5x model API.

  Beyond t5x's API, `predict_batch_with_aux` accepts one PRNG key per sample
  (`PER_SAMPLE_RNGS`), which makes Grow's samples independent of batching.

  Attributes:
    module: a Flax module with t5x's `Transformer` interface (`encode`, `decode`,
      `__call__`) and, for fast decoding, `cross_attention_kv`, `init_cache`
      and `decode_step`.
    input_vocabulary, output_vocabulary: seqio vocabularies.
    optimizer_def: an `optax.GradientTransformation`.
  """

  FEATURE_CONVERTER_CLS = _EncDecFeatureConverter()

  PER_SAMPLE_RNGS = True

  def __init__(
      self,
      module: nn.Module,
      input_vocabulary: "seqio.Vocabulary",
      output_vocabulary: "seqio.Vocabulary",
      optimizer_def: optax.GradientTransformation | None = None,
      decode_fn: Callable[..., Tuple[Array, Array]] = decoding.beam_search,
      feature_converter_cls: type | None = None,
      label_smoothing: float = 0.0,
      z_loss: float = 0.0,
      loss_normalizing_factor: float | str | None = None,
      default_decoder_params: Mapping[str, Any] | None = None,
      decode_cache_chunk: int = 8,
  ):
    self.module = module
    self._input_vocabulary = input_vocabulary
    self._output_vocabulary = output_vocabulary
    self.optimizer_def = optimizer_def
    self._decode_fn = decode_fn
    if feature_converter_cls is not None:
      self.FEATURE_CONVERTER_CLS = feature_converter_cls  # pylint: disable=invalid-name
    self._label_smoothing = label_smoothing
    self._z_loss = z_loss
    self._loss_normalizing_factor = loss_normalizing_factor
    self._default_decoder_params = dict(default_decoder_params or {})
    self._decode_cache_chunk = decode_cache_chunk

  @property
  def input_vocabulary(self) -> "seqio.Vocabulary":
    return self._input_vocabulary

  @property
  def output_vocabulary(self) -> "seqio.Vocabulary":
    return self._output_vocabulary

  @property
  def decode_fn(self):
    return self._decode_fn

  # --- initialisation ------------------------------------------------------

  def get_initial_variables(
      self,
      rng: Array,
      input_shapes: Mapping[str, Tuple[int, ...]],
      input_types: Mapping[str, jnp.dtype] | None = None,
  ) -> PyTree:
    """Variables (`params` and their logical axes `params_axes`) for these shapes."""
    input_types = input_types or {}

    def dummy(key):
      return jnp.ones(input_shapes[key], input_types.get(key, jnp.int32))

    variables = self.module.init(
        {"params": rng, "dropout": rng},
        dummy("encoder_input_tokens"),
        dummy("decoder_input_tokens"),
        dummy("decoder_target_tokens"),
        enable_dropout=False,
    )
    return unfreeze(variables)

  # --- training and scoring ------------------------------------------------

  def _compute_logits(
      self,
      params: PyTree,
      batch: Batch,
      dropout_rng: Array | None = None,
      mutable: bool = False,
      other_variables: PyTree | None = None,
  ) -> Array:
    """Teacher-forced logits `[batch, target_length, vocab]`."""
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    variables = {"params": params, **(other_variables or {})}
    return self.module.apply(
        variables,
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        batch["decoder_target_tokens"],
        enable_dropout=rngs is not None,
        rngs=rngs,
        mutable=mutable,
    )

  def loss_fn(
      self, params: PyTree, batch: Batch, dropout_rng: Array | None
  ) -> Tuple[Array, MutableMapping[str, clu_metrics.Metric]]:
    """Token cross entropy (plus z-loss), normalised as configured, and metrics."""
    logits = self._compute_logits(params, batch, dropout_rng)
    return self._loss_and_metrics(logits, batch)

  def eval_fn(self, params: PyTree, batch: Batch) -> Tuple[Array, Mapping[str, Any]]:
    return self.loss_fn(params, batch, dropout_rng=None)

  def _loss_and_metrics(self, logits: Array, batch: Batch):
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else weights
    weights = weights.astype(jnp.float32)
    token_loss, token_z = cross_entropy_with_logits(
        logits, targets, self._z_loss, self._label_smoothing
    )
    normalizer = _normalizer(weights, self._loss_normalizing_factor)
    loss = jnp.sum(token_loss * weights) / normalizer
    return loss, compute_base_metrics(logits, targets, weights, loss, token_z, normalizer)

  def score_batch(
      self, params: PyTree, batch: Batch, return_intermediates: bool = False
  ) -> Array | Tuple[Array, Mapping[str, Any]]:
    """Log-likelihood `[batch]` of each target sequence (sum over weighted tokens)."""
    logits = self._compute_logits(params, batch)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else weights
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    token_scores = jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    token_scores = token_scores * weights.astype(jnp.float32)
    scores = jnp.sum(token_scores, axis=-1)
    if return_intermediates:
      return scores, {"token_scores": token_scores}
    return scores

  # --- decoding ------------------------------------------------------------

  def predict_batch(self, params: PyTree, batch: Batch, rng: Array | None = None) -> Array:
    return self.predict_batch_with_aux(params, batch, rng=rng)[0]

  def predict_batch_with_aux(
      self,
      params: PyTree,
      batch: Batch,
      rng: Array | None = None,
      decoder_params: MutableMapping[str, Any] | None = None,
      return_all_decodes: bool = False,
      num_decodes: int = 1,
      prompt_with_targets: bool = False,
  ) -> Tuple[Array, Mapping[str, Array]]:
    """Decodes with `decode_fn` (beam search unless configured otherwise).

    Args:
      params: model parameters.
      batch: needs `encoder_input_tokens` `[B, Le]` and `decoder_input_tokens`
        `[B, L]` (its length sets the decode length; with `prompt_with_targets`
        its non-zero tokens are a forced prefix).
      rng: PRNG key for sampling; a `[B, num_decodes, 2]` array of keys gives
        each sample its own key.
      decoder_params: extra keyword arguments for `decode_fn` (temperature,
        topk, topp, alpha, eos_id...), overriding `default_decoder_params`.
        With `return_token_log_probs=True` (rest_jax's sampler) the aux dict
        also holds `token_log_probs` (under the distribution sampled from) and
        `policy_token_log_probs` (under the model at temperature 1), shaped
        like the decodes.
      return_all_decodes: return every decode instead of the best one.
      num_decodes: samples (or beams) per input.
      prompt_with_targets: force the decoder-input prefix.

    Returns:
      `(decodes, {"scores": scores})`: `[B, num_decodes, L]` and
      `[B, num_decodes]` sorted by increasing score if `return_all_decodes`,
      else the best decode `[B, L]` and its score `[B]`.
    """
    encoder_tokens = batch["encoder_input_tokens"]
    batch_size = encoder_tokens.shape[0]
    max_length = batch["decoder_input_tokens"].shape[1]
    module = self.module

    encoded = module.apply({"params": params}, encoder_tokens, enable_dropout=False,
                           method=module.encode)
    cross_kv = module.apply({"params": params}, encoded, method=module.cross_attention_kv)
    # The self-attention cache is kept in chunks; decoding runs one loop phase per
    # chunk, and each phase reads only the chunks filled so far.
    chunk = min(self._decode_cache_chunk, max_length)
    cache = module.apply({"params": params}, batch_size * num_decodes, max_length, chunk,
                         method=module.init_cache)
    phase_bounds = tuple(min(end, max_length) for end in range(chunk, max_length + chunk, chunk))

    def tokens_to_logits(tokens, step, cache, phase):
      return module.apply(
          {"params": params}, tokens, cache, step, cross_kv, encoder_tokens, num_decodes,
          phase, method=module.decode_step,
      )

    kwargs = {"eos_id": self.output_vocabulary.eos_id, **self._default_decoder_params,
              **(decoder_params or {})}
    if prompt_with_targets:
      if self._decode_fn is not decoding.temperature_sample:
        raise ValueError("prompt_with_targets needs decode_fn=decoding.temperature_sample")
      kwargs["prompt"] = jnp.repeat(batch["decoder_input_tokens"], num_decodes, axis=0)
    if "phase_bounds" in inspect.signature(self._decode_fn).parameters:
      kwargs["phase_bounds"] = phase_bounds
    if "rng" in inspect.signature(self._decode_fn).parameters:
      kwargs["rng"] = rng if rng is not None else jax.random.PRNGKey(0)
    decoded = self._decode_fn(
        tokens_to_logits, cache, batch_size=batch_size, max_decode_length=max_length,
        num_decodes=num_decodes, **kwargs,
    )
    decodes, scores = decoded[:2]
    aux = {"scores": scores}
    if len(decoded) > 2:  # per-token log-probabilities (`return_token_log_probs`)
      aux["token_log_probs"] = decoded[2]["behaviour"]
      aux["policy_token_log_probs"] = decoded[2]["policy"]
    if return_all_decodes:
      return decodes, aux
    return decodes[:, -1, :], {k: v[:, -1] for k, v in aux.items()}


def compute_base_metrics(logits, targets, weights, loss, token_z_loss, normalizer):
  """t5x's standard training metrics as clu metrics (jit-friendly pytrees)."""
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * weights
  num_tokens = jnp.sum(weights)
  return {
      "loss": clu_metrics.Average(total=loss, count=jnp.array(1, jnp.int32)),
      "accuracy": clu_metrics.Average(total=jnp.sum(correct), count=num_tokens),
      "z_loss": clu_metrics.Average(total=jnp.sum(token_z_loss * weights) / normalizer,
                                    count=jnp.array(1, jnp.int32)),
      "num_tokens": clu_metrics.Average(total=num_tokens, count=jnp.array(1, jnp.int32)),
  }
