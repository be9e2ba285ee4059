"""The T5.1.1 encoder-decoder network (Flax Linen), parameter tree as in t5x.

Parameter paths match `t5x/examples/t5/network.py` (`token_embedder/embedding`,
`encoder/layers_0/attention/query/kernel`, `decoder/logits_dense/kernel`, ...), so a
t5x checkpoint's `target` tree has the same names and logical axes.

Decoding entry points (used by `EncoderDecoderModel`, never by `decoding.py`):
`encode` once per input, `cross_attention_kv` once per input, then `decode_step`
once per generated token against a key/value cache.
"""

import dataclasses
from typing import Any, List, Sequence, Tuple

from flax import linen as nn
import jax
import jax.numpy as jnp

from rest_jax.models import layers

Array = jax.Array
# Per decoder layer: (key chunks, value chunks), each chunk
# `[rows, heads, chunk_length, head_dim]`, together covering the decode length.
DecoderCache = List[Tuple[Tuple[Array, ...], Tuple[Array, ...]]]


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyperparameters of the network; the gin model files set these."""

  vocab_size: int
  dtype: Any = jnp.float32
  emb_dim: int = 512
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  head_dim: int = 64
  mlp_dim: int = 2048
  mlp_activations: Sequence[str] = ("gelu", "linear")
  dropout_rate: float = 0.1
  # If True, the output layer is the transposed token embedding.
  logits_via_embedding: bool = False
  num_buckets: int = 32
  max_distance: int = 128

  def __post_init__(self):
    # gin hands over lists; keep the config hashable.
    object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))


def _attention(cfg: T5Config, name=None) -> layers.MultiHeadDotProductAttention:
  return layers.MultiHeadDotProductAttention(
      num_heads=cfg.num_heads, head_dim=cfg.head_dim, out_features=cfg.emb_dim,
      dropout_rate=cfg.dropout_rate, dtype=cfg.dtype, name=name,
  )


def _mlp(cfg: T5Config, name=None) -> layers.MlpBlock:
  return layers.MlpBlock(
      intermediate_dim=cfg.mlp_dim, activations=cfg.mlp_activations,
      dropout_rate=cfg.dropout_rate, dtype=cfg.dtype, name=name,
  )


def _relpos(cfg: T5Config, name=None) -> layers.RelativePositionBiases:
  return layers.RelativePositionBiases(
      num_buckets=cfg.num_buckets, max_distance=cfg.max_distance,
      num_heads=cfg.num_heads, dtype=cfg.dtype, name=name,
  )


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, bias: Array, deterministic: bool) -> Array:
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    y = layers.RMSNorm(dtype=cfg.dtype, name="pre_attention_layer_norm")(x)
    y = _attention(cfg, "attention")(y, y, bias, deterministic=deterministic)
    x = x + dropout(y, deterministic=deterministic)
    y = layers.RMSNorm(dtype=cfg.dtype, name="pre_mlp_layer_norm")(x)
    y = _mlp(cfg, "mlp")(y, deterministic=deterministic)
    return x + dropout(y, deterministic=deterministic)


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens: Array, deterministic: bool) -> Array:
    cfg = self.config
    length = tokens.shape[-1]
    valid = tokens > 0
    padding = jnp.where(valid[:, None, :, None] & valid[:, None, None, :], 0.0, layers.NEG_INF)
    bias = _relpos(cfg, "relpos_bias")(length, length, bidirectional=True) + padding
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    x = dropout(self.shared_embedding(tokens), deterministic=deterministic)
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(x, bias, deterministic)
    x = layers.RMSNorm(dtype=cfg.dtype, name="encoder_norm")(x)
    return dropout(x, deterministic=deterministic)


class DecoderLayer(nn.Module):
  config: T5Config

  def setup(self):
    cfg = self.config
    self.pre_self_attention_layer_norm = layers.RMSNorm(dtype=cfg.dtype)
    self.self_attention = _attention(cfg)
    self.pre_cross_attention_layer_norm = layers.RMSNorm(dtype=cfg.dtype)
    self.encoder_decoder_attention = _attention(cfg)
    self.pre_mlp_layer_norm = layers.RMSNorm(dtype=cfg.dtype)
    self.mlp = _mlp(cfg)
    self.dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))

  def __call__(self, x, encoded, self_bias, cross_bias, deterministic: bool):
    drop = lambda y: self.dropout(y, deterministic=deterministic)  # noqa: E731
    y = self.pre_self_attention_layer_norm(x)
    x = x + drop(self.self_attention(y, y, self_bias, deterministic=deterministic))
    y = self.pre_cross_attention_layer_norm(x)
    x = x + drop(self.encoder_decoder_attention(y, encoded, cross_bias, deterministic=deterministic))
    y = self.pre_mlp_layer_norm(x)
    return x + drop(self.mlp(y, deterministic=deterministic))

  def cross_attention_kv(self, encoded: Array) -> Tuple[Array, Array]:
    return self.encoder_decoder_attention.project_kv(encoded)

  def decode_step(self, x, cache, step, self_bias, cross_kv, cross_bias, num_decodes, phase):
    y = self.pre_self_attention_layer_norm(x)
    y, k, v = self.self_attention.self_attend_step(y, cache[0], cache[1], step, self_bias, phase)
    x = x + y
    y = self.pre_cross_attention_layer_norm(x)
    x = x + self.encoder_decoder_attention.cross_attend_step(y, *cross_kv, cross_bias, num_decodes)
    y = self.pre_mlp_layer_norm(x)
    return x + self.mlp(y, deterministic=True), (k, v)


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  def setup(self):
    cfg = self.config
    self.relpos_bias = _relpos(cfg)
    self.layers = [DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers)]
    self.decoder_norm = layers.RMSNorm(dtype=cfg.dtype)
    self.dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    if not cfg.logits_via_embedding:
      self.logits_dense = layers.DenseGeneral(
          cfg.vocab_size, ("embed", "vocab"), dtype=jnp.float32
      )

  def _logits(self, y: Array) -> Array:
    if self.config.logits_via_embedding:
      # Tied embeddings: rescale so logits keep the scale of an untied layer.
      return self.shared_embedding.attend(y) / jnp.sqrt(y.shape[-1]).astype(jnp.float32)
    return self.logits_dense(y)

  def __call__(self, encoded, encoder_tokens, decoder_input_tokens, decoder_target_tokens,
               deterministic: bool) -> Array:
    length = decoder_input_tokens.shape[-1]
    valid = decoder_target_tokens > 0
    causal = jnp.tril(jnp.ones((length, length), bool))
    self_mask = causal[None, None] & valid[:, None, :, None] & valid[:, None, None, :]
    self_bias = self.relpos_bias(length, length, bidirectional=False) + jnp.where(
        self_mask, 0.0, layers.NEG_INF
    )
    cross_mask = valid[:, None, :, None] & (encoder_tokens > 0)[:, None, None, :]
    cross_bias = jnp.where(cross_mask, 0.0, layers.NEG_INF)
    y = self.dropout(self.shared_embedding(decoder_input_tokens), deterministic=deterministic)
    for layer in self.layers:
      y = layer(y, encoded, self_bias, cross_bias, deterministic)
    y = self.dropout(self.decoder_norm(y), deterministic=deterministic)
    return self._logits(y)

  def cross_attention_kv(self, encoded: Array) -> List[Tuple[Array, Array]]:
    return [layer.cross_attention_kv(encoded) for layer in self.layers]

  def decode_step(self, tokens, cache, step, cross_kv, cross_bias, num_decodes, phase):
    visible = (phase + 1) * cache[0][0][0].shape[2]  # positions in chunks 0..phase
    causal = jnp.where(jnp.arange(visible) <= step, 0.0, layers.NEG_INF)
    self_bias = self.relpos_bias.for_query(step, visible, bidirectional=False) + causal
    y = self.shared_embedding(tokens)
    new_cache = []
    for layer, layer_cache, kv in zip(self.layers, cache, cross_kv):
      y, layer_cache = layer.decode_step(
          y, layer_cache, step, self_bias, kv, cross_bias, num_decodes, phase
      )
      new_cache.append(layer_cache)
    return self._logits(self.decoder_norm(y)), new_cache


class Transformer(nn.Module):
  """T5.1.1 encoder-decoder with t5x's call signature and parameter names."""

  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, dtype=cfg.dtype)
    self.encoder = Encoder(cfg, shared_embedding=self.token_embedder)
    self.decoder = Decoder(cfg, shared_embedding=self.token_embedder)

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = True) -> Array:
    return self.encoder(encoder_input_tokens, deterministic=not enable_dropout)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
             enable_dropout: bool = True) -> Array:
    return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens,
                        decoder_target_tokens, deterministic=not enable_dropout)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
               *, enable_dropout: bool = True) -> Array:
    """Logits `[batch, target_length, vocab]` (teacher forcing)."""
    encoded = self.encode(encoder_input_tokens, enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens, enable_dropout)

  def cross_attention_kv(self, encoded: Array) -> List[Tuple[Array, Array]]:
    """Per decoder layer, the encoder keys and values of each input (see `project_kv`)."""
    return self.decoder.cross_attention_kv(encoded)

  def init_cache(self, rows: int, max_length: int, chunk_length: int) -> DecoderCache:
    """An empty self-attention cache of `ceil(max_length / chunk_length)` chunks per layer."""
    cfg = self.config
    num_chunks = -(-max_length // chunk_length)
    shape = (rows, cfg.num_heads, chunk_length, cfg.head_dim)
    chunks = lambda: tuple(jnp.zeros(shape, cfg.dtype) for _ in range(num_chunks))  # noqa: E731
    return [(chunks(), chunks()) for _ in range(cfg.num_decoder_layers)]

  def decode_step(self, tokens: Array, cache: DecoderCache, step: Array, cross_kv,
                  encoder_input_tokens: Array, num_decodes: int, phase: int = 0):
    """Logits `[rows, vocab]` for one position and the updated cache.

    Args:
      tokens: `[batch * num_decodes]` tokens at position `step`.
      cache: from `init_cache` or the previous step.
      step: scalar int position.
      cross_kv: from `cross_attention_kv`, one entry per input (not per row).
      encoder_input_tokens: `[batch, enc_len]`, for the padding mask.
      num_decodes: rows per input; rows of one input are consecutive.
      phase: static index of the cache chunk that holds `step`.
    """
    cross_bias = jnp.where(encoder_input_tokens > 0, 0.0, layers.NEG_INF)[:, None, None, :]
    return self.decoder.decode_step(tokens, cache, step, cross_kv, cross_bias, num_decodes,
                                    phase)
