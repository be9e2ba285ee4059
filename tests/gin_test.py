"""Every gin file in the repository parses, and the model files build MODEL."""

import glob
import os

import gin
import pytest

from rest_jax import main
from rest_jax.data import vocab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_FILES = sorted(glob.glob(os.path.join(ROOT, "gin", "**", "*.gin"), recursive=True)
                   + glob.glob(os.path.join(ROOT, "configs", "*.gin")))


@pytest.fixture()
def spm_file(tmp_path):
  return vocab.train_sentencepiece(
      ["the dog sees the cat", "der Hund sieht die Katze"] * 50, str(tmp_path / "t.model"), 40)


@pytest.mark.parametrize("path", GIN_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_gin_file_parses(path, spm_file):
  gin.clear_config()
  bindings = [f"VOCAB_FILE = '{spm_file}'", "MODEL_DIR = '/tmp/unused'",
              "MIXTURE_OR_TASK_NAME = 'rest_demo_en_de'", "VOCAB_OUTPUT = '/tmp/x.model'",
              "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 8}", "TRAIN_STEPS = 1"]
  if os.path.basename(path) == "t5_1_1_base_model.gin":
    bindings += ["VOCABULARY = None", "NUM_EMBEDDINGS = 8"]
  main.parse_gin([path], bindings, finalize=False)
  gin.clear_config()


@pytest.mark.parametrize("size,emb_dim", [("tiny", 128), ("small", 512), ("base", 768),
                                          ("large", 1024)])
def test_model_files_build_the_model(size, emb_dim, spm_file):
  gin.clear_config()
  main.parse_gin([f"gin/models/t5_1_1_{size}.gin"], [f"VOCAB_FILE = '{spm_file}'"])
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  assert model.module.config.emb_dim == emb_dim
  assert model.output_vocabulary.eos_id == 1
  gin.clear_config()


def test_cli_rejects_unknown_flags_and_files():
  with pytest.raises(SystemExit):
    main.main(["train", "--bogus=1"])
  with pytest.raises(ValueError, match="not found"):
    main.parse_gin(["no_such_file.gin"], [])
