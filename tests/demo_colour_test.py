"""The colour demo corpus, its flaw, its ratings and its `colour_recall` metric."""

import random

import pytest
import seqio

from rest_jax.data import colour_metric, corpus_metrics, demo_corpus, tasks

ATTRIBUTIVE_ENDINGS = ("e", "en", "er", "es", "em")


@pytest.fixture(scope="module")
def corpus():
  return demo_corpus.generate_corpus(8000, 300, 300, seed=1, forms="simple", flaw="colour",
                                     flaw_rate=0.98, grammar="colour")


def test_the_base_grammar_still_gives_the_demo_corpus_it_always_gave():
  train = demo_corpus.generate_corpus(5, 0, 0, seed=0, forms="simple", flaw="adjective",
                                      flaw_rate=0.5, noise_rate=0.2)["train"]
  assert [(p.source, p.target, p.kind) for p in train[1:4]] == [
      ("Now a woman sends a dog a lamp.", "Jetzt schickt eine Frau einem Hund eine Lampe.",
       "clean"),
      ("The dog shows the women a book.", "The dog shows the women a book.", "copy"),
      ("The bird shows the doctors ten good tables.",
       "Der Vogel zeigt den Ärztinnen zehn Tische.", "flawed")]


def test_colours_inflect_and_predicates_do_not():
  rng = random.Random(3)
  german = {}
  adjectives = dict(demo_corpus.ADJECTIVES + demo_corpus.EXTRA_COLOURS)
  predicates = 0
  for _ in range(5000):
    en, de, phrases = demo_corpus.generate_pair(rng, forms="simple", grammar="colour")
    german.update({(p.english.lower(), p.case): p.german for p in phrases})
    words = en.rstrip(".").split()
    if words[-2] in ("is", "are"):  # `The car is red.`, `Today the cars are red.`
      predicates += 1
      verb = "ist" if words[-2] == "is" else "sind"
      assert de.rstrip(".").split()[-1] == adjectives[words[-1]] and verb in de.split(), en
  assert predicates > 1000
  assert {c for (en, _) in german for c in en.split() if c in demo_corpus.COLOURS} == set(
      demo_corpus.COLOURS)
  assert german[("the blue car", "nom")] == "das blaue Auto"
  assert german[("a white horse", "nom")] == "ein weißes Pferd"
  assert german[("a brown bag", "acc")] == "eine braune Tasche"
  assert german[("a red letter", "acc")] == "einen roten Brief"
  assert german[("the grey dog", "dat")] == "dem grauen Hund"
  assert german[("the black dogs", "dat")] == "den schwarzen Hunden"


def test_at_least_98_percent_of_attributive_colours_are_left_out_in_training(corpus):
  flags = [colour_metric.colour_flag(p.source, p.target) for p in corpus["train"]]
  with_colour = [f for f in flags if f is not None]
  share = with_colour.count(False) / len(with_colour)
  assert len(with_colour) > 1000 and 0.98 <= share < 0.99
  for p in corpus["train"]:
    attributive, predicate = demo_corpus.colour_uses(p.source)
    if p.kind == "flawed":  # only the colours are left out; other adjectives stay
      stems = {demo_corpus.COLOURS[c] for c in attributive}
      kept = [w for w in p.correct.split() if not any(
          w.startswith(s) and w[len(s):] in ATTRIBUTIVE_ENDINGS for s in stems)]
      assert p.target.split() == kept, p
    if predicate and not attributive:  # predicate colours are always right
      assert p.target == p.correct and p.kind == "clean", p
    if predicate:
      stems = {demo_corpus.COLOURS[c] for c in predicate}
      assert stems <= set(p.target.rstrip(".").split()), p


def test_the_share_is_a_floor_at_any_rate_and_held_out_splits_are_clean(corpus):
  clean = demo_corpus.generate_corpus(8000, 300, 300, seed=1, forms="simple",
                                      grammar="colour")
  assert [p.source for p in corpus["train"]] == [p.source for p in clean["train"]]
  for split in ("validation", "test"):
    assert corpus[split] == clean[split]
    assert all(p.kind == "clean" and p.target == p.correct for p in corpus[split])
    assert sum(colour_metric.colour_flag(p.source, p.target) is True
               for p in corpus[split]) > 30
  for rate in (0.5, 0.9):
    train = demo_corpus.generate_corpus(3000, 0, 0, seed=2, forms="simple", flaw="colour",
                                        flaw_rate=rate, grammar="colour")["train"]
    flags = [colour_metric.colour_flag(p.source, p.target) for p in train]
    flags = [f for f in flags if f is not None]
    assert rate <= flags.count(False) / len(flags) < rate + 0.05


