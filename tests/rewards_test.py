"""Rewards: known values, the ensemble, bad values, thresholds, and the learned model's ranking."""

import os
import random

import jax
import numpy as np
import pytest

from rest_jax import partitioning, rewards
from rest_jax.rewards import base, members as members_lib, ratings

REF = "Der große Hund sieht die kleine Katze."


@pytest.mark.parametrize("name", ["bleu", "chrf", "chrf++", "ter"])
def test_identical_is_best_and_empty_is_worst(name):
  reward = rewards.get(name, processes=1)
  scores = reward(["src"] * 3, [REF, "Der Hund sieht die Katze.", ""], [REF] * 3)
  assert scores[0] == pytest.approx(reward.range[1])
  assert scores[2] == pytest.approx(reward.range[0])
  assert reward.range[0] < scores[1] < reward.range[1]


def test_known_values_match_sacrebleu():
  import sacrebleu

  hyp, ref = "the cat sat on a mat", "the cat sat on the mat"
  assert rewards.get("chrf")([""], [hyp], [ref])[0] == pytest.approx(
      sacrebleu.sentence_chrf(hyp, [ref]).score / 100)
  assert rewards.get("ter")([""], [hyp], [ref])[0] == pytest.approx(1 - 1 / 6)


def test_parallel_scoring_equals_inline():
  rng = random.Random(0)
  words = REF.split()
  hyps = [" ".join(rng.sample(words, rng.randint(1, len(words)))) for _ in range(1200)]
  inline = rewards.MetricReward("chrf", processes=1)(["s"] * 1200, hyps, [REF] * 1200)
  spread = rewards.MetricReward("chrf", processes=2)(["s"] * 1200, hyps, [REF] * 1200)
  np.testing.assert_allclose(inline, spread)


def test_ensemble_is_a_weighted_mean():
  chrf, bleu = rewards.get("chrf"), rewards.get("bleu")
  ens = rewards.Ensemble([chrf, bleu], [3, 1])
  args = (["s"], ["Der Hund sieht die Katze."], [REF])
  assert ens(*args)[0] == pytest.approx(0.75 * chrf(*args)[0] + 0.25 * bleu(*args)[0])
  assert ens.range == (0.0, 1.0)
  with pytest.raises(ValueError, match="non-negative"):
    rewards.Ensemble([chrf], [-1])


class _Bad(base.Reward):
  name = "bad"

  def __init__(self, mode):
    self.mode = mode

  def score(self, sources, hypotheses, references):
    if self.mode == "nan":
      return np.where(np.array(hypotheses) == "boom", np.nan, 0.5)
    if self.mode == "short":
      return np.zeros(len(hypotheses) - 1)
    if any(h == "boom" for h in hypotheses):
      raise ZeroDivisionError("division by zero")
    return np.zeros(len(hypotheses))


@pytest.mark.parametrize("mode,message", [
    ("nan", r"reward 'bad' gave nan for example 1 \(hypothesis 'boom'"),
    ("short", r"reward 'bad' returned shape \(2,\) for 3 hypotheses"),
    ("raise", r"reward 'bad' failed on example 1 \(hypothesis 'boom'\): ZeroDivisionError"),
])
def test_bad_reward_values_name_the_reward_and_example(mode, message):
  with pytest.raises(rewards.RewardError, match=message):
    _Bad(mode)(["a", "b", "c"], ["ok", "boom", "fine"], ["r", "r", "r"])


def test_unknown_reward_and_mismatched_lengths():
  with pytest.raises(ValueError, match="unknown reward 'comet'.*metricx"):
    rewards.get("comet")
  with pytest.raises(rewards.RewardError, match="must match"):
    rewards.get("chrf")(["a"], ["b", "c"], ["d", "e"])


def test_threshold_schedules():
  rewards.ThresholdSchedule([0.5, 0.6, 0.7]).validate((0.0, 1.0))
  with pytest.raises(ValueError, match="increase strictly"):
    rewards.ThresholdSchedule([0.5, 0.5]).validate((0.0, 1.0))
  with pytest.raises(ValueError, match="outside"):
    rewards.ThresholdSchedule([0.5, 1.2]).validate((0.0, 1.0))
  quantiles = rewards.ThresholdSchedule([0.5, 0.9], quantiles=True)
  quantiles.validate((0.0, 1.0))
  values = np.arange(100) / 100.0
  assert quantiles.resolve(values) == [0.49, 0.89]
  with pytest.raises(ValueError, match="need the grown dataset"):
    quantiles.resolve(None)


