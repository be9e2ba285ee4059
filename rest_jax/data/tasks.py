"""seqio tasks that importing this module registers.

`rest_demo_en_de` is the embedded synthetic corpus (see `demo_corpus`): English
inputs, German-like targets, EOS appended, BLEU and chrF as metrics. The WMT,
IWSLT and TED tasks are in `translation_tasks`.
"""

import functools

import gin
import seqio
import tensorflow as tf

from rest_jax.data import corpus_metrics as metrics, demo_corpus, translation_tasks, vocab

DEMO_TASK = "rest_demo_en_de"


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


@functools.lru_cache(maxsize=4)
def _demo_splits(train_size, validation_size, test_size, seed, forms, flaw_rate, noise_rate,
                 flaw):
  return demo_corpus.generate_splits(train_size, validation_size, test_size, seed, forms=forms,
                                     flaw_rate=flaw_rate, noise_rate=noise_rate, flaw=flaw)


def _demo_dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
  del shuffle_files, seed  # one in-memory "file"; seqio shuffles examples.
  pairs = _demo_splits(**demo_corpus_sizes())[split]
  inputs = [en for en, _ in pairs]
  targets = [de for _, de in pairs]
  return tf.data.Dataset.from_tensor_slices({"inputs": inputs, "targets": targets})


def translation_output_features(vocabulary: seqio.Vocabulary) -> dict:
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


def register_demo_task(name: str = DEMO_TASK, vocabulary=None) -> seqio.Task:
  vocabulary = vocabulary or vocab.DemoVocabulary()  # trained on first use
  return seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(_demo_dataset_fn, splits=demo_corpus.SPLITS),
      preprocessors=[
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=translation_output_features(vocabulary),
      metric_fns=[metrics.bleu, metrics.chrf],
  )


if DEMO_TASK not in seqio.TaskRegistry.names():
  register_demo_task()
  translation_tasks.register_all()