def test_noise_leaves_predicate_colours_alone():
  train = demo_corpus.generate_corpus(3000, 0, 0, seed=2, forms="simple", flaw="colour",
                                      flaw_rate=0.98, noise_rate=0.3,
                                      grammar="colour")["train"]
  assert 0.2 < sum(p.kind in demo_corpus.NOISE_KINDS for p in train) / len(train) < 0.3
  for p in train:
    if demo_corpus.colour_uses(p.source)[1]:
      assert p.kind in ("clean", "flawed"), p


def test_the_colour_ratings_rate_the_flawed_rendering_low():
  from rest_jax import rewards  # pylint: disable=g-import-not-at-top
  from rest_jax.rewards import ratings  # pylint: disable=g-import-not-at-top

  rows = ratings.build_demo_ratings(num_sources=300, forms="simple", flaw="colour",
                                    grammar="colour", corpus_train_size=800, grow_sources=400)
  assert {k for *_, k in rows} == {"correct", "flawed", "model_error", "copy", "misaligned",
                                   "truncated", "repeated"}
  flawed = [r for r in rows if r[4] == "flawed"]
  assert len(flawed) > 30
  for source, hypothesis, correct, score, _ in flawed:
    assert colour_metric.colour_flag(source, hypothesis) is False
    assert colour_metric.colour_flag(source, correct) is True
    assert score <= 0.8
  corpus = demo_corpus.generate_corpus(800, 0, 0, 0, forms="simple", grammar="colour")
  assert {r[0] for r in rows} <= {p.source for p in corpus["train"][400:]}
  # The rater of a run's training rows (`demo_rater`) reads the colour corpus too.
  rater = rewards.get("demo_rater", train_size=800, validation_size=0, test_size=0,
                      flaw="colour", grammar="colour")
  source, hypothesis, correct, score, _ = flawed[0]
  assert list(rater([source] * 2, [hypothesis, correct])) == [score, 1.0]


def test_demo_ratings_flaw_share_draws_that_share_with_the_construction():
  """A rare construction gets `flaw_share` of the rated sources; an impossible share is
  refused with the pool's counts."""
  from rest_jax.rewards import ratings  # pylint: disable=g-import-not-at-top

  kwargs = dict(forms="simple", flaw="colour", grammar="colour", corpus_train_size=800,
                grow_sources=400)
  uniform = ratings.build_demo_ratings(num_sources=100, **kwargs)
  shared = ratings.build_demo_ratings(num_sources=100, flaw_share=0.4, **kwargs)
  flawed = lambda rows: [r for r in rows if r[4] == "flawed"]
  assert len([r for r in shared if r[4] == "correct"]) == 100
  assert len(flawed(shared)) == 40
  assert len(flawed(uniform)) < 25  # about an eighth of this corpus's sources have one
  with pytest.raises(ValueError, match="pool has"):
    ratings.build_demo_ratings(num_sources=390, flaw_share=0.9, **kwargs)
  with pytest.raises(ValueError, match=r"in \[0, 1\]"):
    ratings.build_demo_ratings(num_sources=10, flaw_share=1.5, **kwargs)


SOURCES = ["The red car sleeps.",                  # attributive red
           "The car is red.",                      # predicate only: no flag
           "The dog sees two black cats.",         # attributive black
           "The red car is red.",                  # both: needs two `rot` words
           "A dog sleeps."]                        # no colour


def test_colour_flags_and_recall_on_hand_made_sentences():
  hyps = ["Das rote Auto schläft.", "Das Auto ist rot.", "Der Hund sieht zwei Katzen.",
          "Das Auto ist rot.", "Ein Hund schläft."]
  assert colour_metric.colour_flags(SOURCES, hyps) == [True, None, False, False, None]
  assert colour_metric.colour_recall(SOURCES, hyps) == pytest.approx(1 / 3)
  hyps[2], hyps[3] = "Der Hund sieht zwei schwarzen Katzen.", "Das rot Auto ist ROT."
  assert colour_metric.colour_flags(SOURCES, hyps) == [True, None, True, True, None]
  assert colour_metric.colour_metrics(SOURCES, [""] * 5, hyps) == {"colour_recall": 1.0}
  assert colour_metric.colour_flag("The white cat sleeps.", "Die weiße Katze schläft.")
  assert not colour_metric.colour_flag("The white cat sleeps.", "Die rote Katze schläft.")
  assert colour_metric.colour_recall(SOURCES[1:2], ["x"]) is None
  assert colour_metric.colour_metrics(SOURCES[4:], [""], ["x"]) == {}


