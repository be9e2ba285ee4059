"""The demo corpus and its seqio task."""

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


def test_noun_phrases_agree_in_gender_number_and_case():
  import random

  rng = random.Random(0)
  checked = 0
  for _ in range(400):
    en, de, phrases = demo_corpus.generate_pair(rng)
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
