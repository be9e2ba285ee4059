"""Selection on validation, BC+, early stopping, and the evaluation that cannot flatter."""

import jax
import numpy as np
import pytest

from rest_jax import checkpoints, controls, decoding, improve, partitioning, policy_eval, report
from rest_jax import rewards as rewards_lib, selection, train, trainer as trainer_lib
from rest_jax.context import Policy, StepContext
from rest_jax.data import corpus_metrics as metrics, pipeline, tasks, vocab
from rest_jax.roles import Role
from rest_jax.rows import PolicyRow
from tests.conftest import make_model

LENGTHS = {"inputs": 48, "targets": 40}


def _scripted(scores):
  """A validate function that returns the given scores in turn."""
  calls = []

  def validate(params):
    del params
    calls.append(len(calls))
    return scores[len(calls) - 1]

  return validate, calls


@pytest.fixture(scope="module")
def setup():
  model = make_model(decoding.beam_search, vocabulary=vocab.DemoVocabulary(), vocab_size=384)
  partitioner = partitioning.Partitioner(mesh_shape=(2, 1), devices=jax.devices()[:2])
  trainer = trainer_lib.Trainer(model, partitioner, trainer_lib.batch_input_shapes(8, LENGTHS),
                                loss_fn=improve.losses.OfflineRLLoss("bc"))
  return model, partitioner, trainer


def _bc_plus(setup, init, tmp_path, validate):
  """BC+ for 6 steps from `init`, evaluated every 2 steps (and at its start)."""
  model, partitioner, trainer = setup
  context = StepContext(model=model, partitioner=partitioner, task=tasks.DEMO_TASK,
                        feature_lengths=LENGTHS, reward=rewards_lib.get("chrf", processes=1),
                        checkpoint_period=2, progress_bar=False, validate=validate)
  config = improve.ImproveConfig(batch_size=8, selection=selection.SelectionConfig(eval_period=2))
  return controls.bc_plus_step(Policy(init), config, context, output_dir=str(tmp_path),
                               total_steps=6, trainer=trainer)


def test_a_run_whose_last_checkpoint_is_worse_ends_on_the_earlier_one(setup, tmp_path):
  trainer = setup[2]
  init = trainer.init_state(jax.random.PRNGKey(0)).params
  validate, calls = _scripted([0.1, 0.2, 0.9, 0.4])  # evaluated at its start, steps 2, 4, 6
  result = _bc_plus(setup, init, tmp_path, validate)
  assert len(calls) == 4 and result.metrics["train_steps"] == 6
  assert result.metrics["selection"]["best_step"] == 4
  assert int(result.state.step) == 4  # the state used downstream is step 4's
  last = checkpoints.read_arrays(str(tmp_path / "checkpoints"))
  assert int(last["step"]) == 6
  chosen = jax.tree_util.tree_leaves(jax.device_get(result.state.params))
  assert any(not np.array_equal(a, b) for a, b in zip(chosen, jax.tree_util.tree_leaves(
      last["params"])))
  saved = selection.Selection(str(tmp_path))
  assert saved.finished and saved.history == [(0, 0.1), (2, 0.2), (4, 0.9), (6, 0.4)]
  # Re-running the finished step changes nothing and evaluates nothing.
  validate, calls = _scripted([])
  again = _bc_plus(setup, init, tmp_path, validate)
  assert not calls and int(again.state.step) == 4


def test_bc_stops_early_and_keeps_its_best_checkpoint(setup, tmp_path):
  model, partitioner, _ = setup
  validate, calls = _scripted([0.3, 0.5, 0.45, 0.4, 0.9])
  cfg = pipeline.DatasetConfig(tasks.DEMO_TASK, LENGTHS, "train", 8)
  sel = selection.Selection(str(tmp_path), selection.SelectionConfig(eval_period=2, patience=2))
  train.train(model=model, train_dataset_cfg=cfg, model_dir=str(tmp_path), total_steps=20,
              partitioner=partitioner, checkpoint_cfg=train.CheckpointConfig(5), progress_bar=False,
              selection=sel, validate=validate)
  # Evaluated at 2, 4, 6, 8: two evaluations after the best (step 4) did not beat it.
  assert len(calls) == 4 and sel.best == (4, 0.5) and sel.should_stop and sel.finished
  assert checkpoints.Checkpointer(str(tmp_path)).latest_step() == 8
  validate, calls = _scripted([])
  train.train(model=model, train_dataset_cfg=cfg, model_dir=str(tmp_path), total_steps=20,
              partitioner=partitioner, checkpoint_cfg=train.CheckpointConfig(5), progress_bar=False,
              selection=selection.Selection(str(tmp_path), sel.config), validate=validate)
  assert not calls  # a finished (stopped) BC is not trained again