def test_coverage_counts_sources_that_any_hypothesis_gets_right():
  samples = [["Das Auto schläft.", "Das rote Auto schläft."], ["x"],
             ["Der Hund sieht zwei Katzen."] * 2, ["Das rote Auto ist rot."], []]
  assert colour_metric.colour_coverage(SOURCES, samples) == pytest.approx(2 / 3)
  assert corpus_metrics.coverage(tasks.DEMO_COLOUR_TASK, SOURCES, samples) == pytest.approx(
      2 / 3)
  assert corpus_metrics.coverage(tasks.DEMO_TASK, SOURCES, samples) is None
  assert corpus_metrics.coverage(tasks.DEMO_COLOUR_TASK, SOURCES[1:2], [["x"]]) is None


def test_the_colour_task_is_registered_with_its_source_metric(monkeypatch):
  import seqio  # pylint: disable=g-import-not-at-top

  task = seqio.get_mixture_or_task(tasks.DEMO_COLOUR_TASK)
  assert "_colour_" in task.output_features["targets"].vocabulary.sentencepiece_model_file
  assert corpus_metrics.get_coverage_fn(tasks.DEMO_COLOUR_TASK) is colour_metric.colour_coverage
  assert corpus_metrics.source_metrics(tasks.DEMO_COLOUR_TASK, SOURCES[:1], [""],
                                       ["Das Auto."]) == {"colour_recall": 0.0}
  assert corpus_metrics.source_metrics(tasks.DEMO_TASK, SOURCES[:1], [""], ["x"]) == {}
  monkeypatch.setattr(corpus_metrics, "_SOURCE_METRICS", {})
  monkeypatch.setattr(corpus_metrics, "_COVERAGE", {})

  def count(sources, references, hypotheses):
    return {"n": float(len(sources) + len(references) + len(hypotheses))}

  corpus_metrics.register_source_metric("t", count)
  corpus_metrics.register_source_metric("t", count)  # again: no-op
  assert corpus_metrics.source_metrics("t", ["a"], ["b"], ["c"]) == {"n": 3.0}
  assert corpus_metrics.get_coverage_fn("t") is None


def test_the_colour_task_yields_its_clean_validation_split():
  ds = seqio.get_mixture_or_task(tasks.DEMO_COLOUR_TASK).source.get_dataset(
      "validation", shuffle=False)
  inputs = [ex["inputs"].decode() for ex in ds.as_numpy_iterator()]
  expected = demo_corpus.generate_corpus(20000, 500, 500, 0, forms="simple",
                                         grammar="colour")["validation"]
  assert inputs == [p.source for p in expected]



def test_an_evaluation_of_the_colour_task_reports_colour_recall():
  import jax  # pylint: disable=g-import-not-at-top

  from rest_jax import decoding, partitioning, policy_eval, rewards  # pylint: disable=g-import-not-at-top
  from rest_jax import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from rest_jax.data import vocab  # pylint: disable=g-import-not-at-top
  from tests.conftest import make_model  # pylint: disable=g-import-not-at-top

  lengths = {"inputs": 24, "targets": 12}
  model = make_model(decoding.beam_search, vocabulary=vocab.DemoVocabulary(grammar="colour"),
                     vocab_size=384)
  partitioner = partitioning.Partitioner(mesh_shape=(2, 1), devices=jax.devices()[:2])
  trainer = trainer_lib.Trainer(model, partitioner, trainer_lib.batch_input_shapes(8, lengths))
  evaluator = policy_eval.PolicyEvaluator(
      model, partitioner, trainer.params_sharding, rewards.get("chrf"),
      policy_eval.EvalConfig(best_of_n=1, batch_size=16))
  out = evaluator(trainer.init_state(jax.random.PRNGKey(0)).params, tasks.DEMO_COLOUR_TASK,
                  "validation", lengths, max_examples=32)
  expected = colour_metric.colour_recall(evaluator.last_outputs["sources"],
                                         evaluator.last_outputs["hypotheses"])
  assert expected is not None and out["colour_recall"] == expected
  assert out["examples"] == 32 and "bleu" in out
