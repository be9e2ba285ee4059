"""WMT/TED tasks under TFDS mock data, and local parallel-text tasks with bad lines."""

import os

import gin
import pytest
import seqio
import tensorflow_datasets as tfds

from rest_jax.data import parallel_text, tasks, translation_tasks, vocab  # noqa: F401 (tasks registers)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LENGTHS = {"inputs": 32, "targets": 32}


@pytest.fixture()
def spm(tmp_path):
  path = vocab.train_sentencepiece(
      ["the house is small", "das Haus ist klein", "abcdefghij klmnop", "我们 学习"] * 40,
      str(tmp_path / "spm.model"), 60)
  gin.clear_config()
  gin.bind_parameter("rest_jax.data.translation_tasks.task_vocabulary.sentencepiece_model_file", path)
  yield seqio.SentencePieceVocabulary(path)
  gin.clear_config()


def _examples(name, split="train", n=3):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(LENGTHS, split=split, shuffle=False, try_in_mem_cache=False)
  return list(ds.take(n).as_numpy_iterator())


@pytest.mark.parametrize("name,source,target", [
    ("wmt14_en_de", "en", "de"), ("wmt14_de_en", "de", "en"), ("wmt19_zh_en", "zh", "en"),
    ("wmt_en_de", "en", "de")])
def test_wmt_tasks_under_mock_data(spm, name, source, target):
  with tfds.testing.mock_data(num_examples=4):
    raw = list(seqio.get_mixture_or_task(name).source.get_dataset("train", shuffle=False)
               .take(3).as_numpy_iterator())
    examples = _examples(name)
  assert len(examples) == 3
  for ex, r in zip(examples, raw):
    assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1
    assert ex["inputs_pretokenized"] == r[source]
    assert ex["targets_pretokenized"] == r[target]
    assert list(ex["targets"][:-1]) == spm.encode(r[target].decode())[: LENGTHS["targets"] - 1]


def test_ted_task_picks_the_language_pair(spm):
  with tfds.testing.mock_data(num_examples=4):
    examples = _examples("ted_de_en")
  for ex in examples:
    assert ex["inputs"][-1] == 1 and len(ex["targets"]) > 1


def _write(path, text: bytes):
  path.write_bytes(text)
  return str(path)


def test_local_aligned_and_tsv_tasks(spm, tmp_path):
  for split in ("train", "valid", "test"):
    _write(tmp_path / f"{split}.de", b"das Haus\nist klein\n")
    _write(tmp_path / f"{split}.en", b"the house\nis small\n")
  gin.bind_parameter("iwslt14/rest_jax.data.translation_tasks.local_corpus.directory", str(tmp_path))
  examples = _examples("iwslt14_de_en", split="validation")
  assert [e["inputs_pretokenized"] for e in examples] == [b"das Haus", b"ist klein"]
  reverse = _examples("iwslt14_en_de")
  assert reverse[0]["inputs_pretokenized"] == b"the house"

  _write(tmp_path / "train.tsv", "我们\twe\n学习\tlearn\n".encode())
  gin.bind_parameter("wmt20_zh_en/rest_jax.data.translation_tasks.local_corpus.directory", str(tmp_path))
  gin.bind_parameter("wmt20_zh_en/rest_jax.data.translation_tasks.local_corpus.file_format", "tsv")
  assert _examples("wmt20_zh_en")[1]["targets_pretokenized"] == b"learn"
  assert _examples("wmt20_en_zh")[1]["targets_pretokenized"] == "学习".encode()


def test_unbound_local_corpus_is_a_clear_error(spm):
  with pytest.raises(Exception, match="iwslt14/translation_tasks.local_corpus.directory"):
    _examples("iwslt14_de_en")


@pytest.mark.parametrize("content,message", [
    (b"a\tb\nonly one column\n", "bad.tsv:2: expected 2 tab-separated columns, found 1"),
    (b"a\tb\n\tb\n", "bad.tsv:2: empty source side"),
    (b"a\tb\nc\t \n", "bad.tsv:2: empty target side"),
    (b"a\tb\n\xff\xfe\tb\n", "bad.tsv:2: not valid UTF-8"),
])
def test_bad_tsv_lines_name_file_and_line(tmp_path, content, message):
  path = _write(tmp_path / "bad.tsv", content)
  with pytest.raises(parallel_text.ParallelTextError, match=message):
    list(parallel_text.read_parallel_text(path))
  counter = parallel_text.SkipCounter()
  pairs = list(parallel_text.read_parallel_text(path, skip_bad_lines=True, counter=counter))
  assert pairs == [("a", "b")] and counter.total == 1


