"""Vocabularies: SentencePiece models trained locally, and the demo's vocabulary.

Models use T5's special ids (pad 0, EOS 1, UNK 2, no BOS) so that seqio's
`SentencePieceVocabulary` and the t5x conventions hold.
"""

import io
import os
import tempfile
from typing import Iterable

from absl import logging
import seqio
import sentencepiece as spm


def cache_dir() -> str:
  """Where generated artifacts (the demo vocabulary) live: `$REST_JAX_CACHE` or ~/.cache."""
  path = os.environ.get("REST_JAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "rest_jax"
  )
  os.makedirs(path, exist_ok=True)
  return path


def train_sentencepiece(
    texts: Iterable[str], model_path: str, vocab_size: int = 8000,
    character_coverage: float = 1.0, model_type: str = "unigram",
) -> str:
  """Trains a SentencePiece model on `texts` and writes it to `model_path`.

  Training is single-threaded and seeded by the data, so the same texts give the
  same model. The file is written under a temporary name and renamed, so a
  concurrent reader never sees half a model.

  Returns:
    `model_path`.
  """
  texts = [t for t in texts if t]
  if not texts:
    raise ValueError(f"no text to train the vocabulary {model_path} on")
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
      model_type=model_type, character_coverage=character_coverage,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1,
      hard_vocab_limit=False, minloglevel=2,
  )
  directory = os.path.dirname(os.path.abspath(model_path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
  with os.fdopen(fd, "wb") as f:
    f.write(model.getvalue())
  os.replace(tmp, model_path)
  logging.info("Wrote SentencePiece model %s (%d pieces)", model_path, vocab_size)
  return model_path


class DemoVocabulary(seqio.SentencePieceVocabulary):
  """The demo corpus's SentencePiece vocabulary, trained on first use and cached.

  Constructing it is cheap (gin builds one whenever a config is parsed); the
  model file is trained only when a token is first encoded or decoded. It holds
  nothing but what a `seqio.SentencePieceVocabulary` of the same file holds, so
  the two compare equal (t5x's trainer checks that model and task vocabularies
  match): its size, seed and grammar are in the file's name.

  Args:
    vocab_size: pieces asked for (the corpus has fewer distinct ones).
    seed: the corpus seed it is trained on.
    grammar: the demo grammar (`demo_corpus.GRAMMARS`): "base" for `rest_demo_en_de`,
      "colour" for `rest_demo_colour_en_de` (its file has `_colour` in its name).
  """

  def __init__(self, vocab_size: int = 512, seed: int = 0, grammar: str = "base"):
    suffix = "" if grammar == "base" else f"_{grammar}"
    super().__init__(os.path.join(cache_dir(),
                                  f"demo_spm_{vocab_size}_{seed}{suffix}_v1.model"))

  def _model_context(self):
    if not os.path.exists(self.sentencepiece_model_file):
      from rest_jax.data import demo_corpus  # pylint: disable=g-import-not-at-top

      name = os.path.basename(self.sentencepiece_model_file)
      vocab_size, seed, *grammar = name[len("demo_spm_"):-len("_v1.model")].split("_")
      pairs = demo_corpus.generate_splits(train_size=20000, validation_size=0, test_size=0,
                                          seed=int(seed), grammar=(grammar or ["base"])[0])
      train_sentencepiece([t for pair in pairs["train"] for t in pair],
                          self.sentencepiece_model_file, int(vocab_size))
    return super()._model_context()
