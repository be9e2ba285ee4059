"""seqio tasks that importing this module registers.

`rest_demo_en_de` is the embedded synthetic corpus (see `demo_corpus`): English
inputs, German-like targets, EOS appended, BLEU and chrF as metrics.
`rest_demo_colour_en_de` is the same corpus in its colour grammar, whose training
split by default leaves attributive colours out (flaw "colour"), with its own
vocabulary and a source metric, `colour_recall` (`colour_metric`). The WMT, IWSLT
and TED tasks are in `translation_tasks`.
"""

import functools
from typing import Callable

import gin
import seqio
import tensorflow as tf

from rest_jax.data import colour_metric, corpus_metrics as metrics, demo_corpus
from rest_jax.data import translation_tasks, vocab

DEMO_TASK = "rest_demo_en_de"
DEMO_COLOUR_TASK = "rest_demo_colour_en_de"


@gin.configurable(module="rest_jax.data.tasks")
def demo_corpus_sizes(train_size: int = 20000, validation_size: int = 500,
                      test_size: int = 500, seed: int = 0, forms: str = "full",
                      flaw_rate: float = 0.0, noise_rate: float = 0.0,
                      flaw: str = "dative") -> dict:
  """The demo corpus's sizes, seed and training-split flaws; bind these in gin.

  See `demo_corpus.generate_corpus`: `forms` ("full" or "simple" sentences),
  `flaw` and `flaw_rate` (the wrong rule, and the share of training pairs with its
  construction that follow it) and `noise_rate` (share of training pairs replaced by
  web-like noise).
  Validation and test are always clean.
  """
  return dict(train_size=train_size, validation_size=validation_size,
              test_size=test_size, seed=seed, forms=forms, flaw_rate=flaw_rate,
              noise_rate=noise_rate, flaw=flaw)


@gin.configurable(module="rest_jax.data.tasks")
def demo_colour_corpus_sizes(train_size: int = 20000, validation_size: int = 500,
                             test_size: int = 500, seed: int = 0, forms: str = "simple",
                             flaw_rate: float = demo_corpus.COLOUR_FLAW_RATE,
                             noise_rate: float = 0.0, flaw: str = "colour") -> dict:
  """The colour demo corpus's (`DEMO_COLOUR_TASK`) sizes, seed and flaws; bind these in gin.

  As `demo_corpus_sizes`, in the colour grammar. By default at least 98% of the
  training references whose source has an attributive colour leave it out, while
  predicate colours (`das Auto ist rot`) are always right; no noise. Validation and
  test are always clean.
  """
  return dict(train_size=train_size, validation_size=validation_size,
              test_size=test_size, seed=seed, forms=forms, flaw_rate=flaw_rate,
              noise_rate=noise_rate, flaw=flaw, grammar="colour")


@functools.lru_cache(maxsize=4)
def _demo_splits(train_size, validation_size, test_size, seed, forms, flaw_rate, noise_rate,
                 flaw, grammar="base"):
  return demo_corpus.generate_splits(train_size, validation_size, test_size, seed, forms=forms,
                                     flaw_rate=flaw_rate, noise_rate=noise_rate, flaw=flaw,
                                     grammar=grammar)


def _demo_dataset_fn(sizes_fn: Callable[[], dict]):
  """A seqio dataset function over the demo corpus that `sizes_fn()` describes."""

  def dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed  # one in-memory "file"; seqio shuffles examples.
    pairs = _demo_splits(**sizes_fn())[split]
    inputs = [en for en, _ in pairs]
    targets = [de for _, de in pairs]
    return tf.data.Dataset.from_tensor_slices({"inputs": inputs, "targets": targets})

  dataset_fn.identity = sizes_fn  # what decides its rows (`identity.task`): the gin-bound sizes
  return dataset_fn


def translation_output_features(vocabulary: seqio.Vocabulary) -> dict:
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


def register_demo_task(name: str = DEMO_TASK, vocabulary=None,
                       sizes_fn: Callable[[], dict] = demo_corpus_sizes) -> seqio.Task:
  """Registers a demo corpus task: `sizes_fn` (gin-configured) says which corpus."""
  vocabulary = vocabulary or vocab.DemoVocabulary()  # trained on first use
  return seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(_demo_dataset_fn(sizes_fn), splits=demo_corpus.SPLITS),
      preprocessors=[
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=translation_output_features(vocabulary),
      metric_fns=[metrics.bleu, metrics.chrf],
  )


if DEMO_TASK not in seqio.TaskRegistry.names():
  register_demo_task()
  register_demo_task(DEMO_COLOUR_TASK, vocab.DemoVocabulary(grammar="colour"),
                     demo_colour_corpus_sizes)
  translation_tasks.register_all()
metrics.register_source_metric(DEMO_COLOUR_TASK, colour_metric.colour_metrics,
                               coverage_fn=colour_metric.colour_coverage)