def test_misaligned_files_are_an_error(tmp_path):
  src = _write(tmp_path / "a.de", b"x\ny\nz\n")
  tgt = _write(tmp_path / "a.en", b"x\ny\n")
  with pytest.raises(parallel_text.ParallelTextError, match="a.en ends at line 2"):
    list(parallel_text.read_parallel_text((src, tgt)))
  with pytest.raises(parallel_text.ParallelTextError, match="not found"):
    list(parallel_text.read_parallel_text(str(tmp_path / "missing.tsv")))


def test_translation_vocabulary_must_be_bound():
  gin.clear_config()
  with pytest.raises(ValueError, match="task_vocabulary.sentencepiece_model_file"):
    translation_tasks.task_vocabulary()


def test_task_vocabulary_equals_the_model_vocabulary_of_its_file(spm, tmp_path):
  """t5x's `verify_matching_vocabs` compares `task_vocab != model_vocab`: equal file, equal."""
  task_vocab = seqio.get_mixture_or_task("iwslt14_de_en").output_features["targets"].vocabulary
  assert not task_vocab != spm  # noqa: SIM202 (the comparison t5x makes)
  assert task_vocab == translation_tasks.VOCABULARY
  other = vocab.train_sentencepiece(["ein anderes Modell", "another model"] * 40,
                                    str(tmp_path / "other.model"), 30)
  assert task_vocab != seqio.SentencePieceVocabulary(other)
  assert task_vocab != seqio.ByteVocabulary()


def test_split_files_are_found_by_format_and_name(tmp_path):
  import lzma

  from rest_jax.data import translation_tasks as tt

  (tmp_path / "train.tsv").write_text("hola\thello\n")
  with lzma.open(tmp_path / "dev.tsv.xz", "wt") as f:
    f.write("adiós\tgoodbye\n")
  (tmp_path / "test.es").write_text("sí\n")
  (tmp_path / "test.en").write_text("yes\n")
  find = lambda split: tt.find_split_files(str(tmp_path), split, "es", "en")  # noqa: E731
  assert find("train") == str(tmp_path / "train.tsv")
  assert find("validation") == str(tmp_path / "dev.tsv.xz")  # valid | validation | dev
  assert find("test") == (str(tmp_path / "test.es"), str(tmp_path / "test.en"))
  (tmp_path / "test.en").unlink()
  with pytest.raises(FileNotFoundError, match=r"no test split in .*test\.tsv, test\.es, test\.en"):
    find("test")


BIBLE = os.path.join(ROOT, "..", "shared", "data", "bible_es_en")
# What a user with a small corpus sets beside the README's flags: sizes only.
SMALL_REST = ["--gin.BC_STEPS=20", "--gin.BATCH_SIZE=16", "--gin.BC_EVAL_PERIOD=10",
              "--gin.THRESHOLDS=[0.5]", "--gin.IMPROVE_STEPS=4", "--gin.IMPROVE_EVAL_PERIOD=4",
              "--gin.GROW_MAX_SOURCES=16", "--gin.NUM_SAMPLES=2", "--gin.GROW_BATCH_SIZE=16",
              "--gin.EVAL_MAX_EXAMPLES=8", "--gin.BEST_OF_N=2", "--gin.EVAL_BATCH_SIZE=8",
              "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 48}"]


def _own_corpus_commands():
  """The README's "Your own corpus" shell block, one argv per command, as written."""
  import re
  import shlex

  with open(os.path.join(ROOT, "README.md")) as f:
    section = f.read().split("## Your own corpus")[1].split("\n## ")[0]
  block = re.findall(r"```sh\n(.*?)```", section, re.S)[0]
  return [shlex.split(line.split("  #")[0]) for line in block.replace("\\\n", " ").splitlines()
          if line.strip()]


