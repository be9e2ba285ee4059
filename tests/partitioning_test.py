"""Sharded equals unsharded: the same loss, parameters and samples on 1, 8x1 and 4x2 meshes."""

import jax
import numpy as np
import pytest

from rest_jax import inference, partitioning, sampling, trainer as trainer_lib
from tests.conftest import make_model

LENGTH = 8
BATCH = 8


def _batch():
  rng = np.random.RandomState(0)
  enc = rng.randint(2, 64, (BATCH, LENGTH)).astype(np.int32)
  tgt = rng.randint(2, 64, (BATCH, LENGTH)).astype(np.int32)
  tgt[:, -2:] = 0
  dec_in = np.concatenate([np.zeros((BATCH, 1), np.int32), tgt[:, :-1]], 1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt, "decoder_loss_weights": (tgt > 0).astype(np.int32)}


def _run(partitioner):
  model = make_model()
  trainer = trainer_lib.Trainer(model, partitioner,
                                trainer_lib.batch_input_shapes(BATCH, {"inputs": LENGTH,
                                                                       "targets": LENGTH}))
  state = trainer.init_state(jax.random.PRNGKey(0))
  batch = _batch()
  losses = []
  for _ in range(2):
    state, metrics = trainer.train_step(state, partitioner.shard_batch(batch),
                                        jax.random.PRNGKey(1))
    losses.append(float(metrics["loss"].compute()))
  sampler = inference.PolicyDecoder(model, partitioner, trainer.params_sharding, num_decodes=3,
                                    sampling=sampling.SamplingConfig(temperature=1.0))
  keys = inference.sample_keys(5, 1, np.arange(BATCH), 3)
  out = sampler(state.params, batch["encoder_input_tokens"], LENGTH, keys)
  return losses, trainer_lib.to_host(state.params), out["tokens"], out["scores"]


@pytest.fixture(scope="module")
def single_device():
  return _run(partitioning.Partitioner(devices=jax.devices()[:1]))


@pytest.mark.parametrize("mesh_shape", [(8, 1), (4, 2), (2, 4)])
def test_sharded_matches_single_device(single_device, mesh_shape):
  assert jax.device_count() >= 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
  partitioner = partitioning.Partitioner(mesh_shape=mesh_shape)
  losses, params, samples, scores = _run(partitioner)
  ref_losses, ref_params, ref_samples, ref_scores = single_device
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), params,
                         ref_params)
  np.testing.assert_array_equal(samples, ref_samples)
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-4)


def test_model_axis_shards_parameters_by_logical_names():
  partitioner = partitioning.Partitioner(mesh_shape=(4, 2))
  trainer = trainer_lib.Trainer(make_model(), partitioner,
                                trainer_lib.batch_input_shapes(BATCH, {"inputs": LENGTH,
                                                                       "targets": LENGTH}))
  sharding = trainer.params_sharding
  assert tuple(sharding["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].spec) == (None, "model")
  assert tuple(sharding["encoder"]["layers_0"]["attention"]["query"]["kernel"].spec) == (
      None, "model")  # ("embed", "joined_kv")
  assert tuple(sharding["token_embedder"]["embedding"].spec) == ("model", None)
  assert tuple(sharding["encoder"]["encoder_norm"]["scale"].spec) == (None,)


def test_bad_mesh_shapes_are_clear_errors():
  with pytest.raises(ValueError, match="needs 6 devices"):
    partitioning.Partitioner(mesh_shape=(3, 2))
  partitioner = partitioning.Partitioner(mesh_shape=(1, 8))
  with pytest.raises(ValueError, match="not divisible by mesh axis 'model'"):
    trainer_lib.Trainer(make_model(num_heads=3), partitioner,
                        trainer_lib.batch_input_shapes(BATCH, {"inputs": LENGTH,
                                                               "targets": LENGTH}))
