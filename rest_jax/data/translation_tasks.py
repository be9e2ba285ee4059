"""WMT / IWSLT / TED translation tasks (TFDS) and local parallel-text tasks.

Registered when `rest_jax.data.tasks` is imported, with t5x-style names
`<corpus>_<src>_<tgt>` and features `inputs`/`targets` (EOS appended):

- TFDS: `wmt14_en_de`, `wmt14_de_en`, `wmt19_zh_en`, `wmt19_en_zh`, `wmt19_de_en`,
  `wmt19_en_de`, `ted_de_en`, `ted_en_de` (TED talks, `ted_multi_translate`).
- Local files (TFDS has neither IWSLT 2014 nor WMT 2020): `iwslt14_de_en`,
  `iwslt14_en_de`, `wmt20_zh_en`, `wmt20_en_zh`, read from a directory bound in
  gin, e.g. `iwslt14/translation_tasks.local_corpus.directory = '/data/iwslt14.de-en'`.
- The paper's pairs: `wmt_en_de` (= WMT14 En-De), `iwslt14_de_en`, `wmt20_zh_en`.

Their vocabulary is `task_vocabulary()`, resolved at first use so that gin (bind
`tasks.task_vocabulary.sentencepiece_model_file`) can set it after import.
"""

import functools
import os
from typing import Dict, Sequence, Tuple

import gin
import seqio
import tensorflow as tf

from rest_jax.data import metrics, parallel_text, preprocessors


@gin.configurable(module="rest_jax.data.translation_tasks")
def task_vocabulary(sentencepiece_model_file: str | None = None) -> seqio.Vocabulary:
  """The vocabulary of the translation tasks (a SentencePiece model with T5's ids)."""
  if not sentencepiece_model_file:
    raise ValueError(
        "translation tasks need a vocabulary: bind"
        " rest_jax.data.translation_tasks.task_vocabulary.sentencepiece_model_file (e.g."
        " --gin.translation_tasks.task_vocabulary.sentencepiece_model_file=\"'/path/spm.model'\"), or build"
        " one with `python -m rest_jax.main vocab`")
  return _sentencepiece(sentencepiece_model_file)


@functools.lru_cache(maxsize=8)
def _sentencepiece(path: str) -> seqio.Vocabulary:
  return seqio.SentencePieceVocabulary(path)


class DeferredVocabulary(seqio.Vocabulary):
  """A vocabulary the factory names at each use (after gin has been parsed).

  Asked anew each time (the factory caches what it builds), so a process that
  parses another config, with another vocabulary file, gets that one.
  """

  def __init__(self, factory):
    self._factory = factory
    super().__init__(extra_ids=0)

  @property
  def _vocab(self) -> seqio.Vocabulary:
    return self._factory()

  @property
  def eos_id(self):
    return self._vocab.eos_id

  @property
  def unk_id(self):
    return self._vocab.unk_id

  @property
  def _base_vocab_size(self):
    return self._vocab.vocab_size

  def _encode(self, s):
    return self._vocab.encode(s)

  def _decode(self, ids):
    return self._vocab.decode(ids)

  def _encode_tf(self, s):
    return self._vocab.encode_tf(s)

  def _decode_tf(self, ids):
    return self._vocab.decode_tf(ids)

  def __eq__(self, other):
    return isinstance(other, DeferredVocabulary) and self._factory == other._factory


VOCABULARY = DeferredVocabulary(lambda: task_vocabulary())  # noqa: PLW0108 (gin looks it up late)


def _output_features(vocabulary: seqio.Vocabulary) -> Dict[str, seqio.Feature]:
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


def _add(name: str, source: seqio.DataSource, pair_preprocessor, vocabulary) -> seqio.Task:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=source,
      preprocessors=[
          pair_preprocessor,
          seqio.preprocessors.tokenize,
          seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=_output_features(vocabulary),
      metric_fns=[metrics.bleu, metrics.chrf],
  )


def register_tfds_task(name: str, tfds_name: str, source_lang: str, target_lang: str,
                       vocabulary: seqio.Vocabulary = VOCABULARY,
                       splits: Dict[str, str] | None = None) -> seqio.Task:
  """A task over a TFDS `Translation` dataset (e.g. `wmt14_translate/de-en:1.0.0`)."""
  return _add(name, seqio.TfdsDataSource(tfds_name=tfds_name, splits=splits),
              functools.partial(preprocessors.select_pair, source_key=source_lang,
                                target_key=target_lang), vocabulary)