def _corpus_slice(directory):
  """train/valid/test TSVs (.xz, as the corpus ships): a slice of the Bible corpus when
  ../shared has it, else generated pairs."""
  import lzma

  directory.mkdir()
  sizes = {"train": 600, "valid": 24, "test": 24}
  for split, n in sizes.items():
    if os.path.isdir(BIBLE):
      with lzma.open(os.path.join(BIBLE, f"{split}.tsv.xz"), "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(n)]
    else:
      lines = [f"la casa {i} es pequeña\tthe house {i} is small\n" for i in range(n)]
    with lzma.open(directory / f"{split}.tsv.xz", "wt", encoding="utf-8") as f:
      f.writelines(lines)
  return [line.split("\t")[0] for line in lines[:3]]


@pytest.mark.slow
def test_own_corpus_end_to_end_as_the_readme_writes_it(tmp_path):
  """vocab -> data stats -> rest -> report -> infer, the README's lines in a user's folder."""
  import shutil
  import subprocess
  import sys

  sources = _corpus_slice(tmp_path / "corpus")
  commands = _own_corpus_commands()
  assert [c[0] if c[0] == "cp" else c[3] for c in commands] == [
      "cp", "vocab", "data", "rest", "infer"]
  cp, *python = commands
  shutil.copy(os.path.join(ROOT, cp[1]), tmp_path / cp[2])
  config = tmp_path / cp[2]  # "set the corpus block and the vocabulary path"
  text = config.read_text().replace("'../shared/data/bible_es_en'", f"'{tmp_path / 'corpus'}'")
  text = text.replace("'/data/my_corpus/spm.model'", f"'{tmp_path / 'spm.model'}'")
  config.write_text(text.replace("VOCAB_SIZE = 4000", "VOCAB_SIZE = 256").replace(
      "NUM_EMBEDDINGS = 4096", "NUM_EMBEDDINGS = 256"))
  (tmp_path / "in.es").write_text("\n".join(sources) + "\n")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  outputs = {}
  for argv in python:
    argv = [a.replace("/data/my_corpus/spm.model", str(tmp_path / "spm.model")) for a in argv]
    if argv[3] == "rest":
      argv += SMALL_REST
    if argv[3] == "infer":
      argv += ["--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 48}", "--gin.NUM_SAMPLES=2"]
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{argv}\n{proc.stderr[-3000:]}"
    outputs[argv[3]] = proc
  assert "bible_es_en/train: 600 examples" in outputs["data"].stdout
  report = (tmp_path / "runs" / "my_corpus" / "report.md").read_text()
  assert "## What was run" in report and "bible_es_en" in report and "(selected)" in report
  translations = (tmp_path / "out.en").read_text().splitlines()
  assert len(translations) == len(sources)

  (tmp_path / "corpus" / "test.tsv.xz").unlink()  # a missing split: one line, no traceback
  show = subprocess.run([sys.executable, "-m", "rest_jax.main", "data", "show",
                         f"--gin_file={config}", "--split=test"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert show.returncode == 1 and "no test split in" in show.stderr and "Traceback" not in (
      show.stderr), show.stderr


def test_bleu_tokenizes_by_the_target_language():
  """Chinese targets are scored with sacrebleu's `zh` tokenizer, others with 13a."""
  from rest_jax.data import corpus_metrics as metrics  # pylint: disable=g-import-not-at-top

  refs, hyps = ["我们今天去北京看朋友。"], ["我们明天去北京看朋友。"]
  to_zh = metrics.task_bleu("wmt19_en_zh")
  assert to_zh(refs, hyps)["bleu"] == metrics.bleu(refs, hyps, tokenize="zh")["bleu"]
  assert to_zh(refs, hyps)["bleu"] > metrics.bleu(refs, hyps)["bleu"]  # 13a: one "word"
  assert metrics.task_bleu("wmt20_en_zh")(refs, hyps) == to_zh(refs, hyps)
  assert metrics.task_bleu("wmt19_zh_en") is metrics.bleu


def test_degeneracy_splits_words_by_the_target_language():
  """A task's target language picks the words its degeneracy rates count: Chinese by
  sacrebleu's `zh`, Japanese by character (no MeCab), the others (English, Korean) by 13a."""
  from rest_jax.data import corpus_metrics as metrics  # pylint: disable=g-import-not-at-top

  assert metrics.task_word_tokenizer("wmt19_en_zh") == "zh"
  assert metrics.task_word_tokenizer("wmt19_zh_en") == "13a"
  assert metrics.word_tokenizer("ja") == "char" and metrics.word_tokenizer("ko") == "13a"
  assert metrics.word_tokenizer("zh-Hant") == "zh" and metrics.word_tokenizer(None) == "13a"
  to_ja = metrics.bleu_for("ja")  # its BLEU is 13a's still; it records the language
  assert to_ja.target_language == "ja" and to_ja(["a b c"], ["a b c"]) == metrics.bleu(
      ["a b c"], ["a b c"])
