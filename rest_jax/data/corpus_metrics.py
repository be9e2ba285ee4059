"""Corpus-level translation metrics (sacrebleu), as seqio metric functions."""

import functools
import re
from typing import Callable, Optional, Sequence

import sacrebleu

# sacrebleu's tokenizer for a target language whose words are not separated by spaces (its
# own recommendations; Japanese and Korean need MeCab, which is not a dependency here).
BLEU_TOKENIZERS = {"zh": "zh"}


def bleu(targets: Sequence[str], predictions: Sequence[str], tokenize: str = "13a") -> dict:
  """Corpus BLEU (sacrebleu; 13a tokenisation unless `tokenize` says otherwise), 0-100."""
  return {"bleu": sacrebleu.corpus_bleu(list(predictions), [list(targets)],
                                        tokenize=tokenize).score}


def bleu_for(target_language: Optional[str]) -> Callable[..., dict]:
  """BLEU with the tokenizer of `target_language` (sacrebleu's `zh` for Chinese)."""
  tokenize = BLEU_TOKENIZERS.get((target_language or "").split("-")[0].lower(), "13a")
  if tokenize == "13a":
    return bleu
  return functools.update_wrapper(functools.partial(bleu, tokenize=tokenize), bleu)


def task_bleu(task_name: str) -> Callable[..., dict]:
  """The BLEU function among a seqio task's `metric_fns` (its target language's tokenizer)."""
  import seqio  # pylint: disable=g-import-not-at-top

  try:
    fns = seqio.get_mixture_or_task(task_name).metric_fns
  except (ValueError, AttributeError):
    return bleu
  return next((fn for fn in fns if getattr(fn, "__name__", "") == "bleu"), bleu)


def chrf(targets: Sequence[str], predictions: Sequence[str]) -> dict:
  """Corpus chrF (character n-gram F-score), 0-100."""
  return {"chrf": sacrebleu.corpus_chrf(list(predictions), [list(targets)]).score}


def ter(targets: Sequence[str], predictions: Sequence[str]) -> dict:
  """Corpus TER (translation edit rate), 0-100+, lower is better."""
  return {"ter": sacrebleu.corpus_ter(list(predictions), [list(targets)]).score}


def _normalised(text: str) -> str:
  return " ".join(text.casefold().strip().rstrip(".!?").split())


def _has_repeated_ngram(text: str, n: int) -> bool:
  words = re.findall(r"\w+", text.casefold())  # punctuation and case aside
  grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
  return len(grams) != len(set(grams))


def degeneracy(sources: Sequence[str], targets: Sequence[str], predictions: Sequence[str],
               ngram: int = 3) -> dict:
  """The ways a policy can please a reward without translating better, as rates.

  Returns:
    `length_ratio`: words of the outputs over words of the references (corpus level);
    `repeated_ngram_rate`: share of outputs in which some word `ngram`-gram occurs
    twice (a repetition loop or a phrase said twice), and `reference_repeated_ngram_rate`
    the same share among the references, its natural level;
    `empty_rate`: share of empty outputs;
    `copy_rate`: share of outputs that are the source itself (case, spacing and a final
    stop aside), i.e. untranslated.
  """
  n = len(predictions)
  if not n:
    return {}
  words = [p.split() for p in predictions]
  ref_words = sum(len(t.split()) for t in targets)
  return {
      "length_ratio": sum(len(w) for w in words) / max(ref_words, 1),
      "repeated_ngram_rate": sum(_has_repeated_ngram(p, ngram) for p in predictions) / n,
      "reference_repeated_ngram_rate":
          sum(_has_repeated_ngram(t, ngram) for t in targets) / n,
      "empty_rate": sum(not w for w in words) / n,
      "copy_rate": sum(bool(p.strip()) and _normalised(p) == _normalised(s)
                       for s, p in zip(sources, predictions)) / n,
  }
