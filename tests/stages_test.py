"""Stage specs: every stage `rest` builds declares what it depends on, so a change redoes
exactly the stages that read it, and a re-run after a change equals a fresh run.

The specs are the ones a real (tiny) `rest` run builds, caught as it hands them to
`RunState.run`, not a copy of them.
"""

import dataclasses
import json
import logging
import os

import gin
import jax
import pytest

from rest_jax import controls, decoding, grow, improve, losses, partitioning, policy_eval
from rest_jax import records, rest, rewards, run_state, selection, stages
from rest_jax.data import identity, pipeline, tasks, translation_tasks, vocab
from tests.conftest import make_model

LENGTHS = {"inputs": 48, "targets": 40}
IMPROVE = improve.ImproveConfig(
    thresholds=rewards.ThresholdSchedule([0.0, 0.5], quantiles=True),
    loss=losses.OfflineRLLoss("bc"), steps=2, batch_size=16,
    selection=selection.SelectionConfig(eval_period=2))
EVALUATION = policy_eval.EvalConfig(max_examples=8, best_of_n=1)


def _run(model_dir, **overrides):
  rater = rewards.DemoRater(forms="full", flaw="dative")  # reference-free: pairs are scored
  kwargs = dict(
      model=make_model(decoding.beam_search, vocabulary=vocab.DemoVocabulary(), vocab_size=384),
      model_dir=str(model_dir),
      train_dataset_cfg=pipeline.DatasetConfig(tasks.DEMO_TASK, LENGTHS, "train", 16, seed=1),
      bc=rest.BCConfig(steps=2, selection=selection.SelectionConfig(eval_period=2)),
      reward=rater,
      grow=grow.GrowConfig(steps=1, max_sources=8, num_samples=2, batch_size=8,
                           shard_size=16),
      partitioner=partitioning.Partitioner(devices=jax.devices()[:1]),
      improve=IMPROVE, evaluation=EVALUATION,
      checkpoint_period=2, progress_bar=False,
      arms=controls.ArmsConfig(rows_rater=rater, random_selection=True))
  kwargs.update(overrides)
  return rest.rest(**kwargs)


def _caught(monkeypatch):
  """Every spec `rest` hands to `RunState.run`, in order, and the names it (re)ran."""
  specs, ran = [], []
  real = run_state.RunState.run

  def run(self, spec, finished, fn, outputs=()):
    specs.append(spec)
    return real(self, spec, finished, lambda: ran.append(spec.name) or fn(), outputs)

  monkeypatch.setattr(run_state.RunState, "run", run)
  return specs, ran


def _state(model_dir):
  with open(os.path.join(model_dir, rest.STATE_FILE)) as f:
    return json.load(f)


def _downstream(specs, name):
  """`name` and every stage that reads it, directly or not."""
  out = {name}
  for spec in specs:  # in run order: a stage comes after what it reads
    if any(a.name in out for a in spec.after):
      out.add(spec.name)
  return out


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("run")
  with pytest.MonkeyPatch.context() as mp:
    specs, _ = _caught(mp)
    rows = _run(model_dir)
  return model_dir, specs, rows


@pytest.mark.slow
def test_rest_declares_what_each_stage_reads(base_run):
  """Each evaluation reads the policy it evaluates; each training step the policy it
  starts from and the Grow step it trains on; every stage the run's setting."""
  _, specs, _ = base_run
  by_name = {s.name: s for s in specs}
  names = list(by_name)
  assert {"bc", "eval_bc", "bc_plus", "eval_bc_plus", "grow_1", "rate_grow_1",
          "filtered_bc_1_1", "filtered_bc_1_2", "samples_only_1_2", "random_1_2",
          "improve_1_1", "improve_1_2", "eval_1_2", "test_bc"} <= set(names), names
  for spec in specs:
    after = [a.name for a in spec.after]
    if spec.name.startswith(("eval_", "test_")):
      policy = spec.name.split("_", 1)[1]
      policy = {"1_1": "improve_1_1", "1_2": "improve_1_2"}.get(policy, policy)
      assert after == [policy], (spec.name, after)
      assert {"setting", "evaluation"} <= set(spec.inputs), spec.name
    elif spec.name.endswith(("_1_1", "_1_2")):  # a training step on Grow 1
      start = "bc" if spec.name.endswith("_1_1") else spec.name[:-1] + "1"
      assert after == [start, "grow_1"], (spec.name, after)
      assert {"setting", "validation"} <= set(spec.inputs), spec.name
    assert spec.record == by_name[spec.name].record
  # The setting holds the model's loss settings and vocabulary, and the task's rows.
  setting = by_name["bc"].record["setting"]["identity"]
  flat = records.flatten(setting)
  assert any(k.startswith("model.") and k.endswith("z_loss") for k in flat), sorted(flat)[:20]
  assert "task.source.flaw_rate" in flat
  assert any(k.endswith("sentencepiece_sha256") for k in flat)


