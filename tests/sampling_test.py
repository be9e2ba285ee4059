"""Grow samples on every decode function: N distinct samples per source, and stored
per-token log-probabilities equal to a teacher-forced recomputation.

Run with the built-in model and sampler, and with a real t5x model (`t5x.models.
EncoderDecoderModel` over t5x's own T5.1.1 network, decoding with
`t5x.decoding.temperature_sample` and its real defaults) when t5x is installed (the
`t5x` tests; see the README's "Testing against t5x").
"""

import jax
import numpy as np
import pytest
import tensorflow as tf

from rest_jax import grow, inference, partitioning, rewards, sampling, trainer as trainer_lib
from rest_jax.context import Policy, StepContext
from rest_jax.data import grown, tasks, vocab
from tests.conftest import make_model

LENGTHS = {"inputs": 48, "targets": 40}
T08 = sampling.SamplingConfig(temperature=0.8)


def t5x_model(vocabulary, vocab_size=384):
  """A tiny real t5x T5.1.1 model, configured as t5x's gin files would."""
  t5x_models = pytest.importorskip(
      "t5x.models", reason="t5x is not installed: see the README's 'Testing against t5x'")
  import optax  # pylint: disable=g-import-not-at-top
  from t5x import decoding as t5x_decoding  # pylint: disable=g-import-not-at-top
  from t5x import optimizers  # pylint: disable=g-import-not-at-top
  from t5x.examples.t5 import network  # pylint: disable=g-import-not-at-top

  config = network.T5Config(vocab_size=vocab_size, emb_dim=32, num_heads=4, head_dim=8,
                            mlp_dim=64, num_encoder_layers=2, num_decoder_layers=2,
                            mlp_activations=("gelu", "linear"), dropout_rate=0.0)
  return t5x_models.EncoderDecoderModel(
      network.Transformer(config), vocabulary, vocabulary,
      optimizers.OptaxWrapper(optax.adafactor(1e-3)), decode_fn=t5x_decoding.beam_search)


def _models():
  demo = vocab.DemoVocabulary()
  return {"built-in": lambda: make_model(vocabulary=demo, vocab_size=384),
          "t5x": lambda: t5x_model(demo)}


def test_sampling_config_sets_t5x_arguments_explicitly():
  t5x_decoding = pytest.importorskip("t5x.decoding", reason="t5x is not installed")
  params = T08.decoder_params(t5x_decoding.temperature_sample)
  # t5x's defaults (topk=1: greedy; rescaled scores) must never apply silently.
  assert params == {"temperature": 0.8, "topk": 0, "topp": 0.0, "rescale_log_probs": True}
  model = t5x_model(vocab.DemoVocabulary())
  assert sampling.sampler_of(model) is t5x_decoding.temperature_sample
  assert sampling.beam_search_of(model) is t5x_decoding.beam_search


def _stored_rows(directory):
  manifest = grown.load_manifest(directory)
  ds = tf.data.TFRecordDataset(grown.shard_paths(directory, manifest)).map(
      lambda r: tf.io.parse_single_example(r, grown.feature_spec()))
  return list(ds.as_numpy_iterator()), manifest


@pytest.mark.parametrize("backend", ["built-in", pytest.param("t5x", marks=pytest.mark.t5x)])
def test_grow_samples_and_stores_exact_per_token_log_probs(backend, tmp_path):
  model = _models()[backend]()
  partitioner = partitioning.Partitioner(mesh_shape=(2, 1), devices=jax.devices()[:2])
  trainer = trainer_lib.Trainer(model, partitioner,
                                trainer_lib.batch_input_shapes(8, LENGTHS))
  params = trainer.init_state(jax.random.PRNGKey(1)).params
  context = StepContext(model=model, partitioner=partitioner, task=tasks.DEMO_TASK,
                        feature_lengths=LENGTHS, reward=rewards.get("chrf", processes=1),
                        progress_bar=False)
  timings = grow.grow_step(
      Policy(params), grow.GrowConfig(split="validation", num_samples=4, sampling=T08,
                                      batch_size=8, shard_size=8, max_sources=8),
      context, output_dir=str(tmp_path), params_sharding=trainer.params_sharding)
  rows, manifest = _stored_rows(str(tmp_path))
  assert manifest["metadata"]["sampling"] == {"temperature": 0.8, "topk": 0, "topp": 0.0}
  expected_sampler = "t5x.decoding" if backend == "t5x" else "rest_jax.decoding"
  assert manifest["metadata"]["sampler"] == f"{expected_sampler}.temperature_sample"
  samples = [r for r in rows if not r["is_reference"]]
  assert len(samples) == 8 * 4 and timings["identical_sample_sources"] == 0
  for source in range(8):
    ids = {tuple(r["target_ids"]) for r in samples if r["source_id"] == source}
    assert len(ids) == 4, f"source {source}: {len(ids)} distinct samples of 4"
  # The sampler's sequence scores and the sum of its per-token values agree.
  assert timings["score_mismatch"] < 1e-3

  # Teacher-forced recomputation under the policy's parameters: at T = 0.8 (the
  # distribution sampled from) and at T = 1 (the policy).
  length = LENGTHS["targets"]
  targets = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    targets[i, : len(r["target_ids"])] = r["target_ids"]
  sources = list(inference.source_batches(tasks.DEMO_TASK, "validation", LENGTHS, 8, 0, 8))[0]
  encoder = sources["encoder_input_tokens"][[int(r["source_id"]) for r in rows]]
  behaviour, policy = jax.jit(
      lambda p, e, t: inference.teacher_forced_log_probs(model, p, e, t, T08, 1))(
          jax.device_get(params), encoder, targets)
  for i, r in enumerate(rows):
    n = len(r["target_ids"])
    np.testing.assert_allclose(r["policy_log_probs"], policy[i, :n], atol=2e-4)
    if not r["is_reference"]:  # a reference's behaviour is the policy at T = 1
      np.testing.assert_allclose(r["behaviour_log_probs"], behaviour[i, :n], atol=2e-4)
      assert r["ended_with_eos"] == int(r["target_ids"][-1] == 1)
    else:
      np.testing.assert_allclose(r["behaviour_log_probs"], policy[i, :n], atol=2e-4)
  sample = next(r for r in samples if len(r["target_ids"]) > 3)
  assert not np.allclose(sample["behaviour_log_probs"], sample["policy_log_probs"])
  # chrF reads references: a reference is never scored against itself.
  assert all(np.isnan(r["reward"]) and r["scored"] == 0 for r in rows if r["is_reference"])
