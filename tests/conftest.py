"""Test setup: 8 simulated CPU devices, private cache dirs, the tiny model, file order."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent XLA compilation cache for the session: the test processes and every
# `python -m rest_jax.main` they start compile the same small programs, once (a small
# ReST run as a subprocess: 98 s cold, 58 s warm). xdist's workers inherit the
# controller's directory; the process that made it removes it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="rest_jax_xla_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402
import seqio  # noqa: E402

from rest_jax import decoding  # noqa: E402
from rest_jax.models import model as models, network  # noqa: E402

TINY = dict(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
            num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)


# `make test` sends whole files to its three workers (`--dist loadfile`: a module fixture such
# as the preemption reference run or t5x.train's checkpoints is built once) in collection
# order (`--no-loadscope-reorder`; xdist would order files by test count). These files take
# the longest (measured, seconds of one worker); they go first so that no long file starts
# last while the other workers idle. A file not listed keeps its place after them.
LONGEST_FIRST = ("faults/preemption_test.py",  # ~650: reference run, SIGTERM, 10 kills
                 "multihost_test.py",  # ~600
                 "rest_test.py",  # ~400
                 "stages_test.py",  # ~350
                 "faults/gcs_test.py",  # ~300
                 "t5x_test.py", "steps_test.py", "train_test.py",
                 "translation_tasks_test.py", "readme_commands_test.py",
                 "faults/soak_test.py", "partitioning_test.py")


def pytest_collection_modifyitems(items):
  def rank(item):
    path = item.nodeid.split("::")[0]
    return next((i for i, name in enumerate(LONGEST_FIRST) if path.endswith(name)),
                len(LONGEST_FIRST))
  items.sort(key=rank)  # stable: a file's tests stay together and in order


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
