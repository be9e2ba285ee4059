"""Ratings files for the learned reward model, built offline.

No human ratings can be downloaded here, so the learned reward model is trained
on synthetic ones:

- `build_ratings_file` (the `ratings` command): from any parallel corpus, each
  reference is kept (a perfect translation) and corrupted with 1..`max_edits`
  edits (word drops, swaps of neighbours, agreement errors: a German article or
  adjective ending replaced by a wrong one); each hypothesis is rated by its chrF
  against the reference, on [0, 1].
- `build_demo_ratings_file` (the `demo_ratings` command): from the demo corpus's
  generator, which knows every source's correct translation and rates candidates
  that include the demo's systematic flaw and its noise (see `build_demo_ratings`).
- `build_policy_ratings_file` (the `policy_ratings` command): a Grow step's own
  samples, rated by a rater that reads references (chrF by default; with human
  ratings, the same file format). The reward model is validated on them
  (`train_reward_model(policy_ratings_file=)`), never trained on them.

`degenerate_variants` builds the hand-made failures a reward model's validation
checks it ranks below a correct translation (`train_reward_model`).

A ratings file is TSV: source, hypothesis, reference, score[, kind].
"""

import os
import random
import re
import tempfile
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import sacrebleu

ARTICLES = ["der", "die", "das", "den", "dem", "des", "ein", "eine", "einen", "einem", "einer"]
ENDINGS = ["e", "en", "er", "es", "em"]


def _agreement_error(words: List[str], rng: random.Random) -> bool:
  candidates = [i for i, w in enumerate(words) if w.lower() in ARTICLES]
  adjectives = [i for i, w in enumerate(words)
                if re.fullmatch(r"[a-zäöüß]+(e|en|er|es|em)", w) and w.lower() not in ARTICLES]
  if not candidates and not adjectives:
    return False
  if candidates and (not adjectives or rng.random() < 0.5):
    i = rng.choice(candidates)
    word = words[i]
    choices = [a for a in ARTICLES if a != word.lower()]
    new = rng.choice(choices)
    words[i] = new.capitalize() if word[0].isupper() else new
  else:
    i = rng.choice(adjectives)
    stem = re.sub(r"(en|er|es|em|e)$", "", words[i])
    words[i] = stem + rng.choice([e for e in ENDINGS if not words[i].endswith(e)] or ENDINGS)
  return True


def corrupt(sentence: str, rng: random.Random, edits: int) -> str:
  """Applies `edits` random corruptions to a sentence."""
  words = sentence.split()
  for _ in range(edits):
    kind = rng.random()
    if kind < 0.35 and len(words) > 1:
      del words[rng.randrange(len(words))]
    elif kind < 0.65 and len(words) > 2:
      i = rng.randrange(len(words) - 1)
      words[i], words[i + 1] = words[i + 1], words[i]
    elif not _agreement_error(words, rng) and len(words) > 1:
      del words[rng.randrange(len(words))]
  return " ".join(words)


# MetricX's documented failure modes, and the loops sampling policies fall into.
DEGENERATE_KINDS = ("empty", "copy_of_source", "unrelated", "gibberish", "under_translation",
                    "over_translation", "repetition_loop", "missing_punctuation")


