"""T5.1.1 building blocks in Flax Linen, with t5x's parameter names and logical axes.

Every parameter is declared through `flax.linen.partitioning.param_with_axes`, so
initialisation also yields a `params_axes` collection in exactly the format a t5x
model produces. `rest_jax.partitioning` reads that collection for either model.

Besides the full-sequence forward pass used for training and scoring, the
attention layer has the two pieces a fast sampler needs: `project_kv`, which
turns encoder outputs into cross-attention keys/values once per input, and
`decode_step`, which advances one token against a key/value cache.
"""

import math
from typing import Callable, Sequence, Tuple

from flax import linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Initializer = Callable[..., Array]
param_with_axes = nn_partitioning.param_with_axes

# Large negative bias for masked attention logits; finite so that a fully
# masked row yields a uniform (not NaN) softmax.
NEG_INF = -1e10

default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def _canonicalize_tuple(x):
  return tuple(x) if isinstance(x, Sequence) else (x,)


class DenseGeneral(nn.Module):
  """A linear map over one or more input axes to one or more output axes.

  The kernel is stored 2-D, `[prod(in_axes), prod(features)]`, with two logical axes,
  and reshaped here (t5x's layout): the attention output projection is
  `[heads * kv, embed]` with axes `("joined_kv", "embed")`, so t5x checkpoints load
  as they are and can be sharded over heads.
  """

  features: int | Tuple[int, ...]
  kernel_axes: Tuple[str, str]
  axis: int | Tuple[int, ...] = -1
  dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    axis = tuple(a % inputs.ndim for a in _canonicalize_tuple(self.axis))
    in_shape = tuple(inputs.shape[a] for a in axis)
    features = _canonicalize_tuple(self.features)
    flat = (int(np.prod(in_shape)), int(np.prod(features)))
    kernel = param_with_axes("kernel", self.kernel_init, flat, jnp.float32, axes=self.kernel_axes)
    kernel = kernel.reshape(in_shape + features)
    contract = (axis, tuple(range(len(axis))))
    return lax.dot_general(
        inputs.astype(self.dtype), kernel.astype(self.dtype), (contract, ((), ()))
    )


class Embed(nn.Module):
  """Token embedding, shared by encoder, decoder and (optionally) the output layer."""

  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32
  attend_dtype: jnp.dtype = jnp.float32
  embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

  def setup(self):
    self.embedding = param_with_axes(
        "embedding",
        self.embedding_init,
        (self.num_embeddings, self.features),
        jnp.float32,
        axes=("vocab", "embed"),
    )

  def __call__(self, ids: Array) -> Array:
    return jnp.take(self.embedding, ids.astype(jnp.int32), axis=0).astype(self.dtype)

  def attend(self, query: Array) -> Array:
    """Logits of `query` against every embedding (tied output layer)."""
    return jnp.dot(query.astype(self.attend_dtype), self.embedding.T.astype(self.attend_dtype))


