"""T5.1.1 base and large in bfloat16 on one accelerator: training and Grow's sampling,
rest_jax's beside t5x's on the same device in the same run.

  python -m benchmarks.accelerator [--sizes base large] [--json rows.json]
  python -m benchmarks.accelerator --smoke    # the same configs at one layer, small shapes (CPU)

Shapes that fill one 80-141 GB chip: training batches of 256 (base) and 128 (large)
pairs of 128 + 128 tokens; Grow at the paper's WMT N = 25 samples per source (32 and
16 sources), 128 input tokens, 128 sampled tokens at T 0.8, no early end. Random
weights; activations bfloat16, parameters float32 (as t5x's gin files set them).

Rows:
  train      tokens/s (inputs + targets) and model FLOPs utilisation: the matmul FLOPs of a
             step (forward and backward, `common.useful_gflops_per_step`) against this run's
             bfloat16 matmul peak. rest_jax's `Trainer` (its default optimizer) beside t5x's
             `trainer.train_with_lr` (t5x's Adafactor, as its base_model.gin sets it).
  sample     sampled tokens/s and the fraction of the memory-bandwidth bound: each decode
             step must read the decoder's parameters, the self-attention keys/values
             decoded so far and each source's cross-attention keys/values once; that
             many bytes at this run's measured bandwidth is the least time a step takes
             (a model small enough to stay in a CPU's caches, as `--smoke`'s, can beat it:
             a fraction above 1 there says so).
             rest_jax's sampler (per-token log-probabilities kept, as Grow runs it)
             beside t5x's `temperature_sample` (topk=0, rescale_log_probs=False).

Runs without TensorFlow: the vocabulary is only a size here. t5x imports TensorFlow
(through seqio), so where it cannot be imported its rows say so and ours still run.
"""

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from rest_jax import decoding, partitioning, trainer as trainer_lib
from rest_jax.models import model as models, network

T5_1_1 = dict(vocab_size=32128, dropout_rate=0.0, mlp_activations=("gelu", "linear"),
              logits_via_embedding=False)
SIZES = {
    "base": dict(emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048,
                 num_encoder_layers=12, num_decoder_layers=12),
    "large": dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=2816,
                  num_encoder_layers=24, num_decoder_layers=24),
}
# (batch, input tokens, target tokens) and (sources, samples per source, input, sampled).
TRAIN = {"base": (256, 128, 128), "large": (128, 128, 128)}
GROW = {"base": (32, 25, 128, 128), "large": (16, 25, 128, 128)}
SMOKE_TRAIN, SMOKE_GROW = (4, 32, 32), (2, 4, 32, 16)
TEMPERATURE = 0.8


class SizeOnlyVocabulary:
  """What the models ask of a vocabulary when no text is encoded: its size and ids."""

  def __init__(self, vocab_size: int):
    self.vocab_size = vocab_size
    self.eos_id, self.pad_id, self.unk_id = 1, 0, 2


def config(size: str, smoke: bool) -> dict:
  dims = {**T5_1_1, **SIZES[size]}
  if smoke:
    dims.update(num_encoder_layers=1, num_decoder_layers=1)
  return dims


def _tokens(batch, length, vocab_size, seed):
  return np.random.RandomState(seed).randint(2, vocab_size, (batch, length)).astype(np.int32)