def test_selection_resumes_from_a_checkpoint_without_later_evaluations(tmp_path):
  sel = selection.Selection(str(tmp_path), selection.SelectionConfig(eval_period=2))
  sel.history = [(2, 0.1), (4, 0.3), (6, 0.2)]
  sel.resume_from(4)
  assert sel.history == [(2, 0.1), (4, 0.3)] and sel.best == (4, 0.3)
  assert sel.due(6, 7) and sel.due(7, 7) and not sel.due(5, 7)


def test_degeneracy_rates_on_hand_made_outputs():
  sources = ["The dog sleeps.", "A cat sees the man.", "The man laughs.", "Two birds sing."]
  refs = ["Der Hund schläft.", "Eine Katze sieht den Mann.", "Der Mann lacht.",
          "Zwei Vögel singen."]
  outputs = ["Der Hund schläft.",
             "Eine Katze sieht den Mann sieht den Mann.",  # a phrase said twice
             "",  # empty
             "two birds sing"]  # an untranslated copy (case and stop aside)
  rates = metrics.degeneracy(sources, refs, outputs)
  assert rates["repeated_ngram_rate"] == 0.25 and rates["reference_repeated_ngram_rate"] == 0
  assert rates["empty_rate"] == 0.25 and rates["copy_rate"] == 0.25
  assert rates["length_ratio"] == pytest.approx((3 + 8 + 0 + 3) / (3 + 5 + 3 + 3))


def test_degeneracy_of_chinese_counts_characters_not_spaces():
  """Chinese has no spaces: split on whitespace, a sentence said three times is one "word",
  as long as the reference and with no repeated 3-gram; sacrebleu's `zh` tokenizer sees
  three times the reference's words and the repeat. Outputs and references split alike."""
  sources = ["I like cats.", "The dog sleeps."]
  refs = ["我喜欢猫。", "狗在睡觉。"]
  outputs = ["我喜欢猫我喜欢猫我喜欢猫。", "狗在睡觉。"]
  spaces = metrics.degeneracy(sources, refs, outputs)  # 13a: what whitespace splitting saw
  assert spaces["length_ratio"] == 1.0 and spaces["repeated_ngram_rate"] == 0
  rates = metrics.degeneracy(sources, refs, outputs, tokenize=metrics.word_tokenizer("zh"))
  assert rates["length_ratio"] == pytest.approx((12 + 4) / (4 + 4))
  assert rates["repeated_ngram_rate"] == 0.5 and rates["reference_repeated_ngram_rate"] == 0
  assert metrics.words("猫在睡觉，狗 sleeps.", "zh") == ["猫", "在", "睡", "觉", "狗", "sleeps"]


def test_degeneracy_reports_the_references_own_rates():
  sources = ["Paris", "The dog sleeps.", "Berlin", "Hello."]
  refs = ["Paris", "Der Hund schläft.", "Berlin", ""]  # names copied; one empty reference
  rates = metrics.degeneracy(sources, refs, ["Paris", "Der Hund.", "Berlin", "Hallo."])
  assert rates["reference_copy_rate"] == 0.5 and rates["copy_rate"] == 0.5
  assert rates["reference_empty_rate"] == 0.25 and rates["empty_rate"] == 0


def test_a_run_read_back_keeps_its_recorded_patience(tmp_path):
  """A reader (BC_FROM's, the report's) sees the patience BC ran with, not the default,
  and does not overwrite it in the file."""
  sel = selection.Selection(str(tmp_path), selection.SelectionConfig(eval_period=2, patience=2,
                                                                     min_delta=0.1))
  sel.history = [(2, 0.5), (4, 0.55), (6, 0.52)]
  sel.finish()
  for _ in range(2):
    summary = selection.Selection(str(tmp_path)).summary()
    assert summary["patience"] == 2 and summary["best_step"] == 2  # 0.55 is within min_delta
    assert summary["since_best"] == 2 and summary["stopped_early"]
  assert report.warnings([], {"bc": {"selection": summary}}) == []  # it converged


def test_the_divergence_flag_fires_on_a_synthetic_history():
  def row(policy, role, reward, bleu, chrf, ter=50.0):
    return PolicyRow(policy, Role(role), metrics={
        "validation/reward": reward, "validation/bleu": bleu, "validation/chrf": chrf,
        "validation/ter": ter})

  rows = [row("BC", "BC", 0.70, 40.0, 60.0),
          row("BC+", "BC+", 0.72, 41.0, 61.0),             # both up: fine
          row("G1 I1", "ReST", 0.75, 42.0, 62.0, 48.0),    # all better: fine
          row("G1 I2", "ReST", 0.80, 39.5, 62.5, 47.0),    # reward up, BLEU down: flag
          row("G1 I3", "ReST", 0.78, 38.0, 61.0),          # reward down: no flag
          row("G2 I1", "ReST", 0.79, 38.5, 61.5, 52.0)]    # reward up, TER up: flag
  flags = report.divergence_flags(rows)
  assert [(p, q) for p, q, _ in flags] == [("G1 I2", "G1 I1"), ("G2 I1", "G1 I3")]
  assert flags[0][2] == ["bleu 42 -> 39.5"] and flags[1][2] == ["ter 50 -> 52"]