def register_ted_task(name: str, source_lang: str, target_lang: str,
                      vocabulary: seqio.Vocabulary = VOCABULARY) -> seqio.Task:
  """A task over TFDS `ted_multi_translate` (IWSLT-style TED talks), one language pair."""
  return _add(name, seqio.TfdsDataSource(tfds_name="ted_multi_translate:1.1.0"),
              functools.partial(preprocessors.ted_multi_pair, source_lang=source_lang,
                                target_lang=target_lang), vocabulary)


@gin.configurable(module="rest_jax.data.translation_tasks")
def local_corpus(directory: str | None = None, file_format: str = "aligned",
                 split_files: Dict[str, str] | None = None,
                 skip_bad_lines: bool = False) -> dict:
  """Where a local corpus lives; bind it in the task's gin scope.

  Args:
    directory: folder of the corpus.
    file_format: "aligned" (`<split>.<lang>` line-aligned files, fairseq's layout
      for IWSLT'14) or "tsv" (`<split>.tsv`, source TAB target).
    split_files: seqio split -> file stem (default train/valid/test).
    skip_bad_lines: skip and count bad lines instead of stopping.
  """
  return dict(directory=directory, file_format=file_format,
              split_files=split_files or {"train": "train", "validation": "valid",
                                          "test": "test"},
              skip_bad_lines=skip_bad_lines)


def _local_files(name: str, split: str, source_lang: str, target_lang: str,
                 corpus_scope: str) -> Tuple[Sequence[str] | str, bool]:
  with gin.config_scope(corpus_scope):
    config = local_corpus()
  if not config["directory"]:
    raise ValueError(
        f"task {name} reads local files: bind {corpus_scope}/translation_tasks.local_corpus.directory"
        f" (e.g. --gin.{corpus_scope}/translation_tasks.local_corpus.directory=\"'/data/{corpus_scope}'\")")
  stem = os.path.join(config["directory"], config["split_files"].get(split, split))
  if config["file_format"] == "tsv":
    return f"{stem}.tsv", config["skip_bad_lines"]
  return (f"{stem}.{source_lang}", f"{stem}.{target_lang}"), config["skip_bad_lines"]


def register_local_task(name: str, source_lang: str, target_lang: str,
                        corpus_scope: str | None = None,
                        vocabulary: seqio.Vocabulary = VOCABULARY,
                        splits: Sequence[str] = ("train", "validation", "test"),
                        tsv_columns: Tuple[int, int] = (0, 1)) -> seqio.Task:
  """A task over local parallel text, located by `local_corpus` in gin scope `corpus_scope`.

  `tsv_columns` are the (source, target) columns of a TSV corpus, so one file
  serves both directions.
  """
  corpus_scope = corpus_scope or name

  def dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed
    files, skip = _local_files(name, split, source_lang, target_lang, corpus_scope)
    columns = tsv_columns if isinstance(files, str) else (0, 1)

    def generate():
      for source, target in parallel_text.read_parallel_text(files, skip, columns=columns):
        yield {"inputs": source, "targets": target}

    spec = {"inputs": tf.TensorSpec((), tf.string), "targets": tf.TensorSpec((), tf.string)}
    return tf.data.Dataset.from_generator(generate, output_signature=spec)

  return _add(name, seqio.FunctionDataSource(dataset_fn, splits=splits),
              preprocessors.identity, vocabulary)


def register_all() -> None:
  for year, pairs in (("14", [("en", "de"), ("de", "en")]),
                      ("19", [("zh", "en"), ("en", "zh"), ("de", "en"), ("en", "de")])):
    for src, tgt in pairs:
      config = "-".join(sorted([src, tgt], key=lambda lang: lang == "en"))
      register_tfds_task(f"wmt{year}_{src}_{tgt}", f"wmt{year}_translate/{config}:1.0.0",
                         src, tgt)
  register_tfds_task("wmt_en_de", "wmt14_translate/de-en:1.0.0", "en", "de")
  register_ted_task("ted_de_en", "de", "en")
  register_ted_task("ted_en_de", "en", "de")
  register_local_task("iwslt14_de_en", "de", "en", corpus_scope="iwslt14")
  register_local_task("iwslt14_en_de", "en", "de", corpus_scope="iwslt14")
  register_local_task("wmt20_zh_en", "zh", "en", corpus_scope="wmt20_zh_en")
  register_local_task("wmt20_en_zh", "en", "zh", corpus_scope="wmt20_zh_en", tsv_columns=(1, 0))
