"""Corpus metrics: each is sacrebleu's own corpus score, references cached or not."""

import random

import pytest
import sacrebleu

from rest_jax.data import corpus_metrics


def _corpus(seed: int, n: int = 40):
  rng = random.Random(seed)
  words = "der die das alte rote Mann Frau Haus sieht gibt ein eine blaue . ,".split()
  refs = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 9))) for _ in range(n)]
  hyps = [" ".join(w for w in r.split() if rng.random() > 0.3) for r in refs]
  return refs, hyps


@pytest.mark.parametrize("tokenize", ["13a", "zh", "char"])
def test_scores_equal_sacrebleus_corpus_scores_when_references_repeat(tokenize):
  refs, hyps = _corpus(0)
  other_refs, other_hyps = _corpus(1)
  # The same references scored against several outputs (the cache is reused), and other
  # references in between (it is not mistaken for theirs).
  for r, h in [(refs, hyps), (other_refs, other_hyps), (refs, other_hyps[:40]), (refs, refs),
               (refs, hyps)]:
    assert corpus_metrics.bleu(r, h, tokenize=tokenize)["bleu"] == sacrebleu.corpus_bleu(
        h, [r], tokenize=tokenize).score
    assert corpus_metrics.chrf(r, h)["chrf"] == sacrebleu.corpus_chrf(h, [r]).score
    assert corpus_metrics.ter(r, h)["ter"] == sacrebleu.corpus_ter(h, [r]).score


def test_references_are_kept_as_given_not_as_later_mutated():
  refs, hyps = _corpus(2)
  expected = sacrebleu.corpus_bleu(hyps, [list(refs)]).score
  assert corpus_metrics.bleu(refs, hyps)["bleu"] == expected
  refs[0] = "ganz anders"  # a caller's list changed after scoring
  assert corpus_metrics.bleu(refs, hyps)["bleu"] == sacrebleu.corpus_bleu(hyps, [refs]).score