def test_ratings_are_graded_corruptions():
  pairs = [("The dog sleeps.", REF)] * 50
  rows = ratings.build_ratings(pairs, corruptions_per_pair=3, max_edits=4, seed=0)
  assert len(rows) == 200
  assert all(r[3] == 1.0 for r in rows[::4])
  corrupted = [r[3] for i, r in enumerate(rows) if i % 4]
  assert max(corrupted) < 1.0 and min(corrupted) < 0.7
  assert any("dem" in r[1].split() or "das" in r[1].split() for r in rows)  # agreement errors


def test_degenerate_suite_tells_a_reference_metric_from_a_gullible_one():
  """The reward model's degenerate validation: every kind, scored beside the correct one."""
  import random

  from rest_jax.data import demo_corpus
  from rest_jax.rewards import learned

  pairs = demo_corpus.generate_splits(12, 0, 0, seed=2)["train"]
  variants = ratings.degenerate_variants(pairs[0][0], pairs[0][1], pairs[1][1], random.Random(0))
  assert set(variants) == set(ratings.DEGENERATE_KINDS)
  assert pairs[0][1] not in variants.values() and variants["empty"] == ""
  assert variants["repetition_loop"].count(" ".join(pairs[0][1].split()[-3:-1])) == 5
  sources = [en for en, _ in pairs for _ in range(2)]
  hypotheses = [h for _, de in pairs for h in (de, ratings.corrupt(de, random.Random(1), 2))]
  references = [de for _, de in pairs for _ in range(2)]
  scores = np.array([1.0, 0.6] * len(pairs))
  chrf = rewards.get("chrf")
  good = learned.degenerate_agreement(chrf, sources, hypotheses, references, scores)
  assert good["below_correct"] == 1.0 and good["empty"]["count"] == len(pairs)
  gullible = learned.degenerate_agreement(lambda s, h, r: np.full(len(h), 0.9), sources,
                                          hypotheses, references, scores)
  assert gullible["below_correct"] == 0.0 and gullible["copy_of_source"]["mean_predicted"] == 0.9


def test_demo_rater_rates_against_the_correct_translation_not_the_rows_reference():
  from rest_jax.data import demo_corpus

  pair = next(p for p in demo_corpus.generate_corpus(
      300, 0, 0, 0, forms="simple", flaw="adjective", flaw_rate=1.0)["train"]
      if p.kind == "flawed")
  rater = rewards.get("demo_rater", train_size=300, validation_size=0, test_size=0)
  # The flawed training target is the row's reference; the rater reads the correct one.
  scores = rater([pair.source] * 2, [pair.correct, pair.target], [pair.target] * 2)
  assert scores[0] == 1.0 and scores[1] < 1.0
  with pytest.raises(rewards.RewardError, match="example 0 .*'A stranger.' is not a source"):
    rater(["A stranger."], ["Ein Fremder."])


@pytest.mark.slow
def test_learned_reward_model_ranks_clean_above_corrupted(tmp_path):
  from rest_jax.data import demo_corpus, vocab
  from rest_jax.rewards import learned

  pairs = demo_corpus.generate_splits(1200, 0, 0, seed=1)["train"]
  path = ratings.write_ratings(str(tmp_path / "ratings.tsv"), ratings.build_ratings(pairs, 3))
  config = learned.RewardModelConfig(vocab_size=384, emb_dim=64, num_heads=2, head_dim=32,
                                     mlp_dim=128, num_layers=2, max_length=66)
  metrics = learned.train_reward_model(
      ratings_file=path, model_dir=str(tmp_path / "rm"), vocabulary=vocab.DemoVocabulary(),
      config=config, train_steps=400, batch_size=64, learning_rate=3e-3, eval_fraction=0.2)
  # The bar: held-out rank correlation with the chrF ratings, and ranking within a source.
  assert metrics["spearman"] > 0.6, metrics
  assert metrics["pairwise_accuracy"] > 0.75, metrics
  reward = rewards.get("learned", model_dir=str(tmp_path / "rm"))
  scores = reward(["The dog sleeps."] * 2, ["Der Hund schläft.", "Hund der schläft"],
                  ["Der Hund schläft."] * 2)
  assert scores[0] > scores[1]
  with pytest.raises(learned.RatingsError, match="r.tsv:2: expected 4"):
    (tmp_path / "r.tsv").write_text("a\tb\tc\t0.5\nbad line\n")
    learned.read_ratings(str(tmp_path / "r.tsv"))


