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

from rest_jax.data import corpus_metrics as metrics, identity as identity_lib, parallel_text
from rest_jax.data import preprocessors


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
    """The same factory's, or equal to what this one resolves to.

    t5x's trainer compares a task's vocabulary with its model's
    (`utils.verify_matching_vocabs`, task first), so a task over the configured
    SentencePiece file equals a model built on that file.
    """
    if not isinstance(other, seqio.Vocabulary):
      return NotImplemented
    if isinstance(other, DeferredVocabulary) and self._factory == other._factory:
      return True
    try:  # unbound (no SentencePiece file configured yet): equal to nothing else
      mine = self._vocab
      theirs = other._vocab if isinstance(other, DeferredVocabulary) else other
    except ValueError:
      return False
    return mine == theirs


VOCABULARY = DeferredVocabulary(lambda: task_vocabulary())  # noqa: PLW0108 (gin looks it up late)


def _output_features(vocabulary: seqio.Vocabulary) -> Dict[str, seqio.Feature]:
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


def _add(name: str, source: seqio.DataSource, pair_preprocessor, vocabulary,
         target_lang: str | None = None) -> seqio.Task:
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
      metric_fns=[metrics.bleu_for(target_lang), metrics.chrf],
  )


def register_tfds_task(name: str, tfds_name: str, source_lang: str, target_lang: str,
                       vocabulary: seqio.Vocabulary = VOCABULARY,
                       splits: Dict[str, str] | None = None) -> seqio.Task:
  """A task over a TFDS `Translation` dataset (e.g. `wmt14_translate/de-en:1.0.0`)."""
  return _add(name, seqio.TfdsDataSource(tfds_name=tfds_name, splits=splits),
              functools.partial(preprocessors.select_pair, source_key=source_lang,
                                target_key=target_lang), vocabulary, target_lang)


def register_ted_task(name: str, source_lang: str, target_lang: str,
                      vocabulary: seqio.Vocabulary = VOCABULARY) -> seqio.Task:
  """A task over TFDS `ted_multi_translate` (IWSLT-style TED talks), one language pair."""
  return _add(name, seqio.TfdsDataSource(tfds_name="ted_multi_translate:1.1.0"),
              functools.partial(preprocessors.ted_multi_pair, source_lang=source_lang,
                                target_lang=target_lang), vocabulary, target_lang)


# The file stems tried for each split, in order, when `split_files` does not name them.
SPLIT_STEMS = {"train": ("train",), "validation": ("valid", "validation", "dev"),
               "test": ("test",)}
_SUFFIXES = ("",) + tuple(parallel_text.COMPRESSED)


@gin.configurable(module="rest_jax.data.translation_tasks")
def local_corpus(directory: str | None = None, file_format: str = "auto",
                 split_files: Dict[str, str] | None = None,
                 skip_bad_lines: bool = False) -> dict:
  """Where a local corpus lives; bind it in the task's gin scope.

  Args:
    directory: folder of the corpus.
    file_format: "auto" (found from the files), "aligned" (`<split>.<lang>`
      line-aligned files, fairseq's layout for IWSLT'14) or "tsv" (`<split>.tsv`,
      source TAB target). Files may be gzip, xz or bzip2 compressed (`.gz`, `.xz`, `.bz2`).
    split_files: seqio split -> file stem; by default `SPLIT_STEMS` are tried
      (validation: valid, validation, dev).
    skip_bad_lines: skip and count bad lines instead of stopping.
  """
  if file_format not in ("auto", "aligned", "tsv"):
    raise ValueError(f"local_corpus.file_format={file_format!r}: use 'auto', 'aligned' or 'tsv'")
  return dict(directory=directory, file_format=file_format, split_files=split_files or {},
              skip_bad_lines=skip_bad_lines)


def find_split_files(directory: str, split: str, source_lang: str, target_lang: str,
                     file_format: str = "auto",
                     split_files: Dict[str, str] | None = None) -> Sequence[str] | str:
  """The file(s) of `split`: one TSV path, or (source, target) paths of aligned files.

  Raises:
    FileNotFoundError: none of the candidates exists; the message lists every file
      looked for.
  """
  stems = [split_files[split]] if split_files and split in split_files else list(
      SPLIT_STEMS.get(split, (split,)))
  looked = []
  for stem in stems:
    base = os.path.join(directory, stem)
    for suffix in _SUFFIXES:
      if file_format in ("auto", "tsv"):
        looked.append(f"{base}.tsv{suffix}")
        if os.path.exists(looked[-1]):
          return looked[-1]
      if file_format in ("auto", "aligned"):
        pair = (f"{base}.{source_lang}{suffix}", f"{base}.{target_lang}{suffix}")
        looked += pair
        if all(os.path.exists(p) for p in pair):
          return pair
  raise FileNotFoundError(
      f"no {split} split in {directory}: looked for {', '.join(os.path.basename(p) for p in looked)}"
      f" (a TSV 'source<TAB>target' or one file per language; name other files with"
      f" local_corpus.split_files={{'{split}': 'STEM'}})")