def test_reward_agreement_on_policy_samples():
  groups = np.array([0, 0, 0, 1, 1])
  held_out = np.array([0.9, 0.5, 0.1, 0.7, 0.2])
  same = policy_eval.reward_agreement(held_out * 2, held_out, groups)
  assert same["agreement_spearman"] == pytest.approx(1.0) and same["agreement_pairwise"] == 1.0
  flipped = policy_eval.reward_agreement(-held_out, held_out, groups)
  assert flipped["agreement_pairwise"] == 0.0


class _Counting(rewards_lib.Reward):
  """A per-hypothesis reward that records every call's hypotheses and scores."""

  def __init__(self, name, needs_reference):
    self.name, self.needs_reference, self.calls = name, needs_reference, []

  def score(self, sources, hypotheses, references):
    if self.needs_reference:  # a character-overlap score against the reference
      values = [len(set(h) & set(r)) / max(len(set(h) | set(r)), 1)
                for h, r in zip(hypotheses, references)]
    else:  # a length preference that reads no reference
      values = [1.0 / (1.0 + abs(len(h) - 30)) for h in hypotheses]
    self.calls.append((list(hypotheses), np.asarray(values)))
    return values


def test_an_evaluation_scores_each_sample_once_and_reads_its_split_once(setup, monkeypatch):
  model, partitioner, trainer = setup
  params = trainer.init_state(jax.random.PRNGKey(0)).params
  reward, held_out = _Counting("length", False), _Counting("overlap", True)
  reads = []
  real = policy_eval.inference.source_batches
  monkeypatch.setattr(policy_eval.inference, "source_batches",
                      lambda *a, **k: reads.append(a) or real(*a, **k))
  evaluator = policy_eval.PolicyEvaluator(
      model, partitioner, trainer.params_sharding, reward,
      policy_eval.EvalConfig(best_of_n=3, batch_size=8, held_out_reward=held_out))
  assert evaluator.reranker is reward and evaluator.oracle is held_out
  lengths = {"inputs": 48, "targets": 12}
  out = evaluator(params, tasks.DEMO_TASK, "validation", lengths, max_examples=8)
  # Greedy outputs, then the 8 x 3 samples: once per reward, whatever reads their scores.
  assert [len(h) for h, _ in reward.calls] == [8, 24]
  assert [len(h) for h, _ in held_out.calls] == [8, 24]
  mine, theirs = reward.calls[1][1].reshape(8, 3), held_out.calls[1][1].reshape(8, 3)
  rows = np.arange(8)
  assert out["best_of_3_reward"] == pytest.approx(mine.max(axis=1).mean())
  assert out["best_of_3_held_out_reward"] == pytest.approx(
      theirs[rows, mine.argmax(axis=1)].mean())
  assert out["oracle_best_of_3_reward"] == pytest.approx(mine[rows, theirs.argmax(axis=1)].mean())
  assert out["oracle_best_of_3_held_out_reward"] == pytest.approx(theirs.max(axis=1).mean())
  assert out["agreement_pairwise"] == policy_eval.reward_agreement(
      mine.ravel(), theirs.ravel(), np.repeat(rows, 3))["agreement_pairwise"]
  # Selection evaluates the same split again and again: it is read from seqio once.
  first = evaluator.validation_reward(params, tasks.DEMO_TASK, "validation", lengths, 8)
  assert evaluator.validation_reward(params, tasks.DEMO_TASK, "validation", lengths, 8) == first
  assert len(reads) == 1


def test_bc_plus_is_never_below_its_start_on_validation(setup, tmp_path):
  """BC+'s selection includes the BC policy it starts from: if training only hurts on
  validation, the control is BC itself (step 0), never worse."""
  trainer = setup[2]
  init = trainer.init_state(jax.random.PRNGKey(0)).params
  validate, calls = _scripted([0.5, 0.2, 0.3, 0.4])
  result = _bc_plus(setup, init, tmp_path, validate)
  assert len(calls) == 4 and result.metrics["selection"]["best_step"] == 0
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(result.state.params)),
                  jax.tree_util.tree_leaves(jax.device_get(init))):
    np.testing.assert_array_equal(a, b)