@pytest.mark.slow
def test_each_input_of_each_stage_redoes_it_and_what_reads_it(base_run, caplog, monkeypatch):
  """For every stage `rest` built and every one of its inputs: a change there redoes that
  stage and everything downstream of it, names the input in the log, and reuses the rest."""
  model_dir, specs, _ = base_run
  recorded = _state(model_dir)
  monkeypatch.setattr(run_state.RunState, "save", lambda self: None)
  checked = 0
  for target in specs:
    for key in target.inputs:
      changed = {}
      for spec in specs:
        after = tuple(changed.get(a.name, a) for a in spec.after)
        inputs = dict(spec.inputs)
        if spec is target:
          inputs[key] = {"changed": inputs[key]}
        if spec is target or any(a is not b for a, b in zip(after, spec.after)):
          changed[spec.name] = stages.Spec(spec.name, inputs, after)
      state = run_state.RunState("unused", json.loads(json.dumps(recorded["steps"])),
                                 json.loads(json.dumps(recorded["configs"])))
      ran = []
      caplog.clear()
      with caplog.at_level(logging.WARNING):
        for spec in specs:
          state.run(changed.get(spec.name, spec), True,
                    lambda name=spec.name: ran.append(name) or {})
      assert set(ran) == _downstream(specs, target.name), (target.name, key, ran)
      named = [m for m in caplog.messages if f"redoing {target.name}:" in m]
      assert named and f"{key}." in named[0], (target.name, key, named)
      checked += 1
  assert checked > 3 * len(specs)


def _evaluations(model_dir):
  steps = _state(model_dir)["steps"]
  return {k: v["metrics"] for k, v in steps.items() if k.startswith(("eval_", "test_"))}


@pytest.mark.slow
def test_a_rerun_after_changes_equals_a_fresh_run(base_run, tmp_path, monkeypatch):
  """IMPROVE_LEARNING_RATE, then EVAL_MAX_EXAMPLES, changed in the same MODEL_DIR: after
  each, the state's evaluations are those of a fresh run with the same flags. The
  learning rate redoes BC+ and every arm and Improve step with their evaluations, not BC
  or Grow; the example count redoes BC too (validation picks its checkpoint)."""
  model_dir, _, _ = base_run
  rerun = tmp_path / "rerun"
  import shutil  # pylint: disable=g-import-not-at-top

  shutil.copytree(model_dir, rerun)
  faster = dataclasses.replace(IMPROVE, learning_rate=trainer_rate(3e-3))
  _, ran = _caught(monkeypatch)
  _run(rerun, improve=faster)
  assert "bc" not in ran and "grow_1" not in ran and "eval_bc" not in ran, ran
  assert {"bc_plus", "filtered_bc_1_1", "filtered_bc_1_2", "improve_1_1", "random_1_2",
          "samples_only_1_2", "eval_bc_plus", "eval_filtered_bc_1_1", "eval_filtered_bc_1_2",
          "eval_1_2"} <= set(ran), ran
  _run(tmp_path / "fresh", improve=faster)
  assert _evaluations(rerun) == _evaluations(tmp_path / "fresh")
  ran.clear()
  fewer = dataclasses.replace(EVALUATION, max_examples=6)
  _run(rerun, improve=faster, evaluation=fewer)
  assert "bc" in ran and "grow_1" in ran
  _run(tmp_path / "fresh_fewer", improve=faster, evaluation=fewer)
  assert _evaluations(rerun) == _evaluations(tmp_path / "fresh_fewer")


def _replayed(specs, recorded, replace):
  """The stages a re-run redoes when `replace(spec)` gives each stage's new inputs."""
  changed = {}
  for spec in specs:
    after = tuple(changed.get(a.name, a) for a in spec.after)
    inputs = replace(spec)
    if inputs != spec.inputs or any(a is not b for a, b in zip(after, spec.after)):
      changed[spec.name] = stages.Spec(spec.name, inputs, after)
  state = run_state.RunState("unused", json.loads(json.dumps(recorded["steps"])),
                             json.loads(json.dumps(recorded["configs"])))
  ran = []
  for spec in specs:
    state.run(changed.get(spec.name, spec), True, lambda name=spec.name: ran.append(name) or {})
  return set(ran)


