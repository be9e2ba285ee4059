"""The embedded demo corpus: a synthetic English -> German-like language pair.

Nothing here is real data. Sentences come from a small grammar over a real-word
lexicon, and the German side follows German rules that a translation model must
learn rather than copy: grammatical gender, number and case agreement of
articles, adjectives and nouns (including dative plurals), verb-second order
after a fronted adverb, verb-final order in subordinate and relative clauses,
relative pronouns that agree with their antecedent, and verbs that take a dative
object. A tiny model trained for a few minutes gets much of it right but not
all, which leaves room for ReST to help.

The "colour" grammar (`GRAMMARS`) adds six colour adjectives and predicate
sentences (`the car is red` -> `das Auto ist rot`, an uninflected adjective); the
"base" grammar is the demo's corpus as it always was.

The same seed gives the same text. Splits are disjoint: every distinct English
sentence is assigned to one split by a hash of its text.
"""

import dataclasses
import hashlib
import random
import re
from typing import Dict, List, Tuple

# Nouns: English singular, English plural, German singular, German plural, gender.
NOUNS = [
    ("man", "men", "Mann", "Männer", "m"),
    ("woman", "women", "Frau", "Frauen", "f"),
    ("child", "children", "Kind", "Kinder", "n"),
    ("dog", "dogs", "Hund", "Hunde", "m"),
    ("cat", "cats", "Katze", "Katzen", "f"),
    ("teacher", "teachers", "Lehrer", "Lehrer", "m"),
    ("girl", "girls", "Mädchen", "Mädchen", "n"),
    ("friend", "friends", "Freund", "Freunde", "m"),
    ("bird", "birds", "Vogel", "Vögel", "m"),
    ("doctor", "doctors", "Ärztin", "Ärztinnen", "f"),
    ("farmer", "farmers", "Bauer", "Bauern", "m"),
    ("horse", "horses", "Pferd", "Pferde", "n"),
]
THINGS = [
    ("book", "books", "Buch", "Bücher", "n"),
    ("apple", "apples", "Apfel", "Äpfel", "m"),
    ("letter", "letters", "Brief", "Briefe", "m"),
    ("flower", "flowers", "Blume", "Blumen", "f"),
    ("car", "cars", "Auto", "Autos", "n"),
    ("table", "tables", "Tisch", "Tische", "m"),
    ("bag", "bags", "Tasche", "Taschen", "f"),
    ("picture", "pictures", "Bild", "Bilder", "n"),
    ("key", "keys", "Schlüssel", "Schlüssel", "m"),
    ("lamp", "lamps", "Lampe", "Lampen", "f"),
]
ADJECTIVES = [
    ("big", "groß"), ("small", "klein"), ("old", "alt"), ("new", "neu"), ("red", "rot"),
    ("good", "gut"), ("young", "jung"), ("beautiful", "schön"), ("green", "grün"),
]
# Colour adjectives: English -> German stem (the base lexicon's two, then the colour
# grammar's six). All inflect like the other adjectives (`das blaue Auto`).
COLOURS = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "black": "schwarz",
           "white": "weiß", "brown": "braun", "grey": "grau"}
EXTRA_COLOURS = [(en, de) for en, de in COLOURS.items() if en not in ("red", "green")]
PLAIN_ADJECTIVES = [a for a in ADJECTIVES if a[0] not in COLOURS]
# Nouns the colour grammar gives a colour: animals (below) and things; never people.
ANIMALS = ("dog", "cat", "bird", "horse")
GRAMMARS = ("base", "colour")
PREDICATE_SHARE = 0.3  # of the colour grammar's clauses: `X is ADJ`
COLOUR_FLAW_RATE = 0.98  # colour task default: least share of attributive colours left out
NUMBERS = [("two", "zwei"), ("three", "drei"), ("four", "vier"), ("five", "fünf"),
           ("six", "sechs"), ("seven", "sieben"), ("ten", "zehn")]
