"""`plan`: bytes per device and collectives, checked against hand computation on the tiny model."""


import gin
import jax
import jax.numpy as jnp
import optax

from rest_jax import main, partitioning, plan
from rest_jax.models import model as models, network
from tests.conftest import TINY

import seqio

V, E, H, D, M, B = 64, 32, 4, 8, 64, 32  # vocab, embed, heads, head dim, mlp, relpos buckets
DATA, MODEL = 4, 2


def _hand_params_bytes():
  """Per device on a 4x2 mesh: heads, mlp and vocab axes split in 2, the rest replicated."""
  attention = 4 * E * H * D // MODEL  # query, key, value, out
  mlp = 3 * E * M // MODEL  # wi_0, wi_1, wo
  encoder_layer = attention + mlp + 2 * E  # + 2 layer norms
  decoder_layer = 2 * attention + mlp + 3 * E
  floats = (V * E // MODEL  # token_embedder
            + 2 * encoder_layer + E + H * B // MODEL  # layers, encoder_norm, relpos_bias
            + 2 * decoder_layer + E + H * B // MODEL  # + decoder_norm, relpos_bias
            + E * V // MODEL)  # logits_dense
  return 4 * floats


def test_plan_bytes_match_hand_computation():
  model = models.EncoderDecoderModel(
      network.Transformer(network.T5Config(**TINY)), seqio.PassThroughVocabulary(V, eos_id=1),
      seqio.PassThroughVocabulary(V, eos_id=1), optimizer_def=optax.adam(1e-3))
  rows, samples, lengths = 8, 2, {"inputs": 16, "targets": 16}
  result = plan.make_plan(model=model, feature_lengths=lengths, batch_size=16,
                          partitioner=partitioning.Partitioner(mesh_shape=(DATA, MODEL)),
                          decode_batch_size=rows, num_decodes=samples)
  params = _hand_params_bytes()
  assert result.bytes_per_device["params"] == params
  # Adam: two moments shaped and sharded like the parameters, and a replicated int32 count.
  assert result.bytes_per_device["optimizer_state"] == 2 * params + 4
  # Self-attention cache: K and V of every sample (rows x N) over 16 positions; encoder
  # keys and values of every source over 16 inputs; rows over data, heads over model.
  per_layer = 2 * rows * samples * H * 16 * D + 2 * rows * H * 16 * D
  assert result.bytes_per_device["kv_cache"] == 4 * 2 * per_layer // (DATA * MODEL)
  key = next(r for r in result.params if r["name"] == "encoder/layers_0/attention/key/kernel")
  assert key["logical"] == ("embed", "joined_kv") and key["mesh"] == (None, "model")
  assert key["bytes_per_device"] == 4 * E * H * D // MODEL
  # Data parallelism sums gradients: the train step must all-reduce.
  assert result.collectives["train_step"]["all-reduce"]["count"] > 0
  assert result.bytes_per_device["train_step_temporaries"] > 0


def test_collectives_parser_counts_an_all_reduce():
  p = partitioning.Partitioner(mesh_shape=(8, 1))
  x = jax.ShapeDtypeStruct((64, 128), jnp.float32, sharding=p.data_sharding())
  compiled = jax.jit(lambda a: a.sum(axis=0), out_shardings=p.replicated).lower(x).compile()
  found = plan.collectives(compiled.as_text())
  assert found["all-reduce"]["count"] >= 1 and found["all-reduce"]["bytes"] >= 128 * 4


def test_plan_command_prints_the_report(capsys):
  try:
    main.main(["plan", "--gin_file=configs/demo.gin", "--gin.MODEL_DIR='unused'", "--mesh=4x2",
               "--gin.BATCH_SIZE=16", "--gin.GROW_BATCH_SIZE=8"])
  finally:
    gin.clear_config()
  out = capsys.readouterr().out
  assert "mesh: data=4 x model=2" in out
  assert "token_embedder/embedding | (384, 128) | vocab,embed | model,None | 98304" in out
  assert "collectives in train_step:" in out and "all-reduce" in out
