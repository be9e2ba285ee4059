"""Corpus-level translation metrics (sacrebleu), as seqio metric functions.

A task can also declare source-aware metrics (`register_source_metric`): what a
synthetic corpus's generator knows about each source, e.g. the colour demo's
`colour_recall` (`colour_metric`). `policy_eval.PolicyEvaluator` merges them into
its results (`source_metrics`), and a Grow report reads a task's coverage of its
samples (`coverage`). Importing `rest_jax.data.tasks` registers the demo's.
"""

import functools
import re
from typing import Callable, Dict, List, Optional, Sequence

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


# fn(sources, references, hypotheses) -> {metric name: value}.
SourceMetricFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], Dict[str, float]]
# fn(sources, hypotheses_per_source) -> share of sources covered, or None.
CoverageFn = Callable[[Sequence[str], Sequence[Sequence[str]]], Optional[float]]
_SOURCE_METRICS: Dict[str, List[SourceMetricFn]] = {}
_COVERAGE: Dict[str, CoverageFn] = {}


def register_source_metric(task_name: str, fn: SourceMetricFn,
                           coverage_fn: Optional[CoverageFn] = None) -> None:
  """Declares a source-aware metric of a task; registering the same `fn` again is a no-op.

  Args:
    task_name: the seqio task whose evaluations it joins.
    fn: fn(sources, references, hypotheses) -> {name: value}; an empty dict when it
      does not apply to these sources.
    coverage_fn: fn(sources, hypotheses_per_source) -> the share of sources (among
      those it applies to) that some hypothesis of theirs gets right, or None when
      it applies to none (`coverage`). A task has one; a later one replaces it.
  """
  fns = _SOURCE_METRICS.setdefault(task_name, [])
  if fn not in fns:
    fns.append(fn)
  if coverage_fn is not None:
    _COVERAGE[task_name] = coverage_fn


def source_metrics(task_name: str, sources: Sequence[str], references: Sequence[str],
                   hypotheses: Sequence[str]) -> Dict[str, float]:
  """Every source-aware metric registered for `task_name`, merged ({} when none)."""
  out: Dict[str, float] = {}
  for fn in _SOURCE_METRICS.get(task_name, ()):
    out.update(fn(sources, references, hypotheses))
  return out


def get_coverage_fn(task_name: str) -> Optional[CoverageFn]:
  """The coverage function registered for `task_name`, or None."""
  return _COVERAGE.get(task_name)


def coverage(task_name: str, sources: Sequence[str],
             hypotheses_per_source: Sequence[Sequence[str]]) -> Optional[float]:
  """The share of sources that at least one of their hypotheses gets right, by the task's
  coverage function (for the colour demo: the right colour; `colour_metric.colour_coverage`).

  Args:
    task_name: the seqio task of the sources (e.g. a Grow step's source task).
    sources: the sources.
    hypotheses_per_source: each source's hypotheses (e.g. its Grow samples).

  Returns:
    A share in [0, 1]; None when the task registered no coverage function or it
    applies to none of the sources.
  """
  fn = get_coverage_fn(task_name)
  return None if fn is None else fn(sources, hypotheses_per_source)