def _train_batch(batch, in_len, out_len, vocab_size):
  targets = _tokens(batch, out_len, vocab_size, 1)
  return {"encoder_input_tokens": _tokens(batch, in_len, vocab_size, 0),
          "decoder_target_tokens": targets,
          "decoder_input_tokens": np.concatenate(
              [np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1),
          "decoder_loss_weights": np.ones_like(targets, np.float32)}


def decode_step_bytes(cfg, sources, samples, in_len, out_len, param_bytes=2) -> float:
  """Bytes a whole sampling run must read at least, over its `out_len` decode steps."""
  d, hk, m, v = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  layers = cfg.num_decoder_layers
  decoder_params = layers * (8 * d * hk + 3 * d * m) + d * v  # self, cross, MLP; logits
  rows = sources * samples
  self_kv = sum(layers * 2 * rows * (t + 1) * hk for t in range(out_len))  # bf16 cache
  cross_kv = out_len * layers * 2 * sources * in_len * hk
  return out_len * decoder_params * param_bytes + 2 * (self_kv + cross_kv)


def ours_train(dims, shape):
  batch, in_len, out_len = shape
  cfg = network.T5Config(**dims, dtype=jnp.bfloat16)
  vocab = SizeOnlyVocabulary(cfg.vocab_size)
  model = models.EncoderDecoderModel(network.Transformer(cfg), vocab, vocab)
  partitioner = partitioning.Partitioner(devices=jax.devices()[:1])
  trainer = trainer_lib.Trainer(model, partitioner, trainer_lib.batch_input_shapes(
      batch, {"inputs": in_len, "targets": out_len}))
  device_batch = partitioner.shard_batch(_train_batch(batch, in_len, out_len, cfg.vocab_size))
  state = [trainer.init_state(jax.random.PRNGKey(0))]

  def step():
    state[0], metrics = trainer.train_step(state[0], device_batch, jax.random.PRNGKey(1))
    return metrics

  return cfg, common.median_seconds(step, repeats=5)


def t5x_train(dims, shape):
  from t5x import adafactor, models as t5x_models  # pylint: disable=g-import-not-at-top
  from t5x import train_state as t5x_state, trainer as t5x_trainer  # pylint: disable=g-import-not-at-top
  from t5x.examples.t5 import network as t5x_network  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top

  batch, in_len, out_len = shape
  vocab = seqio.PassThroughVocabulary(dims["vocab_size"])
  model = t5x_models.EncoderDecoderModel(
      t5x_network.Transformer(t5x_network.T5Config(**dims, dtype="bfloat16")), vocab, vocab,
      optimizer_def=adafactor.Adafactor(
          decay_rate=0.8, step_offset=0,
          logical_factor_rules=adafactor.standard_logical_factor_rules()))
  host = _train_batch(batch, in_len, out_len, dims["vocab_size"])
  variables = model.get_initial_variables(
      jax.random.PRNGKey(0), {k: v.shape for k, v in host.items()},
      {k: v.dtype for k, v in host.items()})
  state = [t5x_state.FlaxOptimTrainState.create(model.optimizer_def, variables)]
  fn = jax.jit(functools.partial(t5x_trainer.train_with_lr, model=model, num_microbatches=None),
               donate_argnums=(0,))
  device_batch = jax.device_put(host)

  def step():
    state[0], metrics = fn(state[0], device_batch, jnp.float32(1e-3), jax.random.PRNGKey(1))
    return metrics

  return common.median_seconds(step, repeats=5)


def ours_sample(dims, shape):
  sources, samples, in_len, out_len = shape
  cfg = network.T5Config(**dims, dtype=jnp.bfloat16)
  vocab = SizeOnlyVocabulary(cfg.vocab_size)
  model = models.EncoderDecoderModel(network.Transformer(cfg), vocab, vocab,
                                     decode_fn=decoding.temperature_sample)
  shapes = {"encoder_input_tokens": (sources, in_len), "decoder_input_tokens": (sources, out_len),
            "decoder_target_tokens": (sources, out_len)}
  params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
  batch = {"encoder_input_tokens": _tokens(sources, in_len, cfg.vocab_size, 0),
           "decoder_input_tokens": np.zeros((sources, out_len), np.int32)}
  sample = jax.jit(lambda p, b, r: model.predict_batch_with_aux(
      p, b, rng=r, num_decodes=samples, return_all_decodes=True,
      decoder_params={"eos_id": None, "temperature": TEMPERATURE, "topk": 0,
                      "return_token_log_probs": True}))
  seconds = common.median_seconds(lambda: sample(params, batch, jax.random.PRNGKey(2)), 3)
  assert np.asarray(sample(params, batch, jax.random.PRNGKey(2))[0]).shape == (
      sources, samples, out_len)
  return cfg, seconds


def t5x_sample(dims, shape):
  from t5x import decoding as t5x_decoding, models as t5x_models  # pylint: disable=g-import-not-at-top
  from t5x.examples.t5 import network as t5x_network  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top

  sources, samples, in_len, out_len = shape
  vocab = seqio.PassThroughVocabulary(dims["vocab_size"])
  model = t5x_models.EncoderDecoderModel(
      t5x_network.Transformer(t5x_network.T5Config(**dims, dtype="bfloat16")), vocab, vocab,
      optimizer_def=None, decode_fn=t5x_decoding.temperature_sample)
  shapes = {"encoder_input_tokens": (sources, in_len), "decoder_input_tokens": (sources, out_len),
            "decoder_target_tokens": (sources, out_len)}
  params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
  batch = {"encoder_input_tokens": _tokens(sources, in_len, dims["vocab_size"], 0),
           "decoder_input_tokens": np.zeros((sources, out_len), np.int32)}
  sample = jax.jit(lambda p, b, r: model.predict_batch_with_aux(
      p, b, rng=r, num_decodes=samples, return_all_decodes=True,
      decoder_params={"temperature": TEMPERATURE, "topk": 0, "rescale_log_probs": False}))
  return common.median_seconds(lambda: sample(params, batch, jax.random.PRNGKey(2)), 3)


def _t5x_or_reason(fn, *args):
  """`fn(*args)`, or why t5x cannot run here (it imports TensorFlow through seqio)."""
  try:
    return fn(*args), None
  except ImportError as e:
    return None, f"t5x not importable here ({e.name}): install t5x and TensorFlow to compare"


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", nargs="+", default=["base", "large"], choices=sorted(SIZES))
  parser.add_argument("--smoke", action="store_true",
                      help="one layer per side and small shapes: checks the harness on a CPU")
  parser.add_argument("--no_t5x", action="store_true", help="rest_jax's rows only")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  device = jax.devices()[0]
  peak = common.matmul_peak_gflops(dtype=jnp.bfloat16)
  bandwidth = common.memory_bandwidth_gbs()
  print(f"device: {device.device_kind} ({jax.default_backend()}); bf16 matmul peak"
        f" {peak:.4g} GFLOP/s; memory bandwidth {bandwidth:.4g} GB/s")
  rows = []
  for size in args.sizes:
    dims = config(size, args.smoke)
    name = f"T5.1.1-{size}" + (" (1+1 layers, smoke)" if args.smoke else "")
    train_shape = SMOKE_TRAIN if args.smoke else TRAIN[size]
    batch, in_len, out_len = train_shape
    cfg, seconds = ours_train(dims, train_shape)
    gflops = common.useful_gflops_per_step(cfg, batch, in_len, out_len)
    timings = {"rest_jax": seconds}
    if not args.no_t5x:
      timings["t5x"], reason = _t5x_or_reason(t5x_train, dims, train_shape)
    for who, s in timings.items():
      rows.append({"config": f"{name} train b{batch} x {in_len}+{out_len}", "code": who,
                   "tokens_per_s": batch * (in_len + out_len) / s if s else reason,
                   "mfu": gflops / s / peak if s else ""})
    grow_shape = SMOKE_GROW if args.smoke else GROW[size]
    sources, samples, in_len, out_len = grow_shape
    cfg, seconds = ours_sample(dims, grow_shape)
    bound = decode_step_bytes(cfg, sources, samples, in_len, out_len) / (bandwidth * 1e9)
    timings = {"rest_jax": seconds}
    if not args.no_t5x:
      timings["t5x"], reason = _t5x_or_reason(t5x_sample, dims, grow_shape)
    for who, s in timings.items():
      rows.append({"config": f"{name} Grow {sources} x {samples}, {in_len} -> {out_len} tokens",
                   "code": who,
                   "tokens_per_s": sources * samples * out_len / s if s else reason,
                   "bandwidth_bound_fraction": bound / s if s else ""})
  common.report(rows, args.json)


if __name__ == "__main__":
  main()
