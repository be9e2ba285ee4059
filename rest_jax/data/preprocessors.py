"""seqio preprocessors: small `tf.data.Dataset -> tf.data.Dataset` functions."""

import seqio
import tensorflow as tf


def identity(dataset: tf.data.Dataset) -> tf.data.Dataset:
  return dataset


@seqio.map_over_dataset
def select_pair(example, source_key: str, target_key: str):
  """A TFDS `Translation` example `{lang: text}` -> `{inputs, targets}`."""
  return {"inputs": example[source_key], "targets": example[target_key]}


def ted_multi_pair(dataset: tf.data.Dataset, source_lang: str, target_lang: str):
  """`ted_multi_translate` examples -> `{inputs, targets}` for one language pair.

  Talks lacking either language are dropped (the corpus is multi-way, not every
  sentence exists in every language).
  """
  def has_both(example):
    languages = example["translations"]["language"]
    return tf.reduce_any(tf.equal(languages, source_lang)) & tf.reduce_any(
        tf.equal(languages, target_lang))

  def pick(example):
    languages = example["translations"]["language"]
    texts = example["translations"]["translation"]
    get = lambda lang: tf.boolean_mask(texts, tf.equal(languages, lang))[0]  # noqa: E731
    return {"inputs": get(source_lang), "targets": get(target_lang)}

  return dataset.filter(has_both).map(pick, num_parallel_calls=tf.data.AUTOTUNE)