def degenerate_variants(source: str, translation: str, other: str,
                        rng: random.Random) -> Dict[str, str]:
  """Hand-made failures of a correct `translation` of `source`, by kind.

  `other` is another sentence's translation (fluent but unrelated output, and the
  text an over-translation adds). A kind that would equal the translation (no
  final punctuation to drop, a one-word sentence to cut) is left out.
  """
  words = translation.split()
  body = translation.rstrip(".!?;:")
  phrase = " ".join(words[-3:-1]) if len(words) > 2 else body
  variants = {
      "empty": "",
      "copy_of_source": source,
      "unrelated": other,
      "gibberish": " ".join("".join(rng.sample(w, len(w))) for w in reversed(words)),
      "under_translation": " ".join(words[: len(words) // 2]),
      "over_translation": f"{body}, {other[:1].lower()}{other[1:]}",
      "repetition_loop": " ".join([body] + [phrase] * 4) + translation[len(body):],
      "missing_punctuation": body,
  }
  return {k: v for k, v in variants.items() if v != translation}


def build_ratings(pairs: Iterable[Tuple[str, str]], corruptions_per_pair: int = 3,
                  max_edits: int = 4, seed: int = 0) -> List[Tuple[str, str, str, float]]:
  """(source, hypothesis, reference, score) rows: each reference and its corruptions."""
  rng = random.Random(seed)
  chrf = sacrebleu.metrics.CHRF()
  rows = []
  for source, reference in pairs:
    rows.append((source, reference, reference, 1.0))
    for _ in range(corruptions_per_pair):
      hypothesis = corrupt(reference, rng, rng.randint(1, max_edits))
      for _ in range(5):  # edits can cancel out (a swap undone by a swap)
        if hypothesis != reference:
          break
        hypothesis = corrupt(reference, rng, 1)
      score = chrf.sentence_score(hypothesis, [reference]).score / 100.0
      rows.append((source, hypothesis, reference, round(score, 4)))
  return rows


def build_demo_ratings(num_sources: int = 4000, seed: int = 0, forms: str = "full",
                       corruptions_per_pair: int = 2, max_edits: int = 3,
                       penalty: float = 0.2, flaw: str = "dative", corpus_train_size: int = 20000,
                       corpus_seed: int = 0, grow_sources: int = 4000,
                       grammar: str = "base", flaw_share: Optional[float] = None
                       ) -> List[Tuple[str, str, str, float, str]]:
  """Ratings from the demo corpus's generator, the stand-in for human raters.

  The raters rate `num_sources` training sources of the demo corpus (`corpus_seed`,
  `corpus_train_size`, `grammar`: the run's corpus) that Grow never samples: drawn with `seed`
  from those after the first `grow_sources` (Grow's `GROW_MAX_SOURCES`), never from
  validation or test. So the reward model has not seen the correct translation of any
  source it later scores samples of, as a metric trained on other data would not.

  The generator knows each source's correct translation. For every rated source it
  rates (`EditRating`: `1 - penalty` per word error) the correct translation, its
  rendering with the demo's systematic flaw (`flaw`, when the sentence has the
  construction; kind "flawed" whichever the flaw: for "colour", in the "colour"
  grammar, the translation without its attributive colours), one web-like noise
  variant (untranslated copy, another sentence's translation, cut in half, a phrase
  repeated, in turn) and `corruptions_per_pair` typical model errors (dropped, swapped
  or mis-agreed words).

  `flaw_share` (None: the sources are drawn uniformly) draws that share of the rated
  sources from those with the flaw's construction, the rest from those without: a rare
  construction (an attributive colour is in about a fifth of the colour corpus's sources)
  otherwise gives the reward too few flawed candidates to learn it from.

  Returns:
    (source, hypothesis, correct translation, rating, kind) rows.
  """
  from rest_jax.data import demo_corpus  # pylint: disable=g-import-not-at-top
  from rest_jax.rewards.sentence_metrics import EditRating  # pylint: disable=g-import-not-at-top

  train = demo_corpus.generate_corpus(corpus_train_size, 0, 0, corpus_seed, forms=forms,
                                      flaw_rate=1.0, flaw=flaw, grammar=grammar)["train"]
  candidates_pool = list(range(grow_sources, len(train)))
  if num_sources > len(candidates_pool):
    raise ValueError(f"build_demo_ratings: {num_sources} sources asked for, but only"
                     f" {len(candidates_pool)} training sources lie outside Grow's first"
                     f" {grow_sources} (corpus_train_size {corpus_train_size})")
  rng = random.Random(seed)
  if flaw_share is None:
    rated = sorted(rng.sample(candidates_pool, num_sources))
  else:
    rated = sorted(_draw_by_construction(train, candidates_pool, num_sources, flaw_share,
                                         rng))
  rater = EditRating(penalty)
  candidates = []
  for n, index in enumerate(rated):
    pair = train[index]
    clean = demo_corpus.DemoPair(pair.source, pair.correct, pair.correct)
    candidates.append((pair.source, pair.correct, pair.correct, "correct"))
    if pair.kind == "flawed":
      candidates.append((pair.source, pair.target, pair.correct, "flawed"))
    kind = demo_corpus.NOISE_KINDS[n % len(demo_corpus.NOISE_KINDS)]
    other = train[rng.randrange(len(train))].correct
    candidates.append((pair.source, demo_corpus._noisy(clean, kind, rng, other).target,  # pylint: disable=protected-access
                       pair.correct, kind))
    for _ in range(corruptions_per_pair):
      hypothesis = corrupt(pair.correct, rng, rng.randint(1, max_edits))
      candidates.append((pair.source, hypothesis, pair.correct, "model_error"))
  scores = rater([c[0] for c in candidates], [c[1] for c in candidates],
                 [c[2] for c in candidates])
  return [(s, h, r, round(float(v), 4), k) for (s, h, r, k), v in zip(candidates, scores)]


def _draw_by_construction(train, pool: Sequence[int], num_sources: int, flaw_share: float,
                          rng: random.Random) -> List[int]:
  """`num_sources` of `pool`: `flaw_share` of them with the flaw's construction."""
  if not 0.0 <= flaw_share <= 1.0:
    raise ValueError(f"build_demo_ratings: flaw_share must lie in [0, 1], got {flaw_share}")
  flawed = [i for i in pool if train[i].kind == "flawed"]
  others = [i for i in pool if train[i].kind != "flawed"]
  want = int(flaw_share * num_sources + 0.5)  # halves round up
  if want > len(flawed) or num_sources - want > len(others):
    raise ValueError(
        f"build_demo_ratings: flaw_share {flaw_share} of {num_sources} sources asks for"
        f" {want} with the flaw's construction and {num_sources - want} without, but the"
        f" pool has {len(flawed)} and {len(others)}")
  return rng.sample(flawed, want) + rng.sample(others, num_sources - want)


def build_demo_ratings_file(*, output_path: str, num_sources: int = 4000, seed: int = 0,
                            forms: str = "full", corruptions_per_pair: int = 2,
                            max_edits: int = 3, penalty: float = 0.2,
                            flaw: str = "dative", corpus_train_size: int = 20000,
                            corpus_seed: int = 0, grow_sources: int = 4000,
                            grammar: str = "base", flaw_share: Optional[float] = None) -> str:
  """Writes `build_demo_ratings` as a ratings TSV (with a fifth column: the kind)."""
  return write_ratings(output_path, build_demo_ratings(
      num_sources, seed, forms, corruptions_per_pair, max_edits, penalty, flaw,
      corpus_train_size, corpus_seed, grow_sources, grammar, flaw_share))


def write_ratings(path: str, rows: Sequence[Tuple]) -> str:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    for row in rows:
      if any("\t" in str(x) or "\n" in str(x) for x in row):
        raise ValueError(f"a rating row contains a tab or newline: {row!r}")
      f.write("\t".join(str(x) for x in row) + "\n")
  os.replace(tmp, path)
  return path


def build_ratings_file(*, mixture_or_task_name: str, output_path: str, split: str = "train",
                       max_pairs: int | None = 20000, corruptions_per_pair: int = 3,
                       max_edits: int = 4, seed: int = 0,
                       module: str | None = "rest_jax.data.tasks") -> str:
  """Writes a ratings TSV from a seqio task's raw (untokenized) pairs."""
  import itertools  # pylint: disable=g-import-not-at-top

  from rest_jax.data import pipeline  # pylint: disable=g-import-not-at-top (imports TF)

  task = pipeline._get_task(  # pylint: disable=protected-access
      pipeline.DatasetConfig(mixture_or_task_name, {}, split, 1, module=module))
  ds = task.source.get_dataset(split=split, shuffle=False)
  for preprocessor in task.preprocessors:  # the text-level ones, before tokenization
    if getattr(preprocessor, "__name__", "") == "tokenize":
      break
    ds = preprocessor(ds)

  def pairs():
    for ex in itertools.islice(ds.as_numpy_iterator(), max_pairs):
      yield ex["inputs"].decode("utf-8"), ex["targets"].decode("utf-8")

  rows = build_ratings(pairs(), corruptions_per_pair, max_edits, seed)
  return write_ratings(output_path, rows)


def build_policy_ratings(grown_dir: str, rater=None,
                         max_rows: int | None = None) -> List[Tuple[str, str, str, float, str]]:
  """(source, sample, reference, rating, "policy_sample") rows of a Grow step's samples.

  Each sample is rated by `rater` (a `rewards.Reward`; chrF if None) against its
  source's reference row in the grown dataset.
  """
  from rest_jax import rewards  # pylint: disable=g-import-not-at-top
  from rest_jax.data import grown  # pylint: disable=g-import-not-at-top (imports TF)

  manifest = grown.load_manifest(grown_dir)
  if manifest is None:
    raise FileNotFoundError(f"{grown_dir}: no {grown.MANIFEST}; not a finished Grow step")
  texts = grown.read_texts(grown.shard_paths(grown_dir, manifest))
  rater = rater or rewards.get("chrf")
  references = {int(i): t for i, t, r in zip(texts["source_id"], texts["targets"],
                                             texts["is_reference"]) if r}
  rows = []
  for source_id, source, sample, is_reference in zip(
      texts["source_id"], texts["inputs"], texts["targets"], texts["is_reference"]):
    if is_reference:
      continue
    if int(source_id) not in references and rater.needs_reference:
      raise ValueError(f"{grown_dir}: source_id {int(source_id)} has no reference row, which"
                       f" rater {rater.name} reads (grow.include_references was False)")
    rows.append((source, sample, references.get(int(source_id), "")))
    if max_rows and len(rows) == max_rows:
      break
  if not rows:
    raise ValueError(f"{grown_dir}: no policy samples to rate")
  scores = rater([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
  return [(s, h, r, round(float(v), 4), "policy_sample") for (s, h, r), v in zip(rows, scores)]


def build_policy_ratings_file(*, grown_dir: str, output_path: str, rater=None,
                              max_rows: int | None = None) -> str:
  """Writes `build_policy_ratings` as a ratings TSV (kind `policy_sample`)."""
  return write_ratings(output_path, build_policy_ratings(grown_dir, rater, max_rows))