def test_a_failing_reward_leaves_no_shard_behind(tmp_path):
  from rest_jax.data import grown
  from tests.conftest import grown_row

  def rows():
    for i, hyp in enumerate(["ok", "boom"]):
      reward = _Bad("raise")(["s"], [hyp], ["r"])[0]
      yield grown_row(i, 0, hyp, reward)

  with pytest.raises(rewards.RewardError, match="failed on example 0"):
    grown.write_shard(str(tmp_path), 0, 1, rows())
  assert grown.completed_shards(str(tmp_path), 1) == []
  assert not list(tmp_path.iterdir())


def test_quality_estimation_mode_ignores_the_reference():
  import jax

  from rest_jax.data import vocab
  from rest_jax.rewards import learned

  model = learned.RewardModel(learned.RewardModelConfig(vocab_size=384, emb_dim=32, num_heads=2,
                                                        head_dim=16, mlp_dim=32, max_length=40,
                                                        use_reference=False),
                              vocab.DemoVocabulary())
  tokens = model.tokenize(["The dog."], ["Der Hund."], ["Ein ganz anderer Satz."])
  assert (tokens[0] == 1).sum() == 2  # source EOS hypothesis EOS, no reference
  params = model.get_initial_variables(jax.random.PRNGKey(0), {"tokens": (1, 40)})["params"]
  score = model.predict(params, tokens)
  assert score.shape == (1,) and 0.0 < float(score[0]) < 1.0


def test_edit_rating_counts_word_errors():
  rater = rewards.get("edit_rating")
  scores = rater(["s"] * 5, ["Der alte Mann lacht.", "Der Mann lacht.", "The old man laughs.",
                             "Der alte alte Mann lacht.", "The old man laughs loudly."],
                 ["Der alte Mann lacht."] * 5)
  np.testing.assert_allclose(scores, [1.0, 0.8, 0.2, 0.8, 0.0])  # 0, 1, 4, 1 and 5 errors
  assert rater.needs_reference and rater.range == (0.0, 1.0)


def test_demo_ratings_rate_every_kind_of_candidate():
  from rest_jax.rewards import ratings

  rows = ratings.build_demo_ratings(num_sources=200, forms="simple", flaw="adjective",
                                    corpus_train_size=600, grow_sources=300)
  kinds = {k for *_, k in rows}
  assert kinds == {"correct", "flawed", "model_error", "copy", "misaligned", "truncated",
                   "repeated"}
  for source, hypothesis, correct, score, kind in rows:
    assert (score == 1.0) == (hypothesis == correct), (hypothesis, correct, kind)
    if kind == "copy":
      assert hypothesis == source and score <= 0.4  # every word wrong; 3-word sentences


