"""MetricX (google-research/metricx) as a reward, run in JAX on the project's T5 stack.

MetricX-23 and MetricX-24 are mT5 encoder-decoders trained in t5x on human ratings
and published as Hugging Face checkpoints. A MetricX model reads one input text,
runs its decoder for a single step from token 0, and reads its prediction off the
output logit of token 250089 (mT5's `<extra_id_10>`), clipped to [0, 25]: an error
score, lower is better. The input text each version expects:

    23, with reference:  "candidate: {hypothesis} reference: {reference}"
    23, QE (its -qe models):  "candidate: {hypothesis} source: {source}"
    24 (hybrid), with reference:  "source: {source} candidate: {hypothesis} reference: {reference}"
    24 (hybrid), QE:  "source: {source} candidate: {hypothesis}"

tokenised with mT5's SentencePiece model as the published predict scripts' Hugging Face
tokenizer does (trailing whitespace kept as one piece) and cut to `max_input_length - 1`
pieces, without the end-of-sequence token.

As a reward: `1 - error / 25` on [0, 1], higher is better.

    MODEL_DIR/                   a downloaded checkpoint, e.g. google/metricx-24-hybrid-large-v2p6
      config.json                mT5's hyperparameters (d_model, num_heads, ...)
      model.safetensors          or model.safetensors.index.json + shards, or pytorch_model.bin
      spiece.model               mT5's vocabulary (or `tokenizer_file=`; MetricX's own
                                 repositories do not ship it: take google/mt5-<size>'s)

The weights are loaded into `rest_jax.models.network.Transformer` (t5x's T5.1.1
parameter tree) and sharded on the given mesh; nothing is downloaded at run time.
"""

import json
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import seqio

from rest_jax import partitioning
from rest_jax.models import network
from rest_jax.rewards.base import Reward

PREDICTION_TOKEN = 250089  # mT5's <extra_id_10>: the logit MetricX reads its score from
MAX_ERROR = 25.0
DEFAULT_MAX_INPUT_LENGTH = {23: 1024, 24: 1536}  # the published predict scripts' values
DOWNLOAD_HINT = (
    "download a MetricX checkpoint from Hugging Face first (e.g. `huggingface-cli download"
    " google/metricx-24-hybrid-large-v2p6 --local-dir DIR`, and mT5's spiece.model from"
    " google/mt5-large into the same DIR) and point `metricx.MetricX.checkpoint_dir` at DIR")


def input_text(version: int, source: str, hypothesis: str, reference: Optional[str]) -> str:
  """The text a MetricX model of `version` reads (QE when `reference` is None)."""
  if version == 23:
    if reference is None:
      return f"candidate: {hypothesis} source: {source}"
    return f"candidate: {hypothesis} reference: {reference}"
  if version == 24:
    if reference is None:
      return f"source: {source} candidate: {hypothesis}"
    return f"source: {source} candidate: {hypothesis} reference: {reference}"
  raise ValueError(f"MetricX version {version!r}: 23 or 24")


def error_to_reward(error: np.ndarray) -> np.ndarray:
  """MetricX's error on [0, 25] (lower is better) as a reward on [0, 1] (higher is better)."""
  return 1.0 - np.clip(error, 0.0, MAX_ERROR) / MAX_ERROR


# --- the Hugging Face layout ------------------------------------------------------


def network_config(hf_config: Mapping[str, Any], dtype: Any = jnp.float32) -> network.T5Config:
  """A `T5Config` for an mT5 / T5.1.1 `config.json` (gated-GELU, untied output layer)."""
  proj = hf_config.get("feed_forward_proj", "relu")
  activations = {"gated-gelu": ("gelu", "linear"), "relu": ("relu",),
                 "gated-relu": ("relu", "linear")}.get(proj)
  if activations is None:
    raise ValueError(f"config.json: feed_forward_proj {proj!r} is not supported")
  if hf_config.get("layer_norm_epsilon", 1e-6) != 1e-6:
    raise ValueError(f"config.json: layer_norm_epsilon {hf_config['layer_norm_epsilon']}"
                     " (the T5 stack uses 1e-6)")
  return network.T5Config(
      vocab_size=hf_config["vocab_size"], dtype=dtype, emb_dim=hf_config["d_model"],
      num_heads=hf_config["num_heads"], num_encoder_layers=hf_config["num_layers"],
      num_decoder_layers=hf_config.get("num_decoder_layers") or hf_config["num_layers"],
      head_dim=hf_config["d_kv"], mlp_dim=hf_config["d_ff"], mlp_activations=activations,
      dropout_rate=0.0, logits_via_embedding=bool(hf_config.get("tie_word_embeddings", False)),
      num_buckets=hf_config.get("relative_attention_num_buckets", 32),
      max_distance=hf_config.get("relative_attention_max_distance", 128))


