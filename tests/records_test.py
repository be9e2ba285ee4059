"""The step record: derived from every field of a step's configuration, so that changing
any one redoes exactly that step and the ones after it, and the log names the field; the
optimizer state carried between BC and Improve; BC+'s schedule over its whole run."""

import dataclasses
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rest_jax import grow, improve, layout, losses, policy_eval, records, rewards, run_state
from rest_jax import sampling
from rest_jax import selection, stages
from rest_jax import trainer as trainer_lib
from rest_jax.data import pipeline, tasks
from tests.conftest import make_model

GROW = grow.GrowConfig()
IMPROVE = improve.ImproveConfig(
    optimizer=trainer_lib.default_optimizer,
    learning_rate=trainer_lib.LearningRateConfig(3e-4, "linear"))
BC_DATA = pipeline.DatasetConfig("task", {"inputs": 8, "targets": 8}, "train", 16)
BC_SELECTION = selection.SelectionConfig(eval_period=100, patience=5)

# A value to change each field to (a field missing here fails the test: add it).
OTHER = {
    "steps": 2, "split": "validation", "max_sources": 7, "num_samples": 9,
    "sampling": sampling.SamplingConfig(temperature=0.5), "batch_size": 3, "shard_size": 5,
    "overlength": "error", "references": "drop", "mix_ratio": 0.25,
    "optimizer": lambda learning_rate: optax.adam(learning_rate),
    "learning_rate": trainer_lib.LearningRateConfig(3e-4, "cosine"),
    "optimizer_state": "continue", "selection": selection.SelectionConfig(eval_period=7),
    "eval_period": 9, "patience": 2, "min_delta": 0.5,
    "mixture_or_task_name": "other", "task_feature_lengths": {"inputs": 4, "targets": 8},
    "shuffle": False, "seed": 3, "pack": True, "module": "other.module", "use_cached": True,
    "num_epochs": 2, "thresholds": rewards.ThresholdSchedule((0.1, 0.2)),
    "name": "gold", "gold_min_weight": 0.9, "gold_max_weight": 2.0,
    "gold_behaviour": "uniform", "temperature": 0.3, "top_fraction": 0.25, "kl_start": 0.5,
    "kl_end": 0.01, "max_ratio": 3.0, "loss": losses.OfflineRLLoss("oac"),
}


SETTING = stages.Setting(make_model(), tasks.DEMO_TASK, {"inputs": 8, "targets": 8},
                         rewards.get("chrf", processes=1), 0)


def _specs(bc_selection=BC_SELECTION, bc_data=BC_DATA, grow_config=GROW,
           improve_config=IMPROVE):
  """BC, Grow 1 and Improve 1/1 as `rest` declares them (`rest_jax/stages.py`)."""
  validation = policy_eval.EvalConfig().selection
  bc = stages.training("bc", SETTING, validation, data=bc_data, selection=bc_selection)
  grown = stages.Spec("grow_1", {"setting": SETTING, "grow": grow_config}, (bc,))
  step = stages.training("improve_1_1", SETTING, validation, after=(bc, grown),
                         improve=records.improve_record(improve_config),
                         optimizer=improve_config.optimizer_for(60))
  return [bc, grown, step]


def _variants():
  """(step, field path, specs) with one field of one step's config changed."""
  out = []
  for step, (key, config) in {"bc": ("bc_selection", BC_SELECTION),
                              "bc/data": ("bc_data", BC_DATA),
                              "grow_1": ("grow_config", GROW),
                              "improve_1_1": ("improve_config", IMPROVE),
                              "improve_1_1/loss": ("improve_config", IMPROVE)}.items():
    target = config.loss if step.endswith("/loss") else config
    for field in dataclasses.fields(target):
      if field.name not in OTHER:
        raise AssertionError(f"{type(target).__name__}.{field.name}: give it a value in OTHER")
      changed = dataclasses.replace(target, **{field.name: OTHER[field.name]})
      if step.endswith("/loss"):
        changed = dataclasses.replace(config, loss=changed)
      path = f"loss.{field.name}" if step.endswith("/loss") else field.name
      out.append((step.split("/")[0], path, _specs(**{key: changed})))
  return out


ORDER = ["bc", "grow_1", "improve_1_1"]


