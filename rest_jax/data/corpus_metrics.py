"""Corpus-level translation metrics (sacrebleu), as seqio metric functions.

A task can also declare source-aware metrics (`register_source_metric`): what a
synthetic corpus's generator knows about each source, e.g. the colour demo's
`colour_recall` (`colour_metric`). `policy_eval.PolicyEvaluator` merges them into
its results (`source_metrics`), and a Grow report reads a task's coverage of its
samples (`coverage`). Importing `rest_jax.data.tasks` registers the demo's.
"""

import functools
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import sacrebleu

# sacrebleu's tokenizer for a target language whose words are not separated by spaces (its
# own recommendations; Japanese and Korean need MeCab, which is not a dependency here).
BLEU_TOKENIZERS = {"zh": "zh"}
# sacrebleu's tokenizer that splits the words `degeneracy` counts, for a target language
# written without spaces between words (13a for the others, Korean included: it spaces its
# words). Without MeCab, Japanese and the South-East Asian scripts split by character.
WORD_TOKENIZERS = {"zh": "zh", "yue": "zh", "ja": "char", "th": "char", "lo": "char",
                   "my": "char", "km": "char"}


def _language(target_language: Optional[str]) -> str:
  return (target_language or "").replace("_", "-").split("-")[0].lower()


_METRICS = {"bleu": sacrebleu.BLEU, "chrf": sacrebleu.CHRF, "ter": sacrebleu.TER}


@functools.lru_cache(maxsize=4)
def _metric(name: str, targets: Tuple[str, ...], options: Tuple[Tuple[str, Any], ...] = ()):
  """sacrebleu's metric `name` (its defaults, as `sacrebleu.corpus_<name>` has them) with
  `targets` as its cached references: one split's references are scored against many
  outputs (each evaluation's greedy and best-of-N picks, every selection), and extracting
  their n-grams anew took a third of the metrics' time. A few are kept: chrF's statistics
  of 3,000 references of 25 words take about 160 MB."""
  return _METRICS[name](**dict(options), references=[list(targets)])


def _corpus_score(name: str, targets: Sequence[str], predictions: Sequence[str],
                  **options) -> float:
  metric = _metric(name, tuple(targets), tuple(sorted(options.items())))
  return metric.corpus_score(list(predictions), None).score


def bleu(targets: Sequence[str], predictions: Sequence[str], tokenize: str = "13a") -> dict:
  """Corpus BLEU (sacrebleu; 13a tokenisation unless `tokenize` says otherwise), 0-100."""
  return {"bleu": _corpus_score("bleu", targets, predictions, tokenize=tokenize)}


def bleu_for(target_language: Optional[str]) -> Callable[..., dict]:
  """BLEU with the tokenizer of `target_language` (sacrebleu's `zh` for Chinese)."""
  tokenize = BLEU_TOKENIZERS.get(_language(target_language), "13a")
  if tokenize == "13a" and _language(target_language) not in WORD_TOKENIZERS:
    return bleu
  fn = functools.update_wrapper(functools.partial(bleu, tokenize=tokenize), bleu)
  fn.target_language = target_language  # what `task_word_tokenizer` reads
  return fn


def word_tokenizer(target_language: Optional[str]) -> str:
  """The sacrebleu tokenizer that splits `target_language`'s words (`WORD_TOKENIZERS`)."""
  return WORD_TOKENIZERS.get(_language(target_language), "13a")


def task_word_tokenizer(task_name: str) -> str:
  """The word tokenizer of a seqio task's target language, as its BLEU function records it
  (`bleu_for`); a BLEU that splits Chinese (`zh`, `char`) without a language keeps its own."""
  fn = task_bleu(task_name)
  language = getattr(fn, "target_language", None)
  if language:
    return word_tokenizer(language)
  tokenize = getattr(fn, "keywords", {}).get("tokenize", "13a")
  return tokenize if tokenize in ("zh", "char") else "13a"


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
  return {"chrf": _corpus_score("chrf", targets, predictions)}


def ter(targets: Sequence[str], predictions: Sequence[str]) -> dict:
  """Corpus TER (translation edit rate), 0-100+, lower is better."""
  return {"ter": _corpus_score("ter", targets, predictions)}


def _normalised(text: str) -> str:
  return " ".join(text.casefold().strip().rstrip(".!?").split())


@functools.cache
def _tokenizer(tokenize: str) -> Callable[[str], str]:
  return sacrebleu.BLEU(tokenize=tokenize).tokenizer


def words(text: str, tokenize: str = "13a") -> List[str]:
  """`text`'s words by sacrebleu's `tokenize` (`zh`: one per Chinese character; `char`: one
  per character), case and punctuation aside."""
  return [w for w in _tokenizer(tokenize)(text.casefold()).split() if re.search(r"\w", w)]


def _has_repeated_ngram(tokens: Sequence[str], n: int) -> bool:
  grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
  return len(grams) != len(set(grams))


def degeneracy(sources: Sequence[str], targets: Sequence[str], predictions: Sequence[str],
               ngram: int = 3, tokenize: str = "13a") -> dict:
  """The ways a policy can please a reward without translating better, as rates, each
  beside the references' own (their natural level, which a report's limits start from).

  Words are split the same way in outputs and references, by sacrebleu's `tokenize` (the
  target language's: `task_word_tokenizer`; Chinese has no spaces to split on).

  Returns:
    `length_ratio`: words of the outputs over words of the references (corpus level);
    `repeated_ngram_rate`: share of outputs in which some word `ngram`-gram occurs
    twice (a repetition loop or a phrase said twice), and `reference_repeated_ngram_rate`
    the same share among the references;
    `empty_rate`: share of empty outputs, and `reference_empty_rate`;
    `copy_rate`: share of outputs that are the source itself (case, spacing and a final
    stop aside), i.e. untranslated, and `reference_copy_rate` (names, numbers, titles).
  """
  n = len(predictions)
  if not n:
    return {}
  hyp_words = [words(p, tokenize) for p in predictions]
  ref_words = [words(t, tokenize) for t in targets]

  def copy(source: str, text: str) -> bool:
    return bool(text.strip()) and _normalised(text) == _normalised(source)

  return {
      "length_ratio": sum(map(len, hyp_words)) / max(sum(map(len, ref_words)), 1),
      "repeated_ngram_rate": sum(_has_repeated_ngram(w, ngram) for w in hyp_words) / n,
      "reference_repeated_ngram_rate":
          sum(_has_repeated_ngram(w, ngram) for w in ref_words) / max(len(targets), 1),
      "empty_rate": sum(not p.strip() for p in predictions) / n,
      "reference_empty_rate": sum(not t.strip() for t in targets) / max(len(targets), 1),
      "copy_rate": sum(copy(s, p) for s, p in zip(sources, predictions)) / n,
      "reference_copy_rate":
          sum(copy(s, t) for s, t in zip(sources, targets)) / max(len(targets), 1),
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