def read_hf_weights(directory: str) -> Dict[str, np.ndarray]:
  """Every tensor of a Hugging Face checkpoint as numpy (bfloat16 as ml_dtypes')."""
  single = os.path.join(directory, "model.safetensors")
  index = os.path.join(directory, "model.safetensors.index.json")
  if os.path.exists(single) or os.path.exists(index):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top

    if os.path.exists(index):
      with open(index) as f:
        paths = sorted(set(json.load(f)["weight_map"].values()))
    else:
      paths = ["model.safetensors"]
    out = {}
    for name in paths:
      with safe_open(os.path.join(directory, name), framework="flax") as f:
        for key in f.keys():
          out[key] = np.asarray(f.get_tensor(key))
    return out
  bin_path = os.path.join(directory, "pytorch_model.bin")
  if os.path.exists(bin_path):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ValueError(f"{bin_path}: PyTorch weights need torch to read; install it, or save"
                       " the checkpoint as safetensors") from None
    state = torch.load(bin_path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}
  raise FileNotFoundError(f"{directory} has no model.safetensors, model.safetensors.index.json"
                          f" or pytorch_model.bin: {DOWNLOAD_HINT}")


def hf_to_params(weights: Mapping[str, np.ndarray], cfg: network.T5Config) -> Dict[str, Any]:
  """The t5x-named parameter tree of `network.Transformer` from Hugging Face T5 weights.

  A Hugging Face linear layer stores `[out, in]`; t5x's kernels are `[in, out]`
  (attention kernels 2-D, `[embed, heads * head_dim]`), so each is transposed;
  the relative position tables are `[buckets, heads]` there and `[heads, buckets]`
  here. A missing or mis-shaped tensor is an error that names it.
  """
  used = set()

  def get(name, transpose=True):
    if name not in weights:
      raise ValueError(f"Hugging Face checkpoint: no tensor {name!r}")
    used.add(name)
    value = weights[name]
    return value.T if transpose else value

  def attention(prefix):
    return {ours: {"kernel": get(f"{prefix}.{theirs}.weight")}
            for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o"))}

  def mlp(prefix):
    names = ("wi_0", "wi_1") if len(cfg.mlp_activations) == 2 else ("wi",)
    out = {n: {"kernel": get(f"{prefix}.DenseReluDense.{n}.weight")} for n in names}
    out["wo"] = {"kernel": get(f"{prefix}.DenseReluDense.wo.weight")}
    return out

  def scale(name):
    return {"scale": get(name, transpose=False)}

  encoder = {"relpos_bias": {"rel_embedding": get(
      "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")},
             "encoder_norm": scale("encoder.final_layer_norm.weight")}
  for i in range(cfg.num_encoder_layers):
    block = f"encoder.block.{i}.layer"
    encoder[f"layers_{i}"] = {
        "pre_attention_layer_norm": scale(f"{block}.0.layer_norm.weight"),
        "attention": attention(f"{block}.0.SelfAttention"),
        "pre_mlp_layer_norm": scale(f"{block}.1.layer_norm.weight"),
        "mlp": mlp(f"{block}.1")}
  decoder = {"relpos_bias": {"rel_embedding": get(
      "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")},
             "decoder_norm": scale("decoder.final_layer_norm.weight")}
  for i in range(cfg.num_decoder_layers):
    block = f"decoder.block.{i}.layer"
    decoder[f"layers_{i}"] = {
        "pre_self_attention_layer_norm": scale(f"{block}.0.layer_norm.weight"),
        "self_attention": attention(f"{block}.0.SelfAttention"),
        "pre_cross_attention_layer_norm": scale(f"{block}.1.layer_norm.weight"),
        "encoder_decoder_attention": attention(f"{block}.1.EncDecAttention"),
        "pre_mlp_layer_norm": scale(f"{block}.2.layer_norm.weight"),
        "mlp": mlp(f"{block}.2")}
  if not cfg.logits_via_embedding:
    decoder["logits_dense"] = {"kernel": get("lm_head.weight")}
  params = {"token_embedder": {"embedding": get("shared.weight", transpose=False)},
            "encoder": encoder, "decoder": decoder}
  # Copies of the shared embedding that some exports keep beside it.
  unused = sorted(set(weights) - used - {"encoder.embed_tokens.weight",
                                         "decoder.embed_tokens.weight"})
  if unused:
    raise ValueError(f"Hugging Face checkpoint: tensors the T5 stack does not use: {unused[:5]}")
  return params


def _check_shapes(params, abstract) -> None:
  flat = dict(jax.tree_util.tree_flatten_with_path(abstract)[0])
  for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
    want = flat[path].shape
    if tuple(value.shape) != tuple(want):
      raise ValueError(f"Hugging Face checkpoint: {jax.tree_util.keystr(path)} has shape"
                       f" {tuple(value.shape)}, config.json implies {tuple(want)}")


# --- the reward ---------------------------------------------------------------------


class MetricX(Reward):
  """A MetricX-23 or -24 checkpoint as a reward on [0, 1]: `1 - error / 25`.

  Args:
    checkpoint_dir: a local copy of a MetricX checkpoint (Hugging Face layout).
    version: 23 or 24 (the input text differs; see the module docstring).
    use_reference: score against the reference (24's hybrid models, 23's reference
      models) or without it (QE: 24's hybrid models, 23's `-qe` models).
    batch_size: inputs per forward pass (rounded up to the data-parallel size).
    max_input_length: input pieces, the end-of-sequence token included (default
      the published scripts': 1024 for 23, 1536 for 24); longer inputs are cut.
    dtype: "float32" or "bfloat16", for activations and parameters.
    tokenizer_file: mT5's SentencePiece model (default `checkpoint_dir/spiece.model`).
    partitioner: the mesh to shard on (the policy's, or by default all devices on `data`).
    bucket_length: inputs are sorted by length and each batch padded up to a multiple
      of this, so padding does not dominate and few shapes are compiled.
    progress_bar: a tqdm bar over batches when there are several.
  """

  range = (0.0, 1.0)

  def __init__(self, checkpoint_dir: str, version: int = 24, use_reference: bool = True,
               batch_size: int = 16, max_input_length: Optional[int] = None,
               dtype: str = "float32", tokenizer_file: Optional[str] = None,
               partitioner: Optional[partitioning.Partitioner] = None, bucket_length: int = 64,
               progress_bar: bool = True):
    if version not in DEFAULT_MAX_INPUT_LENGTH:
      raise ValueError(f"MetricX version {version!r}: 23 or 24")
    config_path = os.path.join(checkpoint_dir, "config.json")
    if not os.path.exists(config_path):
      raise FileNotFoundError(f"{config_path} not found: {DOWNLOAD_HINT}")
    tokenizer_file = tokenizer_file or os.path.join(checkpoint_dir, "spiece.model")
    if not os.path.exists(tokenizer_file):
      raise FileNotFoundError(
          f"{tokenizer_file} not found: MetricX reads mT5's SentencePiece model (spiece.model"
          " of google/mt5-large, the same file for every size); put it there or set"
          " tokenizer_file")
    self.version = version
    self.needs_reference = use_reference
    self.name = f"metricx{version}" + ("" if use_reference else "-qe")
    self.max_input_length = max_input_length or DEFAULT_MAX_INPUT_LENGTH[version]
    # What the scores depend on (rewards.Cached keys on it): another checkpoint, another cache.
    self._identity = (f"{self.name}:{os.path.abspath(checkpoint_dir)}:{self.max_input_length}:"
                     f"{dtype}")
    self.bucket_length = bucket_length
    self.progress_bar = progress_bar
    self.vocabulary = seqio.SentencePieceVocabulary(tokenizer_file)
    space = self.vocabulary.tokenizer.piece_to_id("\u2581")
    self._space_id = None if space == self.vocabulary.tokenizer.unk_id() else space
    with open(config_path) as f:
      hf_config = json.load(f)
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
    self.config = network_config(hf_config, dtype)
    if self.config.vocab_size <= PREDICTION_TOKEN:
      raise ValueError(f"{config_path}: vocab_size {self.config.vocab_size} has no token"
                       f" {PREDICTION_TOKEN}, the logit MetricX predicts with")
    self.network = network.Transformer(self.config)
    self.partitioner = partitioner or partitioning.Partitioner()
    self.batch_size = -(-batch_size // self.partitioner.data_parallel_size) * (
        self.partitioner.data_parallel_size)
    self.params = self._load(checkpoint_dir, dtype)
    self._predict = self.partitioner.partition(
        self._errors, in_shardings=(self._params_sharding, self.partitioner.data_sharding()),
        out_shardings=self.partitioner.data_sharding())
    self.overlength = 0  # inputs cut to max_input_length so far

  def _load(self, checkpoint_dir: str, dtype) -> Any:
    tokens = jnp.ones((1, 1), jnp.int32)
    abstract = jax.eval_shape(lambda: self.network.init(
        jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False))
    params = hf_to_params(read_hf_weights(checkpoint_dir), self.config)
    _check_shapes(params, abstract["params"])
    self._params_sharding = self.partitioner.params_shardings(
        abstract.get("params_axes", {}), abstract["params"])
    cast = np.float32 if dtype == jnp.float32 else ml_dtypes.bfloat16
    return jax.tree_util.tree_map(
        lambda x, s: jax.device_put(np.asarray(x, cast), s), params, self._params_sharding)

  def _errors(self, params, tokens):
    """MetricX's error per row of `tokens` `[batch, length]` (0 = padding)."""
    start = jnp.zeros((tokens.shape[0], 1), jnp.int32)
    logits = self.network.apply({"params": params}, tokens, start, jnp.ones_like(start),
                                enable_dropout=False)
    return jnp.clip(logits[:, 0, PREDICTION_TOKEN].astype(jnp.float32), 0.0, MAX_ERROR)

  @property
  def identity(self) -> str:
    return self._identity

  def tokenize(self, sources: Sequence[str], hypotheses: Sequence[str],
               references: Optional[Sequence[str]]) -> list:
    """The token ids of each input text, cut as the published scripts cut them."""
    out = []
    for i, (source, hypothesis) in enumerate(zip(sources, hypotheses)):
      reference = references[i] if self.needs_reference else None
      text = input_text(self.version, source, hypothesis, reference)
      ids = list(self.vocabulary.encode(text))
      if text != text.rstrip() and self._space_id is not None:
        # Hugging Face's fast T5 tokenizer (the published scripts') keeps trailing
        # whitespace as one "▁" piece, where SentencePiece itself drops it: an empty
        # or space-ended last field (an empty hypothesis in QE) reads as MetricX read it.
        ids.append(self._space_id)
      if len(ids) > self.max_input_length - 1:
        self.overlength += 1
        ids = ids[: self.max_input_length - 1]
      out.append(ids or [self.vocabulary.unk_id])
    return out

  def error_scores(self, sources: Sequence[str], hypotheses: Sequence[str],
                   references: Optional[Sequence[str]] = None) -> np.ndarray:
    """MetricX's own scores: errors on [0, 25], lower is better."""
    return self._score_ids(self.tokenize(sources, hypotheses, references))

  def _score_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
    order = np.argsort([len(x) for x in ids], kind="stable")  # length buckets
    out = np.zeros(len(ids), np.float32)
    starts = range(0, len(ids), self.batch_size)
    if self.progress_bar and len(starts) > 1:
      import tqdm  # pylint: disable=g-import-not-at-top

      starts = tqdm.tqdm(starts, desc=self.name, unit="batch", leave=False)
    for start in starts:
      rows = order[start:start + self.batch_size]
      longest = max(len(ids[i]) for i in rows)
      length = -(-longest // self.bucket_length) * self.bucket_length
      batch = np.zeros((self.batch_size, length), np.int32)
      for j, i in enumerate(rows):
        batch[j, : len(ids[i])] = ids[i]
      errors = self._predict(self.params, self.partitioner.shard_batch(batch))
      out[rows] = np.asarray(jax.device_get(errors))[: len(rows)]
    return out

  def score(self, sources, hypotheses, references):
    return error_to_reward(self.error_scores(sources, hypotheses, references))