# Transitive verbs: English 3sg, English plural, German 3sg, German 3pl, object case.
TRANSITIVE = [
    ("sees", "see", "sieht", "sehen", "acc"), ("buys", "buy", "kauft", "kaufen", "acc"),
    ("finds", "find", "findet", "finden", "acc"), ("has", "have", "hat", "haben", "acc"),
    ("likes", "like", "mag", "mögen", "acc"), ("helps", "help", "hilft", "helfen", "dat"),
    ("follows", "follow", "folgt", "folgen", "dat"), ("thanks", "thank", "dankt", "danken", "dat"),
]
GIVING = [("gives", "give", "gibt", "geben"), ("shows", "show", "zeigt", "zeigen"),
          ("sends", "send", "schickt", "schicken")]
INTRANSITIVE = [("sleeps", "sleep", "schläft", "schlafen"), ("laughs", "laugh", "lacht", "lachen"),
                ("waits", "wait", "wartet", "warten"), ("sings", "sing", "singt", "singen")]
ADVERBS = [("today", "heute"), ("tomorrow", "morgen"), ("often", "oft"), ("now", "jetzt")]
CONJUNCTIONS = [("because", "weil"), ("although", "obwohl"), ("when", "wenn")]

DEFINITE = {
    "nom": {"m": "der", "f": "die", "n": "das", "pl": "die"},
    "acc": {"m": "den", "f": "die", "n": "das", "pl": "die"},
    "dat": {"m": "dem", "f": "der", "n": "dem", "pl": "den"},
}
INDEFINITE = {
    "nom": {"m": "ein", "f": "eine", "n": "ein"},
    "acc": {"m": "einen", "f": "eine", "n": "ein"},
    "dat": {"m": "einem", "f": "einer", "n": "einem"},
}


def adjective_ending(article: str, case: str, gender: str) -> str:
  """German adjective ending after `article` in {'def', 'indef', 'none'} (plural uses 'pl')."""
  if gender == "pl":
    if article == "def" or case == "dat":
      return "en"
    return "e"  # strong plural after a number, nom/acc
  if case == "dat":
    return "en"
  if article == "def":
    return "en" if (case == "acc" and gender == "m") else "e"
  # Mixed declension after ein/eine.
  if case == "acc" and gender == "m":
    return "en"
  return {"m": "er", "f": "e", "n": "es"}[gender]


def dative_plural(noun: str) -> str:
  return noun if noun.endswith(("n", "s")) else noun + "n"


@dataclasses.dataclass(frozen=True)
class NounPhrase:
  english: str
  german: str
  case: str
  gender: str     # m, f, n or pl
  article: str    # def, indef or none
  plural: bool
  adjective: bool = False
  colour: str = ""  # its attributive colour adjective (English), if any


# The wrong rules a training split can follow, and the noun phrases each one touches.
CONSTRUCTIONS = {
    "dative": lambda p: p.case == "dat",
    "adjective": lambda p: p.adjective,
    "colour": lambda p: bool(p.colour),
}
FLAWS = tuple(CONSTRUCTIONS)


def _adjectives(grammar: str, noun: str, colours: bool = True) -> List[Tuple[str, str]]:
  """The adjectives a noun phrase of `noun` (English singular) may draw from."""
  if grammar == "base":
    return ADJECTIVES
  if colours and (noun in ANIMALS or noun in {t[0] for t in THINGS}):
    return ADJECTIVES + EXTRA_COLOURS
  return PLAIN_ADJECTIVES


