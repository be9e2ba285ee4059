"""The demo corpus and its seqio task."""

import pytest
import seqio

from rest_jax.data import demo_corpus, tasks


def test_generator_is_deterministic_and_splits_are_disjoint():
  a = demo_corpus.generate_splits(300, 50, 50, seed=4)
  b = demo_corpus.generate_splits(300, 50, 50, seed=4)
  assert a == b
  assert a != demo_corpus.generate_splits(300, 50, 50, seed=5)
  sources = {s: {en for en, _ in a[s]} for s in demo_corpus.SPLITS}
  assert not sources["train"] & sources["test"] and not sources["train"] & sources["validation"]
  assert [len(a[s]) for s in demo_corpus.SPLITS] == [300, 50, 50]


# Independent tables of German agreement, to check the generator against.
ARTICLES = {("nom", "m"): "der", ("acc", "m"): "den", ("dat", "m"): "dem",
            ("nom", "f"): "die", ("acc", "f"): "die", ("dat", "f"): "der",
            ("nom", "n"): "das", ("acc", "n"): "das", ("dat", "n"): "dem",
            ("nom", "pl"): "die", ("acc", "pl"): "die", ("dat", "pl"): "den"}


@pytest.mark.parametrize("grammar", demo_corpus.GRAMMARS)
def test_noun_phrases_agree_in_gender_number_and_case(grammar):
  import random

  rng = random.Random(0)
  checked = 0
  for _ in range(400):
    en, de, phrases = demo_corpus.generate_pair(rng, grammar=grammar)
    for p in phrases:
      words = p.german.split()
      assert p.german in de.replace(",", "") or p.german[0].upper() + p.german[1:] in de
      if p.article == "def":
        assert words[0] == ARTICLES[(p.case, p.gender)], p
        if len(words) == 3:  # weak adjective: -e only in nom sg and acc f/n sg
          weak_e = p.gender != "pl" and (p.case == "nom" or (p.case == "acc" and p.gender != "m"))
          assert words[1].endswith("e" if weak_e else "en"), p
        checked += 1
      if p.gender == "pl" and p.case == "dat":
        assert words[-1].endswith(("n", "s")), p
  assert checked > 200


def test_demo_task_yields_tokenized_examples_with_eos():
  task = seqio.get_mixture_or_task(tasks.DEMO_TASK)
  ds = task.get_dataset({"inputs": 32, "targets": 32}, split="validation", shuffle=False)
  examples = list(ds.take(3).as_numpy_iterator())
  vocab = task.output_features["targets"].vocabulary
  for ex in examples:
    assert ex["targets"][-1] == 1 and ex["inputs"][-1] == 1
    assert vocab.decode(ex["targets"][:-1].tolist()) == ex["targets_pretokenized"].decode()


def test_flawed_training_split_keeps_held_out_splits_clean():
  import collections

  clean = demo_corpus.generate_corpus(3000, 100, 100, seed=2, forms="simple")
  for flaw in demo_corpus.FLAWS:
    noisy = demo_corpus.generate_corpus(3000, 100, 100, seed=2, forms="simple", flaw=flaw,
                                        flaw_rate=0.5, noise_rate=0.2)
    # The same sentences; validation and test untouched; every pair knows its correct target.
    assert [p.source for p in noisy["train"]] == [p.source for p in clean["train"]]
    assert noisy["validation"] == clean["validation"] and noisy["test"] == clean["test"]
    assert [p.correct for p in noisy["train"]] == [p.target for p in clean["train"]]
    kinds = collections.Counter(p.kind for p in noisy["train"])
    assert set(kinds) == {"clean", "flawed", *demo_corpus.NOISE_KINDS}
    assert 0.17 < sum(kinds[k] for k in demo_corpus.NOISE_KINDS) / 3000 < 0.23
    for p in noisy["train"]:
      if p.kind == "flawed":
        if flaw in ("adjective", "colour"):  # the same sentence with adjectives left out
          assert len(p.target.split()) < len(p.correct.split())
          assert set(p.target.rstrip(".").split()) <= set(p.correct.rstrip(".").split())
        else:  # dative phrases in the accusative (some plurals look alike in both)
          assert len(p.target.split()) == len(p.correct.split())
      elif p.kind == "copy":
        assert p.target == p.source
    flawed = [p for p in noisy["train"] if p.kind == "flawed"]
    assert sum(p.target != p.correct for p in flawed) > 0.8 * len(flawed)
  # About half of the pairs that have the construction follow the wrong rule.
  flawed = demo_corpus.generate_corpus(3000, 0, 0, seed=2, forms="simple", flaw="adjective",
                                       flaw_rate=0.5)
  with_adjective = sum(p.kind == "flawed" for p in demo_corpus.generate_corpus(
      3000, 0, 0, seed=2, forms="simple", flaw="adjective", flaw_rate=1.0)["train"])
  share = sum(p.kind == "flawed" for p in flawed["train"]) / with_adjective
  assert 0.45 < share < 0.55