@pytest.mark.slow
def test_the_issues_cases_on_the_stages_rest_built(base_run, monkeypatch):
  """With real changed objects in the specs a run built: a new first threshold redoes
  filtered BC's whole chain (not its first step only); another reward or a model with
  another z-loss redoes everything, BC's evaluation included; nothing changed, nothing."""
  model_dir, specs, _ = base_run
  recorded = _state(model_dir)
  monkeypatch.setattr(run_state.RunState, "save", lambda self: None)
  assert _replayed(specs, recorded, lambda s: s.inputs) == set()
  first = lambda s: ({**s.inputs, "threshold": s.inputs["threshold"] - 0.01}  # noqa: E731
                     if s.name == "filtered_bc_1_1" else s.inputs)
  redone = _replayed(specs, recorded, first)
  assert {"filtered_bc_1_1", "filtered_bc_1_2", "eval_filtered_bc_1_2"} <= redone
  assert not redone & {"bc", "grow_1", "improve_1_1", "eval_bc", "bc_plus"}, redone
  setting = next(s.inputs["setting"] for s in specs if "setting" in s.inputs)
  other_reward = stages.Setting(setting.model, setting.task, setting.feature_lengths,
                                rewards.get("chrf", processes=1), setting.seed)
  from rest_jax.models import model as model_lib  # pylint: disable=g-import-not-at-top

  m = setting.model
  z_loss = stages.Setting(model_lib.EncoderDecoderModel(
      m.module, m.input_vocabulary, m.output_vocabulary, decode_fn=decoding.beam_search,
      z_loss=1e-4), setting.task, setting.feature_lengths, setting.reward, setting.seed)
  for new in (other_reward, z_loss):
    redone = _replayed(specs, recorded, lambda s, new=new: {**s.inputs, "setting": new}
                       if "setting" in s.inputs else s.inputs)
    assert {"bc", "eval_bc", "grow_1", "improve_1_2", "test_bc"} <= redone, redone


def trainer_rate(rate):
  from rest_jax import trainer as trainer_lib  # pylint: disable=g-import-not-at-top

  return trainer_lib.LearningRateConfig(rate, "constant")


def test_evaluation_settings_are_in_evaluations_and_what_validation_selects_with():
  """EvalConfig's example count and beam pick every checkpoint (training stages hold them);
  best-of-N and the held-out reward only change what an evaluation reports."""
  setting = stages.Setting(make_model(), "rest_demo_en_de", LENGTHS,
                           rewards.get("chrf", processes=1), 0)
  base = policy_eval.EvalConfig(max_examples=8)

  def records_with(config):
    policy = stages.training("bc", setting, config.selection, steps=1)
    return policy.record, stages.evaluation("eval_bc", setting, config, policy).record

  train, evaluation = records_with(base)
  for change, retrains in (({"max_examples": 9}, True), ({"beam_size": 2}, True),
                           ({"best_of_n": 8}, False),
                           ({"held_out_reward": rewards.get("bleu")}, False)):
    other_train, other_eval = records_with(dataclasses.replace(base, **change))
    assert other_eval != evaluation, change
    assert (other_train != train) == retrains, change


def test_a_models_loss_settings_vocabulary_and_a_tasks_rows_are_in_the_setting(tmp_path):
  chrf = rewards.get("chrf", processes=1)

  def setting(model=None, task="rest_demo_en_de"):
    return records.describe(stages.Setting(model or make_model(), task, LENGTHS, chrf, 0))

  base = setting()
  for model in (make_model(), ):
    assert setting(model) == base  # the same settings: the same record
  from rest_jax.models import model as model_lib  # pylint: disable=g-import-not-at-top

  def with_loss(**kwargs):
    m = make_model()
    return model_lib.EncoderDecoderModel(m.module, m.input_vocabulary, m.output_vocabulary,
                                         decode_fn=decoding.temperature_sample, **kwargs)

  assert setting(with_loss(z_loss=1e-4)) != setting(with_loss(z_loss=0.0))
  assert setting(with_loss(label_smoothing=0.1)) != setting(with_loss(label_smoothing=0.0))
  other_vocab = make_model(vocabulary=vocab.DemoVocabulary(grammar="colour"), vocab_size=384)
  assert setting(other_vocab) != setting(make_model(vocabulary=vocab.DemoVocabulary(),
                                                    vocab_size=384))
  # The demo corpus's gin-bound flaw rate decides its rows.
  with gin.unlock_config():
    gin.bind_parameter("rest_jax.data.tasks.demo_corpus_sizes.flaw_rate", 0.3)
  try:
    assert setting() != base
  finally:
    gin.clear_config()
  assert setting() == base
  # A local corpus: its files' bytes.
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for split in ("train", "valid", "test"):
    (corpus / f"{split}.tsv").write_text("hola\thello\n")
  spm = vocab.DemoVocabulary().sentencepiece_model_file
  with gin.unlock_config():
    gin.bind_parameter("rest_jax.data.translation_tasks.task_vocabulary.sentencepiece_model_file",
                       spm)
  try:
    name = translation_tasks.parallel_corpus(name="stages_test_corpus", directory=str(corpus),
                                             source_lang="es", target_lang="en")
    before = identity.task(name)
    (corpus / "train.tsv").write_text("hola\thi\n")
    assert identity.task(name) != before
    assert identity.task(name)["source"]["train"]["files"][0]["file"] == "train.tsv"
  finally:
    gin.clear_config()