@pytest.mark.parametrize("reward_config,rest_config,sizes_fn", [
    ("configs/demo_reward.gin", "configs/demo.gin", "demo_corpus_sizes"),
    ("configs/demo_colour_reward.gin", "configs/demo_colour.gin", "demo_colour_corpus_sizes"),
])
def test_the_demo_reward_never_rates_grows_sources_validation_or_test(reward_config,
                                                                      rest_config, sizes_fn):
  """A demo reward config's ratings, as `make demo` builds them, share no source with the
  sources its rest config's Grow samples (the first GROW_MAX_SOURCES training sources), nor
  with validation or test; another seed rates other sources."""
  import gin  # pylint: disable=g-import-not-at-top

  from rest_jax import main  # pylint: disable=g-import-not-at-top
  from rest_jax.data import demo_corpus, tasks  # pylint: disable=g-import-not-at-top
  from rest_jax.rewards import ratings  # pylint: disable=g-import-not-at-top

  def value(key):
    bound = gin.query_parameter(key)
    return bound.scoped_configurable_fn() if isinstance(
        bound, gin.config.ConfigurableReference) else bound

  rated = {}
  for seed in (0, 1):
    gin.clear_config()
    main.parse_gin([reward_config], [f"SEED = {seed}"], finalize=False)
    kwargs = {k: value(f"ratings.build_demo_ratings_file.{k}")
              for k in ("num_sources", "seed", "forms", "flaw", "corpus_train_size",
                        "grow_sources")}
    try:
      kwargs["grammar"] = value("ratings.build_demo_ratings_file.grammar")
    except ValueError:  # not bound: the base grammar
      kwargs["grammar"] = "base"
    rated[seed] = {row[0] for row in ratings.build_demo_ratings(**kwargs)}
  gin.clear_config()
  main.parse_gin([rest_config], ["MODEL_DIR = 'unused'"], finalize=False)
  grow_sources = value("%GROW_MAX_SOURCES")
  sizes = {k: value(f"tasks.{sizes_fn}.{k}")
           for k in ("train_size", "validation_size", "test_size", "forms")}
  task = value("%MIXTURE_OR_TASK_NAME")
  gin.clear_config()
  grammar = getattr(tasks, sizes_fn)().get("grammar", "base")
  assert kwargs["grammar"] == grammar
  corpus = demo_corpus.generate_corpus(sizes["train_size"], sizes["validation_size"],
                                       sizes["test_size"], 0, forms=sizes["forms"],
                                       grammar=grammar)
  grown_sources = {p.source for p in corpus["train"][:grow_sources]}
  held_out = {p.source for split in ("validation", "test") for p in corpus[split]}
  train = {p.source for p in corpus["train"]}
  for seed, sources in rated.items():
    assert len(sources) == 4000 and sources <= train, seed
    assert not sources & grown_sources and not sources & held_out, seed
  assert rated[0] != rated[1]
  # The task the demo's Grow samples is this corpus's.
  assert task == (tasks.DEMO_TASK if grammar == "base" else tasks.DEMO_COLOUR_TASK)