def _noun_phrase(rng: random.Random, case: str, lexicon, flaw: str | None = None,
                 grammar: str = "base", colours: bool = True) -> NounPhrase:
  """A noun phrase in `case`, maybe rendered with a systematic flaw (`FLAWS`).

  "dative" renders a dative noun phrase in the accusative; "adjective" leaves its
  adjective untranslated-out (omitted); "colour" leaves out its adjective only when
  that is a colour. The random draws do not depend on `flaw`, so a flawed rendering
  of a sentence has the same words as its correct one. `colours=False` draws no
  colour adjective (colour grammar only).
  """
  en_sg, en_pl, de_sg, de_pl, gender = rng.choice(lexicon)
  true_case = case
  case = "acc" if flaw == "dative" and case == "dat" else case
  plural = rng.random() < 0.3
  article = rng.choice(["def", "def", "none"] if plural else ["def", "indef"])
  adjective = rng.choice(_adjectives(grammar, en_sg, colours)) if rng.random() < 0.4 else None
  colour = adjective[0] if adjective and adjective[0] in COLOURS else ""
  g = "pl" if plural else gender
  en_words, de_words = [], []
  if article == "def":
    en_words.append("the")
    de_words.append(DEFINITE[case][g])
  elif article == "indef":
    en_words.append("a")
    de_words.append(INDEFINITE[case][gender])
  else:
    number = rng.choice(NUMBERS)
    en_words.append(number[0])
    de_words.append(number[1])
  if adjective:
    en_words.append(adjective[0])
    if flaw != "adjective" and not (flaw == "colour" and colour):
      de_words.append(adjective[1] + adjective_ending(article, case, g))
  en_words.append(en_pl if plural else en_sg)
  noun = de_pl if plural else de_sg
  de_words.append(dative_plural(noun) if plural and case == "dat" else noun)
  if article == "indef" and en_words[1][0] in "aeiou":
    en_words[0] = "an"
  return NounPhrase(" ".join(en_words), " ".join(de_words), true_case, g, article, plural,
                    adjective is not None, colour)


@dataclasses.dataclass
class Clause:
  """A clause as its parts, so both word orders can be produced."""

  subject: NounPhrase
  verb_en: str
  verb_de: str
  objects_de: List[str]
  objects_en: List[str]
  phrases: List[NounPhrase]

  def english(self) -> str:
    return " ".join([self.subject.english, self.verb_en, *self.objects_en])

  def german_main(self) -> str:
    return " ".join([self.subject.german, self.verb_de, *self.objects_de])

  def german_final(self) -> str:
    return " ".join([self.subject.german, *self.objects_de, self.verb_de])


def _clause(rng: random.Random, subject=None, flaw: str | None = None,
            grammar: str = "base") -> Clause:
  if grammar == "colour" and rng.random() < PREDICATE_SHARE:
    return _predicate(rng, subject, flaw)
  subject = subject or _noun_phrase(rng, "nom", NOUNS, flaw, grammar)
  i = 1 if subject.plural else 0
  kind = rng.random()
  if kind < 0.45:
    verb = rng.choice(TRANSITIVE)
    obj = _noun_phrase(rng, verb[4], NOUNS + THINGS if verb[4] == "acc" else NOUNS, flaw,
                       grammar)
    return Clause(subject, verb[i], verb[2 + i], [obj.german], [obj.english], [subject, obj])
  if kind < 0.75:
    verb = rng.choice(GIVING)
    receiver = _noun_phrase(rng, "dat", NOUNS, flaw, grammar)
    thing = _noun_phrase(rng, "acc", THINGS, flaw, grammar)
    return Clause(subject, verb[i], verb[2 + i], [receiver.german, thing.german],
                  [receiver.english, thing.english], [subject, receiver, thing])
  verb = rng.choice(INTRANSITIVE)
  return Clause(subject, verb[i], verb[2 + i], [], [], [subject])


def _predicate(rng: random.Random, subject: NounPhrase | None, flaw: str | None) -> Clause:
  """`the car is red` -> `das Auto ist rot`: the predicate adjective is not inflected.

  Only animals and things are given a colour: a given `subject` (a relative clause's
  antecedent, a person or an animal) takes no colour predicate.
  """
  adjectives = PLAIN_ADJECTIVES if subject else ADJECTIVES + EXTRA_COLOURS
  adjective = rng.choice(adjectives)
  is_colour = adjective[0] in COLOURS
  if subject is None:
    animals = [n for n in NOUNS if n[0] in ANIMALS]
    lexicon = animals + THINGS if is_colour else NOUNS + THINGS
    subject = _noun_phrase(rng, "nom", lexicon, flaw, "colour", colours=not is_colour)
  i = 1 if subject.plural else 0
  return Clause(subject, ("is", "are")[i], ("ist", "sind")[i], [adjective[1]], [adjective[0]],
                [subject])