def test_an_unbound_deferred_vocabulary_equals_nothing_else():
  deferred = translation_tasks.DeferredVocabulary(translation_tasks.task_vocabulary)
  assert deferred != vocab.DemoVocabulary()
  assert deferred == translation_tasks.DeferredVocabulary(translation_tasks.task_vocabulary)
  assert translation_tasks.DeferredVocabulary(lambda: translation_tasks.task_vocabulary()) != (
      vocab.DemoVocabulary())


@pytest.mark.slow
def test_an_empty_filtered_bc_step_ends_its_arm_not_the_run(base_run, tmp_path, monkeypatch):
  """A threshold that keeps no original pair (an absolute one above every pair's reward):
  filtered BC stops there, the report says so, ReST's own steps still run."""
  model_dir, _, _ = base_run
  import shutil  # pylint: disable=g-import-not-at-top

  rerun = tmp_path / "rerun"
  shutil.copytree(model_dir, rerun)
  real, calls = improve.kept_rows, []

  def kept_rows(grown_dir, threshold, include_references, include_samples=True, row_keys=None):
    if include_references and not include_samples:  # filtered BC's: its first step is
      calls.append(threshold)                       # reused, its second keeps nothing
      if len(calls) == 2:
        raise improve.EmptyImproveStepError(f"threshold {threshold} keeps no rows")
    return real(grown_dir, threshold, include_references, include_samples, row_keys)

  monkeypatch.setattr(improve, "kept_rows", kept_rows)
  rows = _run(rerun)
  labels = [r.policy.split(" (tau")[0] for r in rows]
  assert "filtered BC G1 I1" in labels and "filtered BC G1 I2" not in labels
  assert "G1 I2" in labels  # ReST went on
  steps = _state(rerun)["steps"]
  assert list(_state(rerun)["summary"]["empty_steps"]) == ["filtered_bc_1_2"]
  assert "filtered_bc_1_2" not in steps and "eval_filtered_bc_1_2" not in steps
  assert "`filtered_bc_1_2` was not run: it keeps no rows" in (rerun / "report.md").read_text()


@pytest.mark.slow
def test_grow_from_a_dataset_scored_by_another_reward_is_refused(base_run, tmp_path):
  from rest_jax.data import grown  # pylint: disable=g-import-not-at-top

  model_dir, _, _ = base_run
  grow_dir, bc_dir = str(model_dir / "grow_1"), str(model_dir / "bc")
  rater = rewards.DemoRater(forms="full", flaw="dative")
  assert grown.sampled_from(grow_dir, bc_dir, rater) == grow_dir  # the reward it was scored by
  with pytest.raises(ValueError, match="scored by another reward"):
    grown.sampled_from(grow_dir, bc_dir, rewards.DemoRater(forms="full", flaw="adjective"))
  # Scored by a reward that reads references: its pairs carry none for this run's.
  import shutil  # pylint: disable=g-import-not-at-top

  copy = tmp_path / "grow_1"
  shutil.copytree(grow_dir, copy)
  manifest = json.loads((copy / grown.MANIFEST).read_text())
  manifest["metadata"].update(reward="chrf", reward_reads_references=True,
                              reward_identity="chrf")
  (copy / grown.MANIFEST).write_text(json.dumps(manifest))
  with pytest.raises(ValueError, match="reads references: its original pairs carry no reward"):
    grown.sampled_from(str(copy), bc_dir, rater)
  # And before any work: `rest` with GROW_FROM checks it first.
  with pytest.raises(ValueError, match="scored by another reward"):
    _run(tmp_path / "other", bc=rest.BCConfig(steps=2, from_dir=bc_dir), grow_from=grow_dir,
         reward=rewards.DemoRater(forms="full", flaw="adjective"))
  assert not (tmp_path / "other" / "rest_state.json").exists()
