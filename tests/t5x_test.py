"""rest_jax with the real t5x (the `t5x` tests): the README's t5x recipe, run as written.

A checkpoint is written by `python -m t5x.train` (Orbax, t5x's default, and the legacy
format) for a t5x T5.1.1 model shrunk by gin bindings, on a user's own corpus registered
by `translation_tasks.parallel_corpus()` (so the task passes t5x's vocabulary check);
`rest` then runs on that model and that task
configured the README's way (t5x's model gin, then rest_jax's run file), starting from
the checkpoint through t5x's own `INITIAL_CHECKPOINT_PATH` with `BC_STEPS = 0`; `convert`
loads both formats into the t5x model and into the built-in model. Skipped, saying how
to install t5x, when it is missing.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("t5x.train", reason="t5x is not installed: see the README's t5x section"
                    " (make test T5X_WHEELS=<folder of the t5x wheels>)")

from rest_jax import checkpoints, convert, selection  # noqa: E402
from rest_jax.data import demo_corpus, grown, vocab  # noqa: E402
from tests import multihost_test  # noqa: E402

pytestmark = [pytest.mark.t5x, pytest.mark.slow]

T5X_ROOT = os.path.dirname(os.path.dirname(__import__("t5x").__file__))

# The tiny stand-in size, bound over t5x's T5.1.1 small (as a user shrinks a config).
TINY = """
network.T5Config:
  vocab_size = 384
  dtype = 'float32'
  emb_dim = 32
  num_heads = 2
  num_encoder_layers = 1
  num_decoder_layers = 1
  head_dim = 16
  mlp_dim = 64
"""

# A user's own corpus as a seqio task, shared by `t5x.train` and `rest`: TSV files in a
# folder, the task vocabulary bound to the model's SentencePiece file.
USER_CORPUS = """
MIXTURE_OR_TASK_NAME = @translation_tasks.parallel_corpus()
translation_tasks.parallel_corpus:
  name = 't5x_user_corpus'
  directory = '{corpus}'
  source_lang = 'en'
  target_lang = 'de'
translation_tasks.task_vocabulary.sentencepiece_model_file = '{spm}'
"""

# `python -m t5x.train` on that task: t5x's own model and run gins.
T5X_TRAIN = """
from __gin__ import dynamic_registration
import seqio
from rest_jax.data import translation_tasks
from t5x import utils
from t5x.examples.t5 import network

include 't5x/examples/t5/t5_1_1/small.gin'
include 't5x/configs/runs/pretrain.gin'

seqio.SentencePieceVocabulary.sentencepiece_model_file = '{spm}'
TASK_FEATURE_LENGTHS = {{'inputs': 24, 'targets': 24}}
TRAIN_STEPS = 2
BATCH_SIZE = 8
USE_CACHED_TASKS = False
DROPOUT_RATE = 0.0
utils.SaveCheckpointConfig.period = 2
""" + USER_CORPUS + TINY

# The README's recipe: t5x's model gin, then rest_jax's run file, then the user's bindings.
RECIPE = """
from __gin__ import dynamic_registration
import seqio
from rest_jax.data import translation_tasks
from t5x.examples.t5 import network

include 't5x/examples/t5/t5_1_1/small.gin'
include 'gin/runs/rest.gin'