def _capitalize(text: str) -> str:
  return text[0].upper() + text[1:]


FORMS = ("full", "simple")


def generate_pair(rng: random.Random, flaw: str | None = None, forms: str = "full",
                  grammar: str = "base") -> Tuple[str, str, List[NounPhrase]]:
  """One (english, german, noun phrases) triple.

  Args:
    rng: the generator's random state.
    flaw: render the sentence with a systematic flaw: "dative" puts every dative
      noun phrase in the accusative (`den Mann` for `dem Mann`), "adjective" leaves
      every adjective out (`der Mann` for `der alte Mann`), "colour" every
      attributive colour adjective (`das Auto` for `das rote Auto`; a predicate
      colour, `das Auto ist rot`, stays).
    forms: "full" (main, fronted-adverb, subordinate and relative clauses) or
      "simple" (main and fronted-adverb clauses only: shorter sentences).
    grammar: "base" (the demo's corpus) or "colour" (`GRAMMARS`: six more colours,
      given to animals and things only, and predicate clauses).

  Returns:
    The English source, its German rendering and the noun phrases (a predicate
    adjective is not among them).
  """
  if forms not in FORMS:
    raise ValueError(f"forms={forms!r}: use one of {FORMS}")
  if grammar not in GRAMMARS:
    raise ValueError(f"grammar={grammar!r}: use one of {GRAMMARS}")
  form = rng.random()
  if forms == "simple":
    form *= 0.55  # the main and fronted-adverb forms, in their usual proportion
  if form < 0.35:
    clause = _clause(rng, flaw=flaw, grammar=grammar)
    en, de, phrases = clause.english(), clause.german_main(), clause.phrases
  elif form < 0.55:
    # A fronted adverb puts the German verb second, before the subject.
    adverb = rng.choice(ADVERBS)
    clause = _clause(rng, flaw=flaw, grammar=grammar)
    en = f"{adverb[0]} {clause.english()}"
    de = " ".join([adverb[1], clause.verb_de, clause.subject.german, *clause.objects_de])
    phrases = clause.phrases
  elif form < 0.8:
    # Subordinate clause: the German verb goes to the end, after a comma.
    main, sub = _clause(rng, flaw=flaw, grammar=grammar), _clause(rng, flaw=flaw,
                                                                 grammar=grammar)
    conj = rng.choice(CONJUNCTIONS)
    en = f"{main.english()} {conj[0]} {sub.english()}"
    de = f"{main.german_main()}, {conj[1]} {sub.german_final()}"
    phrases = main.phrases + sub.phrases
  else:
    # Subject relative clause: the pronoun agrees with the antecedent, verb-final.
    subject = _noun_phrase(rng, "nom", NOUNS, flaw, grammar)
    relative = _clause(rng, dataclasses.replace(subject), flaw, grammar)
    main = _clause(rng, subject, flaw, grammar)
    pronoun_en = "who"
    pronoun_de = DEFINITE["nom"][subject.gender]
    rel_de = " ".join([pronoun_de, *relative.objects_de, relative.verb_de])
    rel_en = " ".join([pronoun_en, relative.verb_en, *relative.objects_en])
    en = " ".join([subject.english, rel_en, main.verb_en, *main.objects_en])
    de = " ".join([f"{subject.german},", f"{rel_de},", main.verb_de, *main.objects_de])
    phrases = main.phrases + relative.phrases[1:]
  return _capitalize(en) + ".", _capitalize(de) + ".", phrases


