"""Corpus-level translation metrics (sacrebleu), as seqio metric functions."""

from typing import Sequence

import sacrebleu


def bleu(targets: Sequence[str], predictions: Sequence[str]) -> dict:
  """Corpus BLEU (sacrebleu defaults, 13a tokenisation), 0-100."""
  return {"bleu": sacrebleu.corpus_bleu(list(predictions), [list(targets)]).score}


def chrf(targets: Sequence[str], predictions: Sequence[str]) -> dict:
  """Corpus chrF (character n-gram F-score), 0-100."""
  return {"chrf": sacrebleu.corpus_chrf(list(predictions), [list(targets)]).score}
