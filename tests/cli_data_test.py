"""`data show` / `data stats`, and gin configs that name a task without importing its module."""

import json

import gin

from rest_jax import main
from rest_jax.data import grown
from tests.grown_test import _write


def _run(argv, capsys):
  gin.clear_config()
  code = main.main(argv)
  gin.clear_config()
  assert code == 0
  return capsys.readouterr().out


def test_data_show_prints_text_and_tokens(capsys):
  out = _run(["data", "show", "--task=rest_demo_en_de", "--split=test", "-n", "2"], capsys)
  assert out.count("--- rest_demo_en_de/test example") == 2
  assert "targets_pretokenized:" in out and "inputs: [" in out


def test_data_stats_of_a_task_and_a_grown_dataset(tmp_path, capsys):
  _write(tmp_path)
  out = _run(["data", "stats", "--task=rest_demo_en_de", "--split=validation",
              f"--grown_dir={tmp_path}"], capsys)
  assert "rest_demo_en_de/validation: 500 examples" in out
  assert "30 rows in 2 shards" in out and "reward: p0=0 " in out
  assert grown.load_manifest(str(tmp_path))["num_rows"] == 30


def test_train_dry_run_with_model_and_run_files_only(capsys):
  out = _run(["train", "--gin_file=gin/models/t5_1_1_tiny.gin", "--gin_file=gin/runs/train.gin",
              "--gin.MIXTURE_OR_TASK_NAME='rest_demo_en_de'", "--gin.MODEL_DIR='/tmp/x'",
              "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 8}", "--gin.TRAIN_STEPS=1",
              "--dry_run"], capsys)
  assert "MIXTURE_OR_TASK_NAME = 'rest_demo_en_de'" in out


def test_vocab_command_trains_a_sentencepiece_model(tmp_path, capsys):
  out_path = tmp_path / "demo.model"
  out = _run(["vocab", "--gin_file=gin/runs/vocab.gin",
              "--gin.MIXTURE_OR_TASK_NAME='rest_demo_en_de'", f"--gin.VOCAB_OUTPUT='{out_path}'",
              "--gin.VOCAB_SIZE=300"], capsys)
  assert str(out_path) in out
  import seqio

  vocab = seqio.SentencePieceVocabulary(str(out_path))
  assert vocab.eos_id == 1 and vocab.decode(vocab.encode("Der Hund.")) == "Der Hund."


def _grown_policy_samples(directory):
  """A Grow step's rows: each source's reference and three samples, 0..2 word errors."""
  import random  # pylint: disable=g-import-not-at-top

  from rest_jax.data import demo_corpus  # pylint: disable=g-import-not-at-top
  from rest_jax.rewards import ratings  # pylint: disable=g-import-not-at-top
  from tests.grown_test import _row  # pylint: disable=g-import-not-at-top

  rng, rows = random.Random(0), []
  for i, (en, de) in enumerate(demo_corpus.generate_splits(30, 0, 0, seed=3)["train"]):
    for k in range(3):
      rows.append(dict(_row(i, k, ratings.corrupt(de, rng, k), 0.5), inputs=en))
    rows.append(dict(_row(i, 3, de, 0.9, is_reference=1), inputs=en))
  grown.write_shard(str(directory), 0, 1, rows)
  grown.write_manifest(str(directory), 1)


def test_ratings_policy_ratings_and_reward_model_commands(tmp_path, capsys):
  ratings_path = tmp_path / "ratings.tsv"
  _run(["ratings", "--gin_file=gin/runs/ratings.gin",
        "--gin.MIXTURE_OR_TASK_NAME='rest_demo_en_de'", f"--gin.RATINGS_FILE='{ratings_path}'",
        "--gin.MAX_PAIRS=200"], capsys)
  lines = ratings_path.read_text().splitlines()
  assert len(lines) == 800 and all(len(line.split("\t")) == 4 for line in lines)
  # A Grow step's samples, rated against their references: the README's command.
  _grown_policy_samples(tmp_path / "grow_1")
  policy_path = tmp_path / "policy.tsv"
  _run(["policy_ratings", "--gin_file=gin/runs/policy_ratings.gin",
        f"--gin.GROWN_DIR='{tmp_path / 'grow_1'}'", f"--gin.POLICY_RATINGS_FILE='{policy_path}'"],
       capsys)
  policy = [line.split("\t") for line in policy_path.read_text().splitlines()]
  assert len(policy) == 90 and {row[4] for row in policy} == {"policy_sample"}
  assert [float(row[3]) == 1.0 for row in policy[:3]] == [True, False, False]  # 0, 1, 2 errors
  out = _run(["reward_model", "--gin_file=gin/runs/reward_model.gin",
              f"--gin.RATINGS_FILE='{ratings_path}'", f"--gin.REWARD_MODEL_DIR='{tmp_path / 'rm'}'",
              "--gin.REWARD_TRAIN_STEPS=20", "--gin.learned.RewardModelConfig.num_layers=1",
              "--gin.TASK_FEATURE_LENGTHS={'inputs': 20, 'targets': 30}",
              f"--gin.POLICY_RATINGS_FILE='{policy_path}'"], capsys)
  assert "spearman" in out
  saved = json.loads((tmp_path / "rm" / "reward_model.json").read_text())
  # The segments follow the task's feature lengths (source, hypothesis, reference).
  assert saved["config"]["segment_lengths"] == [20, 30, 30]
  assert saved["config"]["max_length"] == 80
  held_out = saved["held_out"]
  assert held_out["policy_samples"]["examples"] == 90
  assert -1 <= held_out["policy_samples"]["spearman"] <= 1
  degenerate = held_out["degenerate"]
  assert {"empty", "copy_of_source", "repetition_loop", "unrelated"} <= set(degenerate)
  assert 0 <= degenerate["below_correct"] <= 1 and degenerate["empty"]["count"] >= 10
  # The task's own SentencePiece vocabulary, as gin/runs/reward_model.gin documents it.
  from rest_jax.data import vocab  # pylint: disable=g-import-not-at-top

  spm = vocab.train_sentencepiece([line.split("\t")[1] for line in lines],
                                  str(tmp_path / "spm.model"), 100)
  _run(["reward_model", "--gin_file=gin/runs/reward_model.gin",
        f"--gin.RATINGS_FILE='{ratings_path}'", f"--gin.REWARD_MODEL_DIR='{tmp_path / 'rm2'}'",
        "--gin.REWARD_TRAIN_STEPS=5", "--gin.learned.RewardModelConfig.num_layers=1",
        f"--gin.REWARD_VOCAB_FILE='{spm}'"], capsys)
  saved = json.loads((tmp_path / "rm2" / "reward_model.json").read_text())
  assert saved["config"]["vocab_size"] == 128 and saved["vocabulary"]["kind"] == "sentencepiece"
