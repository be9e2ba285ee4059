"""Guards against reward hacking, composable around any reward.

The ReST paper found it: more Grow steps raised the learned reward while human raters
preferred fewer. A policy finds what a reward overlooks: empty output, a copy of the
source, output in the wrong language, a repetition loop, output far too short or too
long. `Guarded` multiplies the reward of such a hypothesis by a factor in gin (0 sets
it to the bottom of the reward's range), and counts the rows each guard fired on:
Grow stores the counts in each shard's sidecar and the manifest sums them, so the
report gives them per Grow step, resumed or multi-host alike.

    REWARD = @rewards.Guarded()
    rewards.Guarded.reward = @rewards.get()
    rewards.Guarded.target_language = 'de'

Each factor applies above the bottom of the range: `low + (score - low) * factor`.
"""

import functools
import re
from typing import Dict, Optional, Sequence

import numpy as np

from rest_jax.rewards.base import Reward

GUARDS = ("empty", "copy", "language", "length", "repetition")


def _words(text: str):
  return re.findall(r"\w+", text.casefold())


def _normalised(text: str) -> str:
  return " ".join(_words(text))


def _repeated_ngram(words, n: int) -> bool:
  grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
  return len(grams) != len(set(grams))


@functools.lru_cache(maxsize=4)
def _language_identifier(languages: Optional[tuple]):
  from langid import langid  # pylint: disable=g-import-not-at-top (loads its model: seconds)

  identifier = langid.LanguageIdentifier.from_modelstring(langid.model, norm_probs=True)
  if languages:
    identifier.set_languages(list(languages))
  return identifier


class Guarded(Reward):
  """`reward`, penalised on degenerate hypotheses; `fired` counts rows per guard.

  Args:
    reward: the reward to guard.
    target_language: ISO 639-1 code of the hypotheses' language; None turns the
      language guard off. Identified with langid.py (its model ships in the package).
    languages: the languages langid chooses among (None: its 97); restricting them to
      the task's makes short sentences far more reliable.
    min_language_words: hypotheses shorter than this are not language-checked.
    min_length_ratio, max_length_ratio: words of the hypothesis over words of the
      source outside this range fire the length guard.
    ngram: a word n-gram said twice fires the repetition guard, unless the source
      repeats one too.
    empty_factor, copy_factor, language_factor, length_factor, repetition_factor:
      the multiplicative penalty of each guard (1 turns it off).
  """

  def __init__(self, reward: Reward, target_language: Optional[str] = None,
               languages: Optional[Sequence[str]] = None, min_language_words: int = 3,
               min_length_ratio: float = 0.5, max_length_ratio: float = 2.0, ngram: int = 3,
               empty_factor: float = 0.0, copy_factor: float = 0.0,
               language_factor: float = 0.0, length_factor: float = 0.5,
               repetition_factor: float = 0.5):
    self.factors = {"empty": empty_factor, "copy": copy_factor, "language": language_factor,
                    "length": length_factor, "repetition": repetition_factor}
    for guard, factor in self.factors.items():
      if not 0.0 <= factor <= 1.0:
        raise ValueError(f"Guarded.{guard}_factor={factor} must be in [0, 1]")
    if not 0 < min_length_ratio < max_length_ratio:
      raise ValueError(f"Guarded: length ratios {min_length_ratio}, {max_length_ratio} must"
                       " satisfy 0 < min < max")
    self.reward = reward
    self.target_language = target_language
    self.languages = tuple(languages) if languages else None
    if self.languages and target_language and target_language not in self.languages:
      raise ValueError(f"Guarded: target_language {target_language!r} is not among"
                       f" languages {self.languages}")
    self.min_language_words = min_language_words
    self.min_length_ratio, self.max_length_ratio = min_length_ratio, max_length_ratio
    self.ngram = ngram
    self.name = f"guarded({reward.name})"
    self.range = reward.range
    self.needs_reference = reward.needs_reference
    self.fired: Dict[str, int] = dict.fromkeys(GUARDS, 0)  # of the last call

  @property
  def identity(self) -> str:
    settings = (self.target_language, self.languages, self.min_language_words,
                self.min_length_ratio, self.max_length_ratio, self.ngram,
                sorted(self.factors.items()))
    return f"guarded({self.reward.identity}; {settings!r})"

  def flags(self, sources: Sequence[str], hypotheses: Sequence[str]) -> Dict[str, np.ndarray]:
    """Which guards fire on each hypothesis: {guard: bool array}."""
    n = len(hypotheses)
    out = {g: np.zeros(n, bool) for g in GUARDS}
    for i, (source, hypothesis) in enumerate(zip(sources, hypotheses)):
      words, source_words = _words(hypothesis), _words(source)
      if not words:
        out["empty"][i] = True
        continue
      out["copy"][i] = _normalised(hypothesis) == _normalised(source)
      ratio = len(words) / max(len(source_words), 1)
      out["length"][i] = not self.min_length_ratio <= ratio <= self.max_length_ratio
      out["repetition"][i] = (_repeated_ngram(words, self.ngram)
                              and not _repeated_ngram(source_words, self.ngram))
      if self.target_language and len(words) >= self.min_language_words:
        language, _ = _language_identifier(self.languages).classify(hypothesis)
        out["language"][i] = language != self.target_language
    return out

  def score(self, sources, hypotheses, references):
    scores = np.asarray(self.reward(sources, hypotheses, references), np.float64)
    flags = self.flags(sources, hypotheses)
    factor = np.ones(len(hypotheses))
    for guard, fired in flags.items():
      factor = np.where(fired, factor * self.factors[guard], factor)
    self.fired = {g: int(f.sum()) for g, f in flags.items()}
    low = self.range[0]
    return low + (scores - low) * factor
