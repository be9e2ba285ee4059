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


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory):
  """A learned reward model of two training steps (the paper configs' REWARD reads one)."""
  from rest_jax.rewards import learned  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("paper")
  spm = vocab.train_sentencepiece(
      ["the dog sees the cat", "der Hund sieht die Katze", "狗看见猫"] * 50,
      str(root / "t.model"), 40)
  ratings = root / "ratings.tsv"
  ratings.write_text("".join(f"der Hund {i}\tthe dog {i}\tthe dog\t{i / 60}\n"
                             for i in range(60)))
  model_dir = root / "reward"
  learned.train_reward_model(
      ratings_file=str(ratings), model_dir=str(model_dir),
      vocabulary=vocab.seqio.SentencePieceVocabulary(spm),
      config=learned.RewardModelConfig(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8,
                                       mlp_dim=16, num_layers=1, max_length=24),
      train_steps=2, batch_size=8, eval_fraction=0.3)
  return spm, str(model_dir), root


@pytest.mark.parametrize("config,task,samples,langs", [
    ("configs/iwslt14_de_en.gin", "iwslt14_de_en", 100, ("de", "en")),
    ("configs/wmt20_zh_en.gin", "wmt20_zh_en", 25, ("zh", "en")),
])
def test_paper_configs_build_with_a_tiny_stand_in(config, task, samples, langs,
                                                  tiny_reward_model):
  """Each paper config is built whole (model, task, reward, Grow/Improve/eval settings)."""
  import jax  # pylint: disable=g-import-not-at-top

  from rest_jax import inference, trainer as trainer_lib  # pylint: disable=g-import-not-at-top

  spm, reward_dir, root = tiny_reward_model
  data = root / task
  data.mkdir(exist_ok=True)
  for split, n in (("train", 6), ("valid", 3), ("test", 2)):
    for lang in langs:
      text = {"de": "der Hund sieht die Katze", "zh": "狗看见猫", "en": "the dog sees the cat"}
      (data / f"{split}.{lang}").write_text("".join(f"{text[lang]} {i}\n" for i in range(n)))
  gin.clear_config()
  main.parse_gin([config], [
      f"VOCAB_FILE = '{spm}'", f"REWARD_MODEL_DIR = '{reward_dir}'", f"DATA_DIR = '{data}'",
      "MODEL_DIR = '/tmp/unused'", "NUM_EMBEDDINGS = 64",  # the tiny stand-in size:
      "network.T5Config.emb_dim = 16", "network.T5Config.num_heads = 2",
      "network.T5Config.head_dim = 8", "network.T5Config.mlp_dim = 32",
      "network.T5Config.num_encoder_layers = 1", "network.T5Config.num_decoder_layers = 1"])
  build = lambda name: gin.query_parameter(f"%{name}").scoped_configurable_fn()  # noqa: E731
  grow, improve, evaluation = build("GROW"), build("IMPROVE"), build("EVALUATION")
  assert (grow.sampling.temperature, grow.sampling.topk, grow.sampling.topp) == (0.8, 0, 0.0)
  assert grow.num_samples == samples and grow.steps == 2
  assert list(improve.thresholds.values) == [0.0, 0.7, 0.8, 0.9]
  assert improve.loss.name == "bc" and evaluation.sampling == grow.sampling
  reward = build("REWARD")
  assert reward.name == "learned" and reward.range == (0.0, 1.0)
  assert len(reward(["der Hund"], ["the dog"], ["the dog"])) == 1
  model = build("MODEL")
  assert model.module.config.emb_dim == 16
  shapes = jax.eval_shape(lambda: model.get_initial_variables(
      jax.random.PRNGKey(0), trainer_lib.batch_input_shapes(2, {"inputs": 8, "targets": 8})))
  assert "params" in shapes
  assert inference.count_examples(task, "validation") == 3
  gin.clear_config()
