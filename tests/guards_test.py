"""Reward guards: hand-made degenerate outputs score below a correct translation."""

import numpy as np
import pytest

from rest_jax import rewards
from rest_jax.rewards.base import Reward

SOURCE = "Tomorrow the old teacher shows the children a small red book."
CORRECT = "Morgen zeigt der alte Lehrer den Kindern ein kleines rotes Buch."
DEGENERATE = {
    "empty": "",
    "copy": "Tomorrow the old teacher shows the children a small red book.",
    "wrong language": "Mañana el viejo maestro muestra a los niños un pequeño libro rojo.",
    "repetition loop": "Morgen zeigt der alte Lehrer den Kindern ein Buch ein Buch ein Buch ein Buch.",
    "under-translation": "Morgen Buch.",
    "over-translation": ("Morgen zeigt der alte Lehrer den Kindern ein kleines rotes Buch, und"
                         " dann zeigt der alte Lehrer den Kindern noch ein kleines rotes Buch und"
                         " noch eines und noch eines."),
}
EXPECTED_GUARD = {"empty": "empty", "copy": "copy", "wrong language": "language",
                  "repetition loop": "repetition", "under-translation": "length",
                  "over-translation": "length"}


class Gullible(Reward):
  """A reference-free reward that likes everything: what a hackable QE model looks like."""

  name = "gullible"
  needs_reference = False

  def score(self, sources, hypotheses, references):
    return np.full(len(hypotheses), 0.9)


@pytest.fixture(scope="module")
def guarded():
  return {name: rewards.Guarded(inner, target_language="de", languages=["de", "en", "es", "fr"])
          for name, inner in (("gullible", Gullible()), ("chrf", rewards.get("chrf")),
                              ("use-similarity", rewards.get("use-similarity")))}


@pytest.mark.parametrize("kind", sorted(DEGENERATE))
def test_each_guarded_reward_scores_degenerate_output_below_a_correct_one(guarded, kind):
  for name, reward in guarded.items():
    scores = reward([SOURCE] * 2, [CORRECT, DEGENERATE[kind]], [CORRECT] * 2)
    assert scores[1] < scores[0], (name, kind, scores)
    assert reward.fired[EXPECTED_GUARD[kind]] == 1, (name, kind, reward.fired)
    assert sum(reward.fired.values()) >= 1
  # The correct translation fires nothing: its score is the inner reward's.
  plain = guarded["gullible"]([SOURCE], [CORRECT], [CORRECT])
  assert plain[0] == 0.9 and sum(guarded["gullible"].fired.values()) == 0


def test_the_embedding_reward_sees_meaning_across_languages_but_not_copies():
  """MetricX's failure modes without a guard: unrelated or gibberish output scores low."""
  reward = rewards.get("use-similarity")
  assert not reward.needs_reference
  unrelated = "Der Zug nach Berlin fährt heute um acht Uhr vom Hauptbahnhof ab."
  gibberish = "Xq zvw plorn ekk trumbel vasch gniff drolm."
  scores = reward([SOURCE] * 5, [CORRECT, unrelated, gibberish, DEGENERATE["empty"],
                                 DEGENERATE["copy"]])
  assert scores[0] > 0.6 and all(scores[0] > scores[1:4] + 0.3), scores
  assert scores[4] >= scores[0]  # the documented weakness: a copy of the source scores highest
  guarded = rewards.Guarded(reward, target_language="de", languages=["de", "en", "es", "fr"])
  assert guarded([SOURCE] * 2, [CORRECT, DEGENERATE["copy"]])[1] == 0.0


def test_unguarded_gullible_reward_is_fooled_and_the_factors_are_the_documented_ones(guarded):
  hypotheses = [DEGENERATE[k] for k in sorted(DEGENERATE)]
  assert np.all(Gullible()([SOURCE] * len(hypotheses), hypotheses) == 0.9)
  scores = dict(zip(sorted(DEGENERATE), guarded["gullible"](
      [SOURCE] * len(hypotheses), hypotheses)))
  # 0 for empty, copy and wrong language; half for length and repetition.
  assert scores["empty"] == scores["copy"] == scores["wrong language"] == 0.0
  assert scores["repetition loop"] == pytest.approx(0.45)
  assert scores["under-translation"] == pytest.approx(0.45)


def test_guards_are_configured_in_gin_and_bad_factors_are_refused():
  import gin

  gin.clear_config()
  try:
    gin.parse_config("""
        from __gin__ import dynamic_registration
        from rest_jax import rewards
        REWARD = @rewards.Guarded()
        rewards.Guarded.reward = @rewards.get()
        rewards.get.name = 'chrf'
        rewards.Guarded.target_language = 'de'
        rewards.Guarded.length_factor = 0.25
    """)
    reward = gin.query_parameter("%REWARD").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert reward.name == "guarded(chrf)" and reward.factors["length"] == 0.25
  with pytest.raises(ValueError, match="copy_factor=1.5 must be in"):
    rewards.Guarded(Gullible(), copy_factor=1.5)


class Counting(Reward):
  name = "counting"

  def __init__(self):
    self.rows = 0

  def score(self, sources, hypotheses, references):
    self.rows += len(hypotheses)
    return np.array([len(h) / 100 for h in hypotheses])


def test_cached_scores_each_row_once_on_disk_and_a_new_version_rescores(tmp_path):
  inner = Counting()
  cached = rewards.Cached(inner, directory=str(tmp_path))
  hyps = ["a b", "c d e", "a b"]
  first = cached(["s"] * 3, hyps, ["r"] * 3)
  assert inner.rows == 2 and cached.misses == 2 and cached.hits == 1  # "a b" twice: once
  # A resumed run (a new object on the same directory) scores nothing again.
  again = rewards.Cached(inner, directory=str(tmp_path))
  np.testing.assert_array_equal(again(["s"] * 3, hyps, ["r"] * 3), first)
  assert inner.rows == 2 and again.hits == 3
  # The reference is part of the key of a reward that reads it; a new version starts afresh.
  again(["s"], ["a b"], ["other"])
  assert inner.rows == 3
  rewards.Cached(inner, directory=str(tmp_path), version="2")(["s"], ["a b"], ["r"])
  assert inner.rows == 4
