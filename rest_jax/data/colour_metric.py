"""Colour recall: the colour corpus's flaw, measured from the generator's truth.

The colour demo (`rest_demo_colour_en_de`) trains on references that leave out
attributive colour adjectives (`das Auto` for `das rote Auto`). Whether a policy
translates them is read from its sources, not its references: the demo grammar
says which colours a source uses and how (`demo_corpus.colour_uses`), and the
lexicon gives each colour's German stem (`demo_corpus.COLOURS`).

A hypothesis has a source's colours when, for each colour the source uses
attributively, it holds at least as many words of that colour's German stem
(bare, `rot`, or inflected, `rote`, `roten`, ...) as the source has uses of the
colour, attributive and predicate together: a predicate `ist rot` cannot stand in
for a left-out `rote`. Endings are not checked (agreement is another matter).
"""

import re
from typing import Dict, List, Optional, Sequence

from rest_jax.data import demo_corpus

ENDINGS = ("", "e", "en", "er", "es", "em")


def _stem_count(stem: str, hypothesis: str) -> int:
  """Words of `hypothesis` that are `stem` with an adjective ending (or none)."""
  return sum(1 for word in re.findall(r"\w+", hypothesis.lower())
             if word.startswith(stem) and word[len(stem):] in ENDINGS)


def colour_flag(source: str, hypothesis: str) -> Optional[bool]:
  """Whether `hypothesis` has every attributive colour of `source` (module docstring).

  Returns:
    None when the source has no attributive colour adjective.
  """
  attributive, predicate = demo_corpus.colour_uses(source)
  if not attributive:
    return None
  uses = attributive + predicate
  return all(_stem_count(demo_corpus.COLOURS[colour], hypothesis) >= uses.count(colour)
             for colour in set(attributive))


def colour_flags(sources: Sequence[str], hypotheses: Sequence[str]) -> List[Optional[bool]]:
  """`colour_flag` per (source, hypothesis): True, False, or None without a colour."""
  return [colour_flag(s, h) for s, h in zip(sources, hypotheses, strict=True)]


def colour_recall(sources: Sequence[str], hypotheses: Sequence[str]) -> Optional[float]:
  """The share of sources with an attributive colour whose hypothesis has it.

  Returns:
    A share in [0, 1], or None when no source has an attributive colour.
  """
  flags = [f for f in colour_flags(sources, hypotheses) if f is not None]
  return sum(flags) / len(flags) if flags else None


def colour_metrics(sources: Sequence[str], references: Sequence[str],
                   hypotheses: Sequence[str]) -> Dict[str, float]:
  """`{"colour_recall": ...}` (a source metric, `corpus_metrics.register_source_metric`).

  The references are not read. Empty when no source has an attributive colour.
  """
  del references
  recall = colour_recall(sources, hypotheses)
  return {} if recall is None else {"colour_recall": recall}


def colour_coverage(sources: Sequence[str],
                    hypotheses_per_source: Sequence[Sequence[str]]) -> Optional[float]:
  """The share of sources with an attributive colour that some hypothesis of theirs has.

  What Grow can hand Improve: a source none of whose samples has its colour gives
  the filter nothing right to keep.

  Args:
    sources: English sources.
    hypotheses_per_source: each source's hypotheses (e.g. its Grow samples).

  Returns:
    A share in [0, 1], or None when no source has an attributive colour.
  """
  covered = [any(colour_flag(source, h) for h in hypotheses)
             for source, hypotheses in zip(sources, hypotheses_per_source, strict=True)
             if demo_corpus.colour_uses(source)[0]]
  return sum(covered) / len(covered) if covered else None
