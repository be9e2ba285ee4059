"""Test setup: 8 simulated CPU devices, a private cache dir, the tiny model."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import pytest  # noqa: E402
import seqio  # noqa: E402

from rest_jax import decoding  # noqa: E402
from rest_jax.models import model as models, network  # noqa: E402

TINY = dict(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
            num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
  os.environ["REST_JAX_CACHE"] = str(tmp_path_factory.mktemp("rest_jax_cache"))


def make_model(decode_fn=decoding.temperature_sample, vocabulary=None, **overrides):
  cfg = network.T5Config(**{**TINY, **overrides})
  vocab = vocabulary or seqio.PassThroughVocabulary(cfg.vocab_size, eos_id=1)
  return models.EncoderDecoderModel(network.Transformer(cfg), vocab, vocab, decode_fn=decode_fn)


def init_params(model, batch=4, length=8, seed=0):
  shapes = {"encoder_input_tokens": (batch, length), "decoder_input_tokens": (batch, length),
            "decoder_target_tokens": (batch, length)}
  return model.get_initial_variables(jax.random.PRNGKey(seed), shapes)["params"]


def grown_row(source_id, sample_id, targets="t", reward=0.5, is_reference=0, **overrides):
  """A complete grown-dataset row (format 2) with plausible defaults."""
  ids = [3] * max(1, len(targets)) + [1]
  row = {"inputs": "a", "targets": targets, "target_ids": ids, "reward": reward,
         "scored": 1, "source_id": source_id, "sample_id": sample_id,
         "is_reference": is_reference, "ended_with_eos": 1, "value": 0.5, "value_loo": 0.5,
         "behaviour_log_probs": [-1.0] * len(ids), "policy_log_probs": [-1.2] * len(ids)}
  row.update(overrides)
  return row
