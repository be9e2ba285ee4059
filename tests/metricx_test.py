"""MetricX in JAX equals the published PyTorch MetricX on the same checkpoint.

tests/fixtures/metricx/reference.json holds the predictions that google-research/metricx's
`MT5ForRegression` computed (make_reference.py beside it, run once with torch) on a tiny mT5
checkpoint of seeded random weights; the test rebuilds that checkpoint from the seed, loads
it from the Hugging Face layout into rest_jax's T5 stack, and compares.
"""

import json
import os
import shutil

import numpy as np
import pytest

from rest_jax import partitioning, rewards
from rest_jax.rewards import hf_t5, metricx

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "metricx")


@pytest.fixture(scope="module")
def reference():
  with open(os.path.join(FIXTURE, "reference.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def checkpoint(reference, tmp_path_factory):
  directory = tmp_path_factory.mktemp("metricx")
  hf_t5.random_checkpoint(str(directory), reference["config"], seed=reference["seed"],
                          scales=reference["scales"])
  shutil.copy(os.path.join(FIXTURE, "spiece.model"), directory / "spiece.model")
  return str(directory)


def _case(reference, version, qe):
  return next(c for c in reference["cases"] if c["version"] == version and c["qe"] == qe)


@pytest.mark.parametrize("version,qe", [(23, False), (23, True), (24, False), (24, True)])
def test_scores_equal_the_published_pytorch_code(reference, checkpoint, version, qe):
  case = _case(reference, version, qe)
  want = np.array(case["predictions"])
  # The reference must be informative: scores inside (0, 25), not all clipped.
  assert ((want > 0.1) & (want < 24.9)).sum() >= 3, want
  reward = rewards.get("metricx", checkpoint_dir=checkpoint, version=version,
                       use_reference=not qe, batch_size=4, bucket_length=16,
                       max_input_length=reference["max_input_length"], progress_bar=False)
  assert reward.name == f"metricx{version}" + ("-qe" if qe else "")
  assert reward.needs_reference == (not qe)
  refs = None if qe else case["references"]
  # The same input text and token ids as the Hugging Face tokenizer's, cut the same way.
  assert reward.tokenize(case["sources"], case["hypotheses"], refs) == case["input_ids"]
  assert reward.overlength >= 1  # the long case was cut
  # Several lengths in one padded batch, over 8 devices: each equals its unpadded reference.
  got = reward.error_scores(case["sources"], case["hypotheses"], refs)
  np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
  np.testing.assert_allclose(reward(case["sources"], case["hypotheses"], refs),
                             1 - want / 25, atol=1e-5)


def test_bfloat16_and_a_model_parallel_mesh_and_the_cache(reference, checkpoint, tmp_path):
  case = _case(reference, 24, False)
  want = np.array(case["predictions"])
  reward = metricx.MetricX(checkpoint, version=24, dtype="bfloat16", batch_size=8,
                           max_input_length=reference["max_input_length"], progress_bar=False,
                           partitioner=partitioning.Partitioner(mesh_shape=(4, 2)))
  got = reward.error_scores(case["sources"], case["hypotheses"], case["references"])
  assert np.abs(got - want).max() < 0.05 * 25, (got, want)  # bfloat16: close, not equal
  # Cached by checkpoint and precision: a repeated Grow step scores nothing again.
  assert checkpoint in reward.identity and "bfloat16" in reward.identity
  cached = rewards.Cached(reward, directory=str(tmp_path))
  first = cached(case["sources"], case["hypotheses"], case["references"])
  again = cached(case["sources"], case["hypotheses"], case["references"])
  assert cached.misses == len(want) and cached.hits == len(want)
  np.testing.assert_array_equal(first, again)


def test_missing_checkpoint_or_tokenizer_says_what_to_download(tmp_path, checkpoint):
  with pytest.raises(FileNotFoundError, match="huggingface-cli download google/metricx-24"):
    metricx.MetricX(str(tmp_path))
  (tmp_path / "config.json").write_text(open(os.path.join(checkpoint, "config.json")).read())
  with pytest.raises(FileNotFoundError, match="spiece.model of google/mt5-large"):
    metricx.MetricX(str(tmp_path))
  with pytest.raises(ValueError, match="23 or 24"):
    metricx.input_text(22, "s", "h", "r")


def test_a_missing_or_misshaped_tensor_is_named(tmp_path, reference):
  config = dict(reference["config"], num_layers=1, num_decoder_layers=1)
  hf_t5.random_checkpoint(str(tmp_path), config, seed=0)
  weights = metricx.read_hf_weights(str(tmp_path))
  cfg = metricx.network_config(config)
  del weights["decoder.final_layer_norm.weight"]
  with pytest.raises(ValueError, match="decoder.final_layer_norm.weight"):
    metricx.hf_to_params(weights, cfg)


def test_the_readme_gin_block_builds_the_guarded_cached_reward(checkpoint, tmp_path, monkeypatch):
  """The MetricX gin block of docs/rewards.md (the README links it), as written."""
  import re

  import gin

  with open(os.path.join(os.path.dirname(FIXTURE), "..", "..", "docs", "rewards.md")) as f:
    readme = f.read()
  block = re.search(r"```\n(from rest_jax import partitioning\n.*?)```", readme, re.S).group(1)
  monkeypatch.setenv("REST_JAX_CACHE", str(tmp_path))
  gin.clear_config()
  try:
    gin.parse_config("from __gin__ import dynamic_registration\n" + block.replace(
        "/data/metricx24-large", checkpoint) + "metricx.MetricX.progress_bar = False\n")
    reward = gin.query_parameter("%REWARD").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert isinstance(reward, rewards.Guarded) and isinstance(reward.reward, rewards.Cached)
  assert reward.name == "guarded(metricx24-qe)" and not reward.needs_reference
  scores = reward(["the house is small"] * 2, ["das Haus ist klein", ""])
  assert scores[1] == 0.0 and reward.fired["empty"] == 1 and sum(reward.fired.values()) == 1