seqio.SentencePieceVocabulary.sentencepiece_model_file = '{spm}'
TASK_FEATURE_LENGTHS = {{'inputs': 24, 'targets': 24}}
THRESHOLDS = [0.0, 0.2]
NUM_SAMPLES = 3
GROW_MAX_SOURCES = 24
GROW_BATCH_SIZE = 8
BATCH_SIZE = 8
IMPROVE_STEPS = 3
EVAL_MAX_EXAMPLES = 16
BEST_OF_N = 2
""" + USER_CORPUS + TINY


def _run(args, cwd, env_extra=None):
  env = multihost_test._env(**(env_extra or {}))  # pylint: disable=protected-access
  proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return proc


@pytest.fixture(scope="module")
def t5x_checkpoints(tmp_path_factory):
  """Checkpoints written by `python -m t5x.train`: ({"orbax": dir, "legacy": dir}, format).

  `format` fills a gin template's {spm} and {corpus} (the user's corpus folder).
  """
  root = tmp_path_factory.mktemp("t5x_train")
  spm = vocab.DemoVocabulary().sentencepiece_model_file
  vocab.DemoVocabulary().encode("x")  # the model file exists
  corpus = root / "corpus"
  corpus.mkdir()
  splits = demo_corpus.generate_splits(train_size=400, validation_size=40, test_size=40, seed=3)
  for split, stem in (("train", "train"), ("validation", "valid"), ("test", "test")):
    (corpus / f"{stem}.tsv").write_text("".join(f"{en}\t{de}\n" for en, de in splits[split]))
  fill = dict(spm=spm, corpus=corpus)
  (root / "tiny.gin").write_text(T5X_TRAIN.format(**fill))
  out = {}
  for name, extra in (("orbax", []), ("legacy", ["--gin.train.use_orbax=False"])):
    _run(["t5x.train", f"--gin_search_paths={T5X_ROOT},{root}", "--gin_file=tiny.gin",
          f"--gin.MODEL_DIR='{root / name}'", *extra], cwd=str(root))
    out[name] = str(root / name / "checkpoint_2")
  assert os.path.isdir(os.path.join(out["orbax"], "state"))  # t5x's Orbax layout
  assert os.path.exists(os.path.join(out["legacy"], "checkpoint"))  # msgpack + TensorStore
  return out, fill


def test_readme_recipe_runs_rest_on_a_t5x_model_from_its_checkpoint(t5x_checkpoints, tmp_path):
  paths, fill = t5x_checkpoints
  (tmp_path / "recipe.gin").write_text(RECIPE.format(**fill))
  model_dir = tmp_path / "run"
  _run(["rest_jax.main", "rest", f"--gin_search_paths={T5X_ROOT}",
        f"--gin_file={tmp_path / 'recipe.gin'}", f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.BC_STEPS=0", f"--gin.INITIAL_CHECKPOINT_PATH='{paths['orbax']}'",
        "--gin.rest.rest.progress_bar=False"], cwd=multihost_test.ROOT)
  # The BC policy is the t5x checkpoint's parameters, exactly.
  bc = checkpoints.read_arrays(str(model_dir / "bc" / "checkpoints"))
  target = convert.read_t5x_target(paths["orbax"])
  for path, value in jax.tree_util.tree_flatten_with_path(bc["params"])[0]:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    np.testing.assert_array_equal(value, target[name], err_msg=name)
  assert selection.Selection(str(model_dir / "bc")).best[0] == 0
  # Grow sampled with t5x's sampler (not greedily), and kept its per-token log-probabilities.
  manifest = grown.load_manifest(str(model_dir / "grow_1"))
  assert manifest["metadata"]["sampler"] == "t5x.decoding.temperature_sample"
  rows = list(tf.data.TFRecordDataset(grown.shard_paths(str(model_dir / "grow_1"), manifest))
              .map(lambda r: tf.io.parse_single_example(r, grown.feature_spec()))
              .as_numpy_iterator())
  samples = {}
  for r in rows:
    if not r["is_reference"]:
      samples.setdefault(int(r["source_id"]), set()).add(tuple(r["target_ids"]))
  assert len(samples) == 24 and np.mean([len(s) == 3 for s in samples.values()]) > 0.9
  # Improve trained with t5x's own Adafactor (its state, not optax's).
  improve = checkpoints.read_arrays(str(model_dir / "improve_1_2" / "checkpoints"))
  assert "param_states" in improve["opt_state"]
  report = (model_dir / "report.md").read_text()
  assert "| BC+" in report and "(selected)" in report


def test_convert_reads_both_formats_into_the_t5x_model(t5x_checkpoints, tmp_path):
  paths, fill = t5x_checkpoints
  (tmp_path / "recipe.gin").write_text(RECIPE.format(**fill))
  for name, path in paths.items():
    out = _run(["rest_jax.main", "convert", f"--gin_search_paths={T5X_ROOT}",
                f"--gin_file={tmp_path / 'recipe.gin'}", f"--gin.MODEL_DIR='{tmp_path}'",
                f"--t5x_checkpoint={path}", f"--output_dir={tmp_path / name}"],
               cwd=multihost_test.ROOT).stdout
    assert "29 parameters match the model" in out and "OK" in out, out
    written = checkpoints.read_arrays(str(tmp_path / name / "checkpoints"))
    assert int(written["step"]) == 0
  a = checkpoints.read_arrays(str(tmp_path / "orbax" / "checkpoints"))["params"]
  b = checkpoints.read_arrays(str(tmp_path / "legacy" / "checkpoints"))["params"]
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    assert x.shape == y.shape  # two runs of t5x.train: same tree, other random init


def test_convert_loads_a_t5x_checkpoint_into_the_built_in_model(t5x_checkpoints, tmp_path):
  paths, _ = t5x_checkpoints
  tiny = [f"--gin.network.T5Config.{k}={v}" for k, v in (
      ("emb_dim", 32), ("num_heads", 2), ("num_encoder_layers", 1), ("num_decoder_layers", 1),
      ("head_dim", 16), ("mlp_dim", 64))]
  out = _run(["rest_jax.main", "convert", "--gin_file=configs/demo.gin", *tiny,
              f"--gin.MODEL_DIR='{tmp_path}'", f"--t5x_checkpoint={paths['orbax']}",
              f"--output_dir={tmp_path / 'bc'}"], cwd=multihost_test.ROOT).stdout
  assert "29 parameters match the model" in out and "OK" in out, out
  written = checkpoints.read_arrays(str(tmp_path / "bc" / "checkpoints"))["params"]
  target = convert.read_t5x_target(paths["orbax"])
  for path, value in jax.tree_util.tree_flatten_with_path(written)[0]:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    np.testing.assert_array_equal(value, target[name], err_msg=name)


def test_built_in_network_equals_t5x_network_on_the_same_parameters():
  """A t5x T5.1.1 parameter tree (2-D attention kernels) runs unchanged in rest_jax's network."""
  from t5x.examples.t5 import network as t5x_network  # pylint: disable=g-import-not-at-top

  from rest_jax.models import network  # pylint: disable=g-import-not-at-top

  dims = dict(vocab_size=384, dtype="float32", emb_dim=32, num_heads=2, num_encoder_layers=2,
              num_decoder_layers=2, head_dim=16, mlp_dim=64, dropout_rate=0.0,
              mlp_activations=("gelu", "linear"), logits_via_embedding=False)  # T5.1.1
  theirs = t5x_network.Transformer(t5x_network.T5Config(**dims))
  ours = network.Transformer(network.T5Config(**{**dims, "dtype": np.float32}))
  rng = np.random.default_rng(0)
  inputs = rng.integers(2, 384, (3, 11)).astype(np.int32)
  targets = rng.integers(2, 384, (3, 7)).astype(np.int32)
  inputs[0, 8:] = 0  # padding
  targets[1, 5:] = 0
  decoder_inputs = np.concatenate([np.zeros((3, 1), np.int32), targets[:, :-1]], axis=1)
  params = theirs.init(jax.random.PRNGKey(1), inputs, decoder_inputs, targets,
                       enable_dropout=False)["params"]
  ours_init = ours.init(jax.random.PRNGKey(1), inputs, decoder_inputs, targets,
                        enable_dropout=False)["params"]
  shapes = lambda tree: jax.tree_util.tree_map(np.shape, tree)  # noqa: E731
  assert shapes(dict(params)) == shapes(dict(ours_init))  # same names, same 2-D kernels
  want = theirs.apply({"params": params}, inputs, decoder_inputs, targets, enable_dropout=False)
  got = ours.apply({"params": params}, inputs, decoder_inputs, targets, enable_dropout=False)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