@pytest.mark.parametrize("step,field,changed", _variants(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_each_field_redoes_its_step_and_the_ones_after(step, field, changed, tmp_path, caplog):
  base = _specs()
  if field == "thresholds":  # each Improve step records its own tau instead
    assert records.changes(base[2].record, changed[2].record) == []
    return
  progress = run_state.RunState.load(str(tmp_path))
  for spec in base:
    progress.run(spec, False, lambda: {"done": 1})
  progress = run_state.RunState.load(str(tmp_path))
  ran = []
  with caplog.at_level(logging.WARNING):
    for spec in changed:
      progress.run(spec, True, lambda name=spec.name: ran.append(name) or {"done": 2},
                   [str(tmp_path / spec.name)])
  assert ran == ORDER[ORDER.index(step):], (field, ran)
  # The log line of the changed step names the field (by its dotted path).
  named = [m for m in caplog.messages if "its configuration changed" in m]
  assert named and f"{step}" in named[0] and field in named[0], named


def test_a_retrained_learned_reward_is_another_reward():
  """Rewards record their identity, not just their name."""
  assert records.describe(rewards.get("chrf", processes=1)) == {"identity": "chrf"}
  guarded = rewards.Guarded(rewards.get("chrf", processes=1), length_factor=0.1)
  assert records.describe(guarded) != records.describe(
      rewards.Guarded(rewards.get("chrf", processes=1)))


def _state_after(optimizer, params, steps=2):
  state = optimizer.init(params)
  for _ in range(steps):
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    _, state = optimizer.update(grads, state, params)
  return state


def test_continue_carries_bcs_moments_into_improves_other_schedule():
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
  bc = _state_after(optax.adafactor(3e-3), params)  # BC: a constant rate
  improve_opt = IMPROVE.optimizer_for(60)  # Improve: a linear schedule, another structure
  fresh = improve_opt.init(params)
  assert jax.tree_util.tree_structure(fresh) != jax.tree_util.tree_structure(bc)
  carried = trainer_lib.carry_optimizer_state(fresh, bc)
  assert jax.tree_util.tree_structure(carried) == jax.tree_util.tree_structure(fresh)
  np.testing.assert_array_equal(carried[0].v["b"], bc[0].v["b"])  # second moments go on
  assert int(carried[0].count) == 2
  # Between Improve steps: the moments go on, the schedule starts at its beginning.
  after = _state_after(improve_opt, params, steps=5)
  again = trainer_lib.carry_optimizer_state(improve_opt.init(params), after)
  assert int(again[0].count) == 5 and int(again[2].count) == 0


def test_bc_plus_schedule_spans_its_whole_run():
  """BC+ runs G x I x IMPROVE_STEPS steps: its linear decay reaches 0 at its end, not after
  the first IMPROVE_STEPS."""
  steps, total = 60, 180
  improve_rate = IMPROVE.learning_rate_for(steps)
  plus_rate = IMPROVE.learning_rate_for(total)
  assert float(improve_rate(steps)) == 0.0
  assert float(plus_rate(steps)) == pytest.approx(3e-4 * (1 - steps / total))
  assert float(plus_rate(total)) == 0.0
  params = {"w": jnp.ones((2, 2))}
  optimizer = IMPROVE.optimizer_for(total)
  state = optimizer.init(params)
  grads = {"w": jnp.ones((2, 2))}
  for _ in range(steps + 1):
    updates, state = optimizer.update(grads, state, params)
  assert float(jnp.abs(updates["w"]).max()) > 0  # still learning after IMPROVE_STEPS


def _spec(name, value, after=()):
  return stages.Spec(name, {"value": value}, tuple(after))


def test_a_stage_built_again_after_a_run_without_it_is_compared_with_its_last_record(
    tmp_path):
  """An arm turned off, then on again after its settings changed: redone, not reused."""
  progress = run_state.RunState.load(str(tmp_path))
  progress.run(_spec("arm", 1), False, lambda: {"done": 1})
  progress.forget_others({"bc"})  # a run without the arm
  assert "arm" not in progress.steps
  outputs = tmp_path / "arm_outputs"  # its checkpoints, trained under the old settings
  outputs.mkdir()
  again = run_state.RunState.load(str(tmp_path))
  again.run(_spec("arm", 2), True, lambda: {"done": 2}, [str(outputs)])
  assert not outputs.exists()  # redone from scratch, not read back as finished
  assert again.steps["arm"]["done"] == 2


def test_a_redo_killed_halfway_is_redone_not_taken_for_done(tmp_path):
  """A stage being redone (its settings or what it reads changed) loses its old result
  before any work: killed there, the next run redoes it instead of keeping the old one."""
  progress = run_state.RunState.load(str(tmp_path))
  bc, evaluation = _spec("bc", 1), _spec("eval_bc", "config", [_spec("bc", 1)])
  progress.run(bc, False, lambda: {"done": 1})
  progress.run(evaluation, True, lambda: {"metric": "old"})
  killed = run_state.RunState.load(str(tmp_path))
  new_bc = _spec("bc", 2)
  killed.run(new_bc, False, lambda: {"done": 2})  # BC retrained: its evaluation is redone

  def kill():
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    killed.run(_spec("eval_bc", "config", [new_bc]), True, kill)
  resumed = run_state.RunState.load(str(tmp_path))
  ran = []
  resumed.run(new_bc, True, lambda: {"done": 2})
  resumed.run(_spec("eval_bc", "config", [new_bc]), True,
              lambda: ran.append("eval") or {"metric": "new"})
  assert ran == ["eval"] and resumed.steps["eval_bc"]["metric"] == "new"



def test_the_run_summary_is_kept_apart_from_the_steps_results(tmp_path):
  """A state file from before the summary had its own place (its rows and thresholds among
  the steps) loads with them in the summary, and is saved that way; `layout.read_summary`
  reads both."""
  path = tmp_path / layout.STATE_FILE
  rows = [{"policy": "BC", "role": "BC", "metrics": {}}]
  path.write_text(json.dumps({"steps": {"bc": {"seconds": 1.0}, "rows": rows,
                                        "thresholds": {"1": [0.5]}}, "configs": {}}))
  assert layout.read_summary(str(tmp_path)) == {"rows": rows, "thresholds": {"1": [0.5]}}
  state = run_state.RunState.load(str(tmp_path))
  assert state.steps == {"bc": {"seconds": 1.0}}
  assert state.summary == {"rows": rows, "thresholds": {"1": [0.5]}}
  state.save()
  saved = json.loads(path.read_text())
  assert saved["steps"] == {"bc": {"seconds": 1.0}} and saved["summary"]["rows"] == rows
  assert layout.read_summary(str(tmp_path))["thresholds"] == {"1": [0.5]}