def _local_files(name: str, split: str, source_lang: str, target_lang: str,
                 corpus_scope: str) -> Tuple[Sequence[str] | str, bool]:
  if corpus_scope.startswith(_USER_SCOPE):  # a parallel_corpus(): its own arguments
    config = _CORPUS_CONFIGS[corpus_scope[len(_USER_SCOPE):]]
  else:
    with gin.config_scope(corpus_scope):
      config = local_corpus()
  if not config["directory"]:
    raise ValueError(
        f"task {name} reads local files: bind {corpus_scope}/translation_tasks.local_corpus.directory"
        f" (e.g. --gin.{corpus_scope}/translation_tasks.local_corpus.directory=\"'/data/{corpus_scope}'\")")
  files = find_split_files(config["directory"], split, source_lang, target_lang,
                           config["file_format"], config["split_files"])
  return files, config["skip_bad_lines"]


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

  def identity():
    """What decides the rows (`identity.task`): each split's files by content, how read."""
    out = {}
    for split in splits:
      try:
        found, skip = _local_files(name, split, source_lang, target_lang, corpus_scope)
      except FileNotFoundError as e:
        out[split] = {"missing": str(e)}
        continue
      paths = [found] if isinstance(found, str) else list(found)
      out[split] = {"files": [identity_lib.file_digest(p) for p in paths],
                    "skip_bad_lines": skip,
                    "columns": list(tsv_columns if isinstance(found, str) else (0, 1))}
    return out

  dataset_fn.identity = identity

  return _add(name, seqio.FunctionDataSource(dataset_fn, splits=splits),
              preprocessors.identity, vocabulary, target_lang)


@gin.configurable(module="rest_jax.data.translation_tasks")
def parallel_corpus(name: str = gin.REQUIRED, directory: str = gin.REQUIRED,
                    source_lang: str = gin.REQUIRED, target_lang: str = gin.REQUIRED,
                    file_format: str = "auto", split_files: Dict[str, str] | None = None,
                    skip_bad_lines: bool = False) -> str:
  """Registers your own parallel corpus as the seqio task `name` and returns the name.

  In gin (`configs/my_corpus.gin` is a template):

      MIXTURE_OR_TASK_NAME = @translation_tasks.parallel_corpus()
      translation_tasks.parallel_corpus:
        name = 'bible_es_en'
        directory = '/data/bible_es_en'
        source_lang = 'es'
        target_lang = 'en'

  The files are found as `local_corpus` finds them (TSV or one file per language,
  train / valid|validation|dev / test, maybe compressed); the vocabulary is the
  configured one (`translation_tasks.task_vocabulary`). Registering the same name
  again with the same arguments is a no-op.
  """
  if file_format not in ("auto", "aligned", "tsv"):
    raise ValueError(f"parallel_corpus.file_format={file_format!r}: use 'auto', 'aligned' or"
                     " 'tsv'")
  spec = (directory, source_lang, target_lang, file_format, tuple(sorted((split_files or {}).items())),
          skip_bad_lines)
  if _USER_CORPORA.get(name) == spec:
    return name
  if name in seqio.TaskRegistry.names() and name not in _USER_CORPORA:
    raise ValueError(f"parallel_corpus: a task named {name!r} is already registered; choose"
                     " another name")
  seqio.TaskRegistry.remove(name)
  config = dict(directory=directory, file_format=file_format, split_files=split_files or {},
                skip_bad_lines=skip_bad_lines)
  _USER_CORPORA[name] = spec
  _CORPUS_CONFIGS[name] = config
  register_local_task(name, source_lang, target_lang, corpus_scope=f"{_USER_SCOPE}{name}")
  return name


_USER_CORPORA: Dict[str, tuple] = {}
_CORPUS_CONFIGS: Dict[str, dict] = {}
_USER_SCOPE = "user_corpus:"


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