def test_a_learned_ensemble_is_the_mean_of_its_members(tmp_path):
  from rest_jax.data import demo_corpus, vocab  # pylint: disable=g-import-not-at-top
  from rest_jax.rewards import learned  # pylint: disable=g-import-not-at-top

  pairs = demo_corpus.generate_splits(200, 0, 0, seed=1)["train"]
  path = ratings.write_ratings(str(tmp_path / "ratings.tsv"), ratings.build_ratings(pairs, 2))
  config = learned.RewardModelConfig(vocab_size=384, emb_dim=32, num_heads=2, head_dim=16,
                                     mlp_dim=64, num_layers=1, max_length=66,
                                     use_reference=False)
  learned.train_reward_model(
      ratings_file=path, model_dir=str(tmp_path / "rm"), vocabulary=vocab.DemoVocabulary(),
      config=config, train_steps=6, batch_size=16, eval_fraction=0.2, seed=3,
      ensemble_size=2, progress_bar=False)
  assert (tmp_path / "rm" / "member_0").is_dir() and (tmp_path / "rm" / "member_1").is_dir()
  reward = rewards.get("learned", model_dir=str(tmp_path / "rm"))
  assert len(reward.members) == 2
  sources, hyps = ["The dog sleeps.", "A cat sees the man."], ["Der Hund schläft.", "Katze"]
  tokens = reward.model.tokenize(sources, hyps, ["", ""])
  each = [reward._scorer(p, tokens) for p in reward.members]  # pylint: disable=protected-access
  assert not np.allclose(each[0], each[1])  # other seeds, other models
  np.testing.assert_allclose(reward(sources, hyps), np.mean(each, axis=0), rtol=1e-6)
  assert "identity" in records_describe(reward)
  # On one device the members score concurrently, each as it would alone.
  one_device = partitioning.Partitioner(devices=jax.devices()[:1])
  threaded = rewards.get("learned", model_dir=str(tmp_path / "rm"), partitioner=one_device)
  np.testing.assert_array_equal(
      threaded.score(sources, hyps, ["", ""]),
      np.mean([threaded._scorer(p, tokens) for p in threaded.members], axis=0))  # pylint: disable=protected-access
  # Member 1 (seed 3 * 2 + 1) is, bit for bit, the model trained alone with seed 7.
  learned.train_reward_model(
      ratings_file=path, model_dir=str(tmp_path / "alone"), vocabulary=vocab.DemoVocabulary(),
      config=config, train_steps=6, batch_size=16, eval_fraction=0.2, seed=7,
      progress_bar=False)
  alone = rewards.get("learned", model_dir=str(tmp_path / "alone"))
  for a, b in zip(jax.tree_util.tree_leaves(alone.members[0]),
                  jax.tree_util.tree_leaves(reward.members[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(alone(sources, hyps), each[1])


def test_members_trained_concurrently_on_one_device_are_each_as_trained_alone(tmp_path,
                                                                              monkeypatch):
  """On a one-device mesh the members train in threads, their checkpoints taking turns;
  each is, bit for bit, the model trained alone on that mesh with its seed."""
  import threading  # pylint: disable=g-import-not-at-top

  from rest_jax.data import demo_corpus, vocab  # pylint: disable=g-import-not-at-top
  from rest_jax.rewards import learned  # pylint: disable=g-import-not-at-top

  runs = []
  run = learned.loop.run

  def recording_run(job, *args, **kwargs):
    runs.append((threading.current_thread().name, type(job.checkpointer).__name__))
    return run(job, *args, **kwargs)

  monkeypatch.setattr(learned.loop, "run", recording_run)

  pairs = demo_corpus.generate_splits(200, 0, 0, seed=2)["train"]
  path = ratings.write_ratings(str(tmp_path / "ratings.tsv"), ratings.build_ratings(pairs, 2))
  config = learned.RewardModelConfig(vocab_size=384, emb_dim=32, num_heads=2, head_dim=16,
                                     mlp_dim=64, num_layers=1, max_length=66,
                                     use_reference=False)
  one_device = partitioning.Partitioner(devices=jax.devices()[:1])
  common = dict(ratings_file=path, vocabulary=vocab.DemoVocabulary(), config=config,
                train_steps=8, batch_size=16, eval_fraction=0.2, checkpoint_period=2,
                partitioner=one_device, progress_bar=False)
  together = learned.train_reward_model(model_dir=str(tmp_path / "rm"), seed=1,
                                        ensemble_size=3, **common)
  # Three threads of their own, each member's checkpoints taking turns with the others'.
  assert len({name for name, _ in runs}) == 3, runs
  assert all(name.startswith("reward_member") and kind == "TakingTurns" for name, kind in runs)
  runs.clear()
  for k in range(3):  # every member saved each of its checkpoints (2, 4, 6, 8; keeps 2)
    assert sorted(os.listdir(tmp_path / "rm" / f"member_{k}" / "checkpoints")) == ["6", "8"]
  members = rewards.get("learned", model_dir=str(tmp_path / "rm"), partitioner=one_device)
  for k in range(3):
    learned.train_reward_model(model_dir=str(tmp_path / f"alone{k}"), seed=3 + k, **common)
    alone = rewards.get("learned", model_dir=str(tmp_path / f"alone{k}"),
                        partitioner=one_device)
    for a, b in zip(jax.tree_util.tree_leaves(alone.members[0]),
                    jax.tree_util.tree_leaves(members.members[k])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert together["examples"] > 0


def test_a_failing_member_stops_the_others_and_its_error_is_the_one_raised():
  """A member's error calls `on_failure` at once (training: a preemption request, so the
  others save and stop at their next step), and is raised rather than their stops."""
  import threading  # pylint: disable=g-import-not-at-top

  from rest_jax import preemption  # pylint: disable=g-import-not-at-top

  stop = threading.Event()

  def member(k):
    if k == 1:
      raise ValueError("member 1 failed")
    assert stop.wait(30), "on_failure was not called while the others ran"
    raise preemption.Preempted(f"member {k} stopped")

  one_device = partitioning.Partitioner(devices=jax.devices()[:1])
  with pytest.raises(ValueError, match="member 1 failed"):
    members_lib.map_members(member, 3, one_device, on_failure=stop.set)
  assert members_lib.map_members(lambda k: k * k, 3, one_device) == [0, 1, 4]


def records_describe(reward):
  from rest_jax import records  # pylint: disable=g-import-not-at-top

  return records.describe(reward)