SPLITS = ("train", "validation", "test")


def _split_of(english: str, held_out_percent: int) -> str:
  bucket = int(hashlib.sha1(english.encode()).hexdigest()[:8], 16) % 100
  if bucket < held_out_percent:
    return "validation"
  if bucket < 2 * held_out_percent:
    return "test"
  return "train"


NOISE_KINDS = ("copy", "misaligned", "truncated", "repeated")


@dataclasses.dataclass(frozen=True)
class DemoPair:
  """A pair of the demo corpus, with its correct target and what was done to it.

  Attributes:
    source: English.
    target: what the split holds (for training pairs maybe flawed or noisy).
    correct: the correct German (what the generator, as a rater, knows).
    kind: "clean", "flawed" (rendered with the corpus's systematic flaw) or a noise kind.
  """

  source: str
  target: str
  correct: str
  kind: str = "clean"


def _noisy(pair: DemoPair, kind: str, rng: random.Random, other: str) -> DemoPair:
  words = pair.target.split()
  if kind == "copy":  # untranslated
    target = pair.source
  elif kind == "misaligned":  # another sentence's translation
    target = other
  elif kind == "truncated":
    target = " ".join(words[: max(1, len(words) // 2)])
  else:  # a phrase of two or three words said twice
    n = min(len(words), rng.choice((2, 3)))
    start = rng.randrange(len(words) - n + 1)
    target = " ".join(words[: start + n] + words[start:start + n] + words[start + n:])
  return dataclasses.replace(pair, target=target, kind=kind)


def colour_uses(english: str) -> Tuple[List[str], List[str]]:
  """A demo source's colour adjectives (English), in order: (attributive, predicate).

  In the demo grammar a colour right after `is` or `are` is a predicate; any other
  stands before its noun.
  """
  words = re.findall(r"[a-z]+", english.lower())
  attributive, predicate = [], []
  for i, word in enumerate(words):
    if word in COLOURS:
      (predicate if i and words[i - 1] in ("is", "are") else attributive).append(word)
  return attributive, predicate


def _flawed(coin: float, rate: float, counts: List[int], floor: bool) -> bool:
  """Whether a training pair with the flaw's construction follows the wrong rule.

  Args:
    coin: a uniform draw of the flaws' own random stream.
    rate: the flaw rate.
    counts: [training pairs with the construction so far, those left correct];
      updated.
    floor: hold the share of flawed pairs at `rate` or above at every point (a
      correct pair only when the coin says so and the budget of 1 - rate allows).
  """
  counts[0] += 1
  correct = coin >= rate and (not floor or counts[1] + 1 <= (1.0 - rate) * counts[0] + 1e-9)
  counts[1] += correct
  return not correct


def generate_corpus(
    train_size: int = 20000,
    validation_size: int = 500,
    test_size: int = 500,
    seed: int = 0,
    forms: str = "full",
    flaw_rate: float = 0.0,
    noise_rate: float = 0.0,
    flaw: str = "dative",
    grammar: str = "base",
) -> Dict[str, List[DemoPair]]:
  """Disjoint train/validation/test lists of pairs; the training split may be flawed.

  The sentences do not depend on `flaw`, `flaw_rate` or `noise_rate` (their choices
  use random streams of their own), and validation and test are always clean.

  Args:
    train_size: pairs in the train split.
    validation_size: pairs in the validation split.
    test_size: pairs in the test split.
    seed: the same seed gives the same text.
    forms: sentence forms, see `generate_pair`.
    flaw_rate: share of the training pairs that have the flawed construction whose
      target follows the wrong rule consistently (with 0.5 the data's distribution
      for that construction is bimodal). For "colour" it is a floor: the measured
      share is `flaw_rate` or more (`COLOUR_FLAW_RATE`, 0.98, is the colour task's).
    noise_rate: share of training pairs replaced by web-like noise: an untranslated
      copy of the source, another sentence's translation, a target cut in half, or
      a phrase repeated (`NOISE_KINDS`, in equal parts). With flaw "colour", a pair
      with a predicate colour is never noisy, and a misaligned target is another
      pair's training target (so noise teaches no attributive colour).
    flaw: the wrong rule (`FLAWS`): "dative" puts dative noun phrases in the
      accusative; "adjective" leaves adjectives out (an omission a quality model
      trained on ratings learns to see from the source alone); "colour" leaves
      attributive colour adjectives out while predicate colours stay correct, so
      the training data teaches the words but (almost) never their attributive use.
    grammar: "base" or "colour" (`GRAMMARS`, see `generate_pair`).

  Returns:
    A dict from split name to its list of `DemoPair`s.
  """
  if flaw not in FLAWS:
    raise ValueError(f"flaw={flaw!r}: use one of {FLAWS}")
  if not (0.0 <= flaw_rate <= 1.0 and 0.0 <= noise_rate <= 1.0):
    raise ValueError(f"flaw_rate={flaw_rate} and noise_rate={noise_rate} must be in [0, 1]")
  wanted = {"train": train_size, "validation": validation_size, "test": test_size}
  held_out = 10  # percent of distinct sentences routed to each held-out split
  rng = random.Random(seed)
  flaws = random.Random(f"{seed}/flaws")
  counts = [0, 0]
  out = {name: [] for name in SPLITS}
  seen = set()
  attempts = 0
  while any(len(out[s]) < wanted[s] for s in SPLITS):
    attempts += 1
    if attempts > 50 * sum(wanted.values()) + 10000:
      raise RuntimeError(f"demo grammar cannot produce {wanted} distinct sentences")
    state = rng.getstate()
    en, de, phrases = generate_pair(rng, forms=forms, grammar=grammar)
    if en in seen:
      continue
    seen.add(en)
    split = _split_of(en, held_out)
    if len(out[split]) >= wanted[split]:
      continue
    pair = DemoPair(en, de, de)
    if (split == "train" and any(CONSTRUCTIONS[flaw](p) for p in phrases)
        and _flawed(flaws.random(), flaw_rate, counts, floor=flaw == "colour")):
      replay = random.Random()
      replay.setstate(state)
      pair = dataclasses.replace(pair, target=generate_pair(replay, flaw, forms, grammar)[1],
                                 kind="flawed")
    out[split].append(pair)
  _add_noise(out["train"], noise_rate, random.Random(f"{seed}/noise"), flaw)
  return out


def _add_noise(train: List[DemoPair], noise_rate: float, noise: random.Random,
               flaw: str) -> None:
  """Replaces a `noise_rate` share of `train` by noise, in place (`generate_corpus`)."""
  targets = [p.target for p in train]
  for i, pair in enumerate(train):
    if noise.random() < noise_rate:
      k = noise.randrange(len(train))
      other = targets[k] if flaw == "colour" else train[k].correct
      noisy = _noisy(pair, noise.choice(NOISE_KINDS), noise, other)
      if flaw != "colour" or not colour_uses(pair.source)[1]:
        train[i] = noisy


def generate_splits(
    train_size: int = 20000,
    validation_size: int = 500,
    test_size: int = 500,
    seed: int = 0,
    **corpus_options,
) -> Dict[str, List[Tuple[str, str]]]:
  """Disjoint train/validation/test lists of (english, german) pairs (`generate_corpus`).

  Args:
    train_size: pairs in the train split.
    validation_size: pairs in the validation split.
    test_size: pairs in the test split.
    seed: the same seed gives the same text.
    **corpus_options: `forms`, `flaw_rate`, `noise_rate`, `flaw`, `grammar` of
      `generate_corpus`.

  Returns:
    A dict from split name to its list of pairs.
  """
  corpus = generate_corpus(train_size, validation_size, test_size, seed, **corpus_options)
  return {split: [(p.source, p.target) for p in pairs] for split, pairs in corpus.items()}
