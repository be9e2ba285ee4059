"""`python -m rest_jax.main vocab`: a SentencePiece vocabulary from a task's own text."""

import itertools
from typing import Sequence

import seqio

from rest_jax.data import pipeline, vocab


def build_vocabulary(
    *,
    mixture_or_task_name: str,
    output_path: str,
    vocab_size: int = 8000,
    split: str = "train",
    features: Sequence[str] = ("inputs", "targets"),
    max_examples: int | None = 1_000_000,
    module: str | None = "rest_jax.data.tasks",
) -> str:
  """Trains a SentencePiece model on the raw text of a task's `features`.

  Reads the task's data source (before tokenization), so no vocabulary is needed
  to build one. Returns the path written.
  """
  config = pipeline.DatasetConfig(mixture_or_task_name, {}, split, 1, module=module)
  task = pipeline._get_task(config)  # pylint: disable=protected-access
  if not isinstance(task, seqio.Task):
    raise ValueError(f"vocab needs a task, not the mixture '{mixture_or_task_name}'")
  ds = task.source.get_dataset(split=split, shuffle=False)

  def texts():
    for example in itertools.islice(ds.as_numpy_iterator(), max_examples):
      for name in features:
        value = example[name]
        yield value.decode("utf-8") if isinstance(value, bytes) else str(value)

  return vocab.train_sentencepiece(texts(), output_path, vocab_size)