class RMSNorm(nn.Module):
  """T5's layer norm: scale only, no centring, no bias."""

  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = param_with_axes("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32, axes=("embed",))
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    return (x32 * lax.rsqrt(var + self.epsilon)).astype(self.dtype) * scale.astype(self.dtype)


class Kernel(nn.Module):
  """Only a dense layer's 2-D kernel (stored as `<name>/kernel`, as DenseGeneral stores it).

  Layers that fuse several projections into one matrix product stack these.
  """

  shape: Tuple[int, int]
  axes: Tuple[str, str]
  kernel_init: Initializer = default_kernel_init

  @nn.compact
  def __call__(self) -> Array:
    return param_with_axes("kernel", self.kernel_init, self.shape, jnp.float32, axes=self.axes)


class MlpBlock(nn.Module):
  """Gated MLP: `wo(act_0(wi_0 x) * act_1(wi_1 x))`; T5.1.1 uses (gelu, linear).

  The input projections are stacked into one `[embed, n, mlp]` matrix product:
  one larger product runs faster than several small ones, and stacking (rather
  than concatenating) keeps the `mlp` axis sharded as it is.
  """

  intermediate_dim: int
  activations: Sequence[str] = ("gelu", "linear")
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    names = ["wi"] if len(self.activations) == 1 else [
        f"wi_{i}" for i in range(len(self.activations))]
    kernels = [Kernel((x.shape[-1], self.intermediate_dim), ("embed", "mlp"), name=n)()
               for n in names]
    hidden = jnp.einsum("...e,enm->...nm", x.astype(self.dtype),
                        jnp.stack(kernels, axis=1).astype(self.dtype))
    h = None
    # lax.split (not indexing): its gradient is one concatenate, not pads and adds.
    parts = lax.split(hidden, (1,) * len(self.activations), axis=hidden.ndim - 2)
    for part, act in zip(parts, self.activations):
      y = part[..., 0, :]
      y = y if act == "linear" else getattr(nn, act)(y)
      h = y if h is None else h * y
    h = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
    return DenseGeneral(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, name="wo")(h)


def relative_position_bucket(
    relative_position: Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
  """Maps key-minus-query offsets to T5's log-spaced buckets.

  Half of the buckets (or all, for causal attention) hold exact small offsets;
  the rest cover offsets up to `max_distance` on a log scale, beyond which all
  offsets share the last bucket.
  """
  n = -relative_position
  bucket = 0
  if bidirectional:
    num_buckets //= 2
    bucket = (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  log_ratio = jnp.log(n.astype(jnp.float32) / max_exact + jnp.finfo(jnp.float32).eps)
  large = max_exact + (
      log_ratio / math.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(n < max_exact, n, large)


class RelativePositionBiases(nn.Module):
  """Learned per-head attention biases indexed by relative-position bucket."""

  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  embedding_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")

  def setup(self):
    self.rel_embedding = param_with_axes(
        "rel_embedding",
        self.embedding_init,
        (self.num_heads, self.num_buckets),
        jnp.float32,
        axes=("heads", "relpos_buckets"),
    )

  def _lookup(self, relative_position: Array, bidirectional: bool) -> Array:
    buckets = relative_position_bucket(
        relative_position, bidirectional, self.num_buckets, self.max_distance
    )
    return jnp.take(self.rel_embedding, buckets, axis=1).astype(self.dtype)

  def __call__(self, qlen: int, klen: int, bidirectional: bool = True) -> Array:
    """Returns `[1, heads, qlen, klen]` biases."""
    relative = np.arange(klen)[None, :] - np.arange(qlen)[:, None]
    return self._lookup(jnp.asarray(relative), bidirectional)[None]

  def for_query(self, query_position: Array, klen: int, bidirectional: bool = False) -> Array:
    """Returns `[heads, klen]` biases of one (possibly traced) query position."""
    return self._lookup(jnp.arange(klen) - query_position, bidirectional)


def _softmax(logits: Array, dtype) -> Array:
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)


class MultiHeadDotProductAttention(nn.Module):
  """T5 attention: no 1/sqrt(d) in the dot product (it is folded into the query init).

  Besides the full-sequence `__call__`, it offers the incremental pieces of the
  sampler. Caches use the layout `[rows, heads, length, head_dim]` so that every
  per-step contraction has its batch dimensions leading and needs no transpose.
  """

  num_heads: int
  head_dim: int
  out_features: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init

  def setup(self):
    scale = math.sqrt(self.head_dim)
    query_init = lambda *args: self.kernel_init(*args) / scale  # noqa: E731
    # Kernels only: the projections are done here so that self-attention can stack
    # query, key and value into one matrix product.
    # t5x's layout: `[embed, heads * kv]`, reshaped to `[embed, heads, kv]` in `_project`.
    shape = (self.out_features, self.num_heads * self.head_dim)
    axes = ("embed", "joined_kv")
    self.query = Kernel(shape, axes, kernel_init=query_init)
    self.key = Kernel(shape, axes, kernel_init=self.kernel_init)
    self.value = Kernel(shape, axes, kernel_init=self.kernel_init)
    self.out = DenseGeneral(
        self.out_features, ("joined_kv", "embed"), axis=(-2, -1), dtype=self.dtype,
        kernel_init=self.kernel_init,
    )
    self.dropout = nn.Dropout(self.dropout_rate)

  def __call__(
      self,
      inputs_q: Array,
      inputs_kv: Array,
      bias: Array | None = None,
      deterministic: bool = True,
  ) -> Array:
    """Full attention; `bias` is additive, broadcastable to `[batch, heads, q, k]`."""
    if inputs_q is inputs_kv:
      q, k, v = self._project(inputs_q, self.query, self.key, self.value)
    else:
      (q,), (k, v) = self._project(inputs_q, self.query), self._project(inputs_kv, self.key,
                                                                       self.value)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    if bias is not None:
      logits = logits + bias
    weights = self.dropout(_softmax(logits, self.dtype), deterministic=deterministic)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return self.out(out)

  def _project(self, x: Array, *kernels: Kernel) -> Tuple[Array, ...]:
    """`x @ kernel` for each kernel, as one matrix product over the stacked kernels."""
    heads = (self.out_features, self.num_heads, self.head_dim)
    if len(kernels) == 1:
      kernel = kernels[0]().reshape(heads).astype(self.dtype)
      return (jnp.einsum("...e,ehd->...hd", x.astype(self.dtype), kernel),)
    stacked = jnp.stack([k().reshape(heads) for k in kernels], axis=1).astype(self.dtype)
    out = jnp.einsum("...e,ethd->...thd", x.astype(self.dtype), stacked)
    parts = lax.split(out, (1,) * len(kernels), axis=out.ndim - 3)
    return tuple(p.squeeze(out.ndim - 3) for p in parts)

  def project_kv(self, inputs_kv: Array) -> Tuple[Array, Array]:
    """Keys `[batch, heads, kv, length]` and values `[batch, heads, length, kv]` of the inputs.

    The keys are stored transposed: the per-step scores are then a plain
    `[samples, kv] x [kv, length]` product per head, about twice as fast on CPU
    as contracting the keys' last axis.
    """
    k, v = self._project(inputs_kv, self.key, self.value)
    return k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)

  def self_attend_step(
      self, x: Array, keys: Sequence[Array], values: Sequence[Array], step: Array,
      bias: Array, phase: int,
  ) -> Tuple[Array, Tuple[Array, ...], Tuple[Array, ...]]:
    """One causal self-attention step against a cache kept in chunks.

    The cache is a sequence of chunks `[rows, heads, chunk, kv]` covering
    consecutive positions. In phase `p` every step lies in chunk `p`, and only
    chunks `0..p` are read: reading the cache is the memory-bound part of a
    decode step, and this halves it on average. Separate arrays (rather than a
    slice of one) keep each read contiguous.

    Args:
      x: `[rows, embed]`, the current position of every row.
      keys: key chunks.
      values: value chunks, same shapes.
      step: scalar position being decoded, inside chunk `phase`.
      bias: `[heads, (phase + 1) * chunk]` additive bias (relative positions
        and the causal mask) for this position.
      phase: static index of the chunk being written.

    Returns:
      The attention output `[rows, embed]` and the updated chunks.
    """
    q, k, v = self._project(x, self.query, self.key, self.value)
    chunk = keys[0].shape[2]
    offset = step - phase * chunk
    keys, values = list(keys), list(values)
    keys[phase] = lax.dynamic_update_slice(
        keys[phase], k[:, :, None, :].astype(keys[phase].dtype), (0, 0, offset, 0))
    values[phase] = lax.dynamic_update_slice(
        values[phase], v[:, :, None, :].astype(values[phase].dtype), (0, 0, offset, 0))
    logits = jnp.concatenate(
        [jnp.einsum("rhd,rhld->rhl", q, keys[c], preferred_element_type=jnp.float32)
         for c in range(phase + 1)], axis=-1)
    weights = _softmax(logits + bias, self.dtype)
    out = sum(jnp.einsum("rhl,rhld->rhd", weights[..., c * chunk:(c + 1) * chunk], values[c])
              for c in range(phase + 1))
    return self.out(out), tuple(keys), tuple(values)

  def cross_attend_step(
      self, x: Array, keys: Array, values: Array, bias: Array, num_decodes: int
  ) -> Array:
    """Attends `num_decodes` rows per input to that input's shared encoder keys/values.

    Args:
      x: `[batch * num_decodes, embed]`, rows grouped by input.
      keys: `[batch, heads, kv, enc_length]` from `project_kv`, one copy per input.
      values: `[batch, heads, enc_length, kv]`, likewise.
      bias: `[batch, 1, 1, enc_length]` additive encoder padding mask.
      num_decodes: rows per input.

    Returns:
      `[batch * num_decodes, embed]`.
    """
    rows = x.shape[0]
    (q,) = self._project(x, self.query)
    q = q.reshape(rows // num_decodes, num_decodes, self.num_heads, self.head_dim)
    q = q.transpose(0, 2, 1, 3)  # [batch, heads, num_decodes, kv]
    logits = jnp.einsum("bhnd,bhdl->bhnl", q, keys, preferred_element_type=jnp.float32)
    weights = _softmax(logits + bias, self.dtype)
    out = jnp.einsum("bhnl,bhld->bhnd", weights, values).transpose(0, 2, 1, 3)
    return self.out(out.reshape(rows, self.num_heads, self.head_dim))
