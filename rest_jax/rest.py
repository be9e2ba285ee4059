"""The ReST loop: BC, then G Grow steps, each followed by I Improve steps at rising thresholds.

    policy_0 = BC                                   stage `bc`
    controls beside it: BC+                         stage `bc_plus` (rest_jax/controls.py)
    for g in 1..G:  D_g = Grow(policy)              stage `grow`
      for i in 1..I:  policy = Improve(policy, D_g filtered at tau_i)   stage `improve`
    select on validation; test for the selected policies; the report

Every policy is chosen on validation: BC trains until its validation reward stops
improving and keeps its best checkpoint; every Improve step keeps its best
checkpoint, and the next step (and the next Grow step) starts from it; the run's
ReST policy is the best on validation over BC and every Improve step. Test is
evaluated only for the selected policies (BC, the controls, ReST) and never chooses.

Every stage's output is a file (`rest_jax/layout.py`), so a re-run continues where it
stopped: a finished stage whose record (`rest_jax/stages.py`) is unchanged is skipped,
an unfinished one resumes, and a changed one is redone with what reads it.
"""

import io
import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple
import zlib

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from rest_jax import controls, files, grow as grow_lib, improve as improve_lib, layout, losses
from rest_jax import partitioning, policy_eval, records, report
from rest_jax import selection as selection_lib
from rest_jax import stages
from rest_jax import train as train_lib
from rest_jax import trainer as trainer_lib
from rest_jax.context import Policy, StepContext
from rest_jax.roles import Role
from rest_jax.rows import PolicyRow
from rest_jax.data import corpus_metrics, grown, identity, pipeline
from rest_jax.rewards import Reward
from rest_jax.run_state import RunState

STATE_FILE = layout.STATE_FILE
SELECTION_SPLIT = "validation"


BCConfig = train_lib.BCConfig  # BC's settings, whole (gin: `train.BCConfig`)


class _Run:
  """One `rest` run's stages over its shared state (context, evaluator, compiled steps)."""

  def __init__(self, *, model, model_dir: str, train_dataset_cfg: pipeline.DatasetConfig,
               reward: Reward, bc: BCConfig, grow: grow_lib.GrowConfig,
               improve: improve_lib.ImproveConfig, evaluation: policy_eval.EvalConfig,
               arms: controls.ArmsConfig, partitioner: partitioning.Partitioner,
               checkpoint_period: int, seed: int, progress_bar: bool):
    self.model, self.model_dir = model, model_dir
    self.rows_rater = arms.rows_rater
    self.train_dataset_cfg, self.bc_steps = train_dataset_cfg, bc.steps
    self.reward, self.grow_config, self.improve_config = reward, grow, improve
    self.evaluation, self.bc_selection = evaluation, bc.selection
    self.bc_learning_rate, self.initial_checkpoint_path = bc.learning_rate, bc.initial_checkpoint_path
    self.task = train_dataset_cfg.mixture_or_task_name
    self.lengths = dict(train_dataset_cfg.task_feature_lengths)
    self.state = RunState.load(model_dir)
    # What this run finds (rows, picks, thresholds): the state file keeps the last run's
    # until this one's report replaces it.
    self.summary: Dict[str, Any] = {}
    self.policy_trainer = trainer_lib.Trainer(
        model, partitioner, trainer_lib.batch_input_shapes(train_dataset_cfg.batch_size,
                                                           self.lengths),
        learning_rate=bc.learning_rate)
    self.evaluator = policy_eval.PolicyEvaluator(
        model, partitioner, self.policy_trainer.params_sharding, reward, evaluation, seed=seed)
    self.writer = files.summary_writer(files.join(model_dir, layout.SUMMARIES),
                                       is_chief=jax.process_index() == 0)
    self.context = StepContext(
        model=model, partitioner=partitioner, task=self.task, feature_lengths=self.lengths,
        reward=reward, seed=seed, checkpoint_period=checkpoint_period,
        progress_bar=progress_bar, validate=self.validate)
    self.num_improve = grow.steps * len(improve.thresholds.values)
    self.improve_total = self.num_improve * improve.steps
    # What every stage's record holds: the model, the task's rows, the reward, the seed.
    self.setting = stages.Setting(model, self.task, self.lengths, reward, seed)
    self.specs: Dict[str, stages.Spec] = {}  # every stage this run declared, in order
    self._compiled: Dict[str, Any] = {}  # once per run: every Grow and Improve step uses them
    self._columns: Dict[int, Any] = {}  # per Grow step: its rows' columns and rated scores
    self._arm_evals = 0  # the arms' evaluations so far: each its own TensorBoard step

  # --- shared -----------------------------------------------------------------

  def validate(self, params) -> float:
    return self.evaluator.validation_reward(params, self.task, SELECTION_SPLIT, self.lengths,
                                            self.evaluation.max_examples)

  def declare(self, spec: stages.Spec) -> stages.Spec:
    self.specs[spec.name] = spec
    return spec

  def training_spec(self, name: str, after=(), **inputs) -> stages.Spec:
    """A training stage: its checkpoint is picked on validation (`EvalConfig.selection`)."""
    return self.declare(stages.training(name, self.setting, self.evaluation.selection,
                                        after=tuple(after), **inputs))

  def eval_spec(self, name: str, policy: stages.Spec, splits=None) -> stages.Spec:
    return self.declare(stages.evaluation(name, self.setting, self.evaluation, policy, splits))

  def where(self, path: str) -> str:
    """A step's input as its record holds it (`layout.relative`)."""
    return layout.relative(self.model_dir, path)

  def improve_trainer(self) -> trainer_lib.Trainer:
    if "improve" not in self._compiled:
      self._compiled["improve"] = self.improve_config.trainer(self.context,
                                                              self.improve_config.steps)
    return self._compiled["improve"]

  def bc_plus_trainer(self) -> trainer_lib.Trainer:
    config = self.improve_config
    if config.loss.name == "bc" and config.schedule_ignores_length:  # Improve's own step
      return self.improve_trainer()
    if "bc_plus" not in self._compiled:
      self._compiled["bc_plus"] = controls.bc_plus_trainer(config, self.context,
                                                           self.improve_total)
    return self._compiled["bc_plus"]

  def trainer_of(self, role: str) -> trainer_lib.Trainer:
    if role == Role.BC:
      return self.policy_trainer
    if role == Role.BC_PLUS:
      return self.bc_plus_trainer()
    arm = next((a for a in controls.ARMS if a.role == role), None)
    return self.arm_trainer(arm) if arm else self.improve_trainer()

  def evaluate(self, label: str, index: int, params, splits=(SELECTION_SPLIT,)
               ) -> Dict[str, Any]:
    tick = time.perf_counter()
    out = {}
    for split in splits:
      for key, value in self.evaluator(params, self.task, split, self.lengths,
                                       self.evaluation.max_examples).items():
        out[f"{split}/{key}"] = value
    self.writer.write_scalars(index, {k: v for k, v in out.items()
                                      if k.endswith(("reward", "bleu", "chrf"))})
    logging.info("rest eval %s: %s", label, out)
    return {"policy": label, "index": index, "metrics": out,
            "seconds": time.perf_counter() - tick}

  # --- stages -----------------------------------------------------------------

  def bc(self, bc_from: Optional[str]) -> Policy:
    """BC to convergence on validation (or another run's finished BC): the BC policy."""
    bc_dir = selection_lib.finished_bc(bc_from) if bc_from else os.path.join(self.model_dir, layout.BC)
    if bc_from:  # another run's BC: as that run recorded it, and its picked checkpoint
      source = layout.read_state(os.path.dirname(os.path.normpath(bc_dir))) or {}
      spec = self.declare(stages.Spec(layout.BC, {
          "from": self.where(bc_dir),
          "record": source.get("configs", {}).get(layout.BC),
          "selection": identity.file_digest(files.join(bc_dir, selection_lib.SELECTION_FILE))}))
    else:
      spec = self.training_spec(
          layout.BC, data=self.train_dataset_cfg, steps=self.bc_steps,
          selection=self.bc_selection, learning_rate=self.bc_learning_rate,
          optimizer=self.policy_trainer.optimizer,
          initial_checkpoint_path=self.initial_checkpoint_path)
    overlength = lambda: pipeline.overlength_count(self.train_dataset_cfg)  # noqa: E731

    def reuse():
      summary, source = selection_lib.summary_of(bc_dir), spec.inputs.get("record") or {}
      steps = source.get("steps", source.get("bc_steps"))  # the source run's BC_STEPS
      if steps is not None:  # early means before them, as `train` below counts it
        summary["stopped_early"] = bool(summary["stopped_early"] and
                                        (summary["last_step"] or 0) < steps)
      return {"seconds": 0.0, "selection": summary, "reused_from": bc_dir,
              "overlength_examples": overlength()}

    def train():
      tick = time.perf_counter()
      sel = selection_lib.Selection(bc_dir, self.bc_selection)
      train_lib.train(model=self.model, train_dataset_cfg=self.train_dataset_cfg,
                      model_dir=bc_dir, total_steps=self.bc_steps,
                      partitioner=self.context.partitioner,
                      checkpoint_cfg=train_lib.CheckpointConfig(self.context.checkpoint_period),
                      seed=self.context.seed,
                      progress_bar=self.context.progress_bar, selection=sel,
                      validate=self.validate, learning_rate=self.bc_learning_rate,
                      initial_checkpoint_path=self.initial_checkpoint_path)
      summary = sel.summary()
      # Early means before BC_STEPS: patience running out at the last step is not early.
      summary["stopped_early"] = bool(summary["stopped_early"] and
                                      (summary["last_step"] or 0) < self.bc_steps)
      sel.close()
      return {"seconds": time.perf_counter() - tick, "selection": summary,
              "overlength_examples": overlength()}

    if bc_from:
      self.state.run(spec, True, reuse)
    else:
      self.state.run(spec, selection_lib.Selection(bc_dir).finished, train, [bc_dir])
    state = selection_lib.restore_selected(bc_dir, self.policy_trainer.abstract_state)
    return Policy(state.params, state.opt_state, bc_dir, spec)

  @staticmethod
  def row(evaluation: Dict[str, Any], role: Role, directory: str, stage: stages.Spec,
          **fields) -> PolicyRow:
    """The report's row of a policy from its evaluation (`evaluate`'s result)."""
    return PolicyRow(policy=evaluation["policy"], role=role, directory=directory,
                     metrics=dict(evaluation["metrics"]), index=evaluation["index"],
                     seconds=evaluation.get("seconds", 0.0), stage=stage, **fields)

  def bc_row(self, bc: Policy) -> PolicyRow:
    evaluation = self.state.run(self.eval_spec("eval_bc", bc.stage), True,
                                lambda: self.evaluate(Role.BC, 0, bc.params))
    return self.row(evaluation, Role.BC, bc.directory, bc.stage,
                    optimizer_steps=selection_lib.best_step_of(bc.directory))

  def bc_plus(self, bc: Policy) -> PolicyRow:
    """The equal-compute control: BC continued for as many steps as all Improve steps."""
    out_dir = os.path.join(self.model_dir, layout.BC_PLUS)
    config, trainer = self.improve_config, self.bc_plus_trainer()
    spec = self.training_spec(
        layout.BC_PLUS, after=[bc.stage], steps=self.improve_total,
        improve=records.improve_record(controls.bc_plus_config(config)),
        optimizer=trainer.optimizer,
        learning_rate=records.rates(config.learning_rate_for(self.improve_total),
                                    self.improve_total))
    self.state.run(
        spec, selection_lib.Selection(out_dir).finished,
        lambda: _step_summary(controls.bc_plus_step(
            bc, config, self.context, output_dir=out_dir, total_steps=self.improve_total,
            trainer=trainer)),
        [out_dir])
    params = selection_lib.restore_selected(out_dir, trainer.abstract_state).params
    evaluation = self.state.run(self.eval_spec("eval_bc_plus", spec), True,
                                lambda: self.evaluate(Role.BC_PLUS, -1, params))
    bc_steps = selection_lib.best_step_of(bc.directory)
    return self.row(evaluation, Role.BC_PLUS, out_dir, spec, bc_steps=bc_steps,
                    optimizer_steps=bc_steps + selection_lib.best_step_of(out_dir))

  def arm_trainer(self, arm: controls.Arm) -> trainer_lib.Trainer:
    """An arm's compiled step: Improve's own when it has Improve's loss (or BC is it)."""
    if arm.improve_loss or self.improve_config.loss.name == "bc":
      return self.improve_trainer()
    return self._compiled.setdefault("bc_loss", self.improve_config.trainer(
        self.context, self.improve_config.steps, loss=losses.OfflineRLLoss("bc")))

  def arm(self, arm: controls.Arm, bc: Policy, bc_row: PolicyRow, grow_dir: str,
          rest_taus: List[float]) -> List[PolicyRow]:
    """A chain beside ReST's (`controls.Arm`) from BC on Grow 1's rows; filtered BC at its
    own thresholds, the others at ReST's Grow 1 ones."""
    config = self.improve_config
    if arm is controls.FILTERED_BC:
      taus = controls.reference_thresholds(config, grow_dir)
      self.summary.setdefault("thresholds", {})["filtered_bc"] = taus
    else:
      taus = rest_taus
    trainer = self.arm_trainer(arm)
    grown_spec = self.specs[layout.grow_name(1)]
    policy, rows, index = bc, [], 0
    for g in range(1, (arm.grow_steps or self.grow_config.steps) + 1):
      for i, tau in enumerate(taus, start=1):
        index, self._arm_evals = index + 1, self._arm_evals + 1
        name = layout.arm_step_name(arm.prefix, g, i)
        out_dir = os.path.join(self.model_dir, name)
        place = improve_lib.Place(g, i, self.grow_config.steps)
        keys = controls.random_row_keys(grow_dir, improve_lib.kept_rows(
            grow_dir, tau, config.references == "keep")["samples"],
            place.seed(self.context.seed + arm.seed_offset)) if arm.random else None
        try:  # e.g. an absolute threshold that no original pair reaches: filtered BC ends
          improve_lib.kept_rows(grow_dir, tau, arm.references, arm.samples, keys)
        except improve_lib.EmptyImproveStepError as e:
          logging.warning("rest: %s keeps no rows, so %s stops here (ReST goes on): %s",
                          name, arm.role, e)
          self.summary.setdefault("empty_steps", {})[name] = str(e)
          return rows
        own = arm.config(config)
        kl_weight = own.loss.kl_weight(index - 1, self.num_improve)
        spec = self.training_spec(
            name, after=[policy.stage, grown_spec], arm=arm, threshold=tau,
            rows=None if keys is None else int(zlib.crc32(keys.tobytes())),
            improve=records.improve_record(own), optimizer=trainer.optimizer,
            kl_weight=kl_weight)
        result = self.state.run(
            spec, selection_lib.Selection(out_dir).finished,
            lambda start=policy, tau=tau, place=place, out_dir=out_dir, keys=keys: _step_summary(
                controls.arm_step(start, arm, config, self.context, grown_dir=grow_dir,
                                  threshold=tau, output_dir=out_dir, place=place,
                                  trainer=trainer, row_keys=keys, reference_params=bc.params,
                                  kl_weight=kl_weight)),
            [out_dir])
        state = selection_lib.restore_selected(out_dir, trainer.abstract_state)
        policy = Policy(state.params, state.opt_state, out_dir, spec)
        label = f"{arm.role} G{g} I{i}" + ("" if arm.random else f" (tau={tau:.3f})")
        evaluation = self.state.run(self.eval_spec(f"eval_{name}", spec), True,
                                    lambda label=label, p=state.params, at=-1 - self._arm_evals:
                                    self.evaluate(label, at, p))
        rows.append(self.row(
            evaluation, arm.role, out_dir, spec, grow_step=g, improve_step=i,
            kept_samples=result["metrics"]["kept_samples"],
            kept_references=result["metrics"]["kept_references"],
            trains_on=self.trains_on(1, grow_dir, tau, arm.references, arm.samples, keys),
            optimizer_steps=(rows[-1] if rows else bc_row).optimizer_steps
            + selection_lib.best_step_of(out_dir)))
    return rows

  def rated_rows(self, g: int, grow_dir: str) -> Optional[np.ndarray]:
    """The rows rater's score of every row of Grow step g (None without a rater)."""
    rater = self.rows_rater
    if rater is None:
      return None
    path = layout.rated_rows_path(self.model_dir, g)

    def rate():
      tick = time.perf_counter()
      texts = grown.read_texts(grown.shard_paths(grow_dir, grown.load_manifest(
          grow_dir, verify_counts=False)))
      reference = {sid: t for sid, t, ref in zip(texts["source_id"], texts["targets"],
                                                 texts["is_reference"]) if ref}
      # A rater that reads references never rates a reference against itself: nan there.
      rated = [k for k, ref in enumerate(texts["is_reference"])
               if not (ref and rater.needs_reference)]
      scores = np.full(len(texts["targets"]), np.nan, np.float32)
      scores[rated] = rater([texts["inputs"][k] for k in rated],
                            [texts["targets"][k] for k in rated],
                            [reference.get(texts["source_id"][k], "") for k in rated])
      if jax.process_index() == 0:
        buffer = io.BytesIO()
        np.save(buffer, scores)
        files.atomic_write_bytes(path, buffer.getvalue())
      return {"seconds": time.perf_counter() - tick, "rows": int(scores.size)}

    spec = self.declare(stages.Spec(f"rate_{layout.grow_name(g)}", {"rater": rater},
                                    (self.specs[layout.grow_name(g)],)))
    self.state.run(spec, files.exists(path), rate, [path])
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"rest: rated rows of Grow {g}")
    return np.load(io.BytesIO(files.read_bytes(path)))

  def trains_on(self, g: int, grow_dir: str, tau: float, references: bool, samples: bool = True,
                keys: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """The rows a step trains on, per kind: count, mean reward, mean rows-rater score."""
    if g not in self._columns:
      manifest = grown.load_manifest(grow_dir, verify_counts=False)
      self._columns[g] = (grown.read_columns(grown.shard_paths(grow_dir, manifest)),
                          self.rated_rows(g, grow_dir))
    columns, rated = self._columns[g]
    keep = improve_lib.kept_mask(columns, tau, references, samples, keys)
    return improve_lib.kept_quality(columns, keep, rated)

  def grow(self, g: int, policy: Policy, grow_from: Optional[str]) -> str:
    """Grow step g from `policy` (or, for g = 1, another run's grown dataset): its folder."""
    out_dir = os.path.join(self.model_dir, layout.grow_name(g))
    if g == 1 and grow_from:  # another run's, by its manifest (what it sampled, how)
      out_dir = grow_from
      spec = self.declare(stages.Spec(layout.grow_name(1), {
          "from": self.where(grow_from),
          "manifest": identity.file_digest(files.join(grow_from, grown.MANIFEST))},
          (policy.stage,)))
    else:
      spec = self.declare(stages.Spec(layout.grow_name(g), {
          "setting": self.setting, "grow": self.grow_config}, (policy.stage,)))
    if g == 1 and grow_from:

      def reuse():
        manifest = grown.load_manifest(out_dir, verify_counts=False)
        return {"seconds": 0.0, "reused_from": out_dir, "samples": manifest["num_samples"],
                "counts": manifest.get("counts", {})}

      self.state.run(spec, True, reuse)
      return out_dir

    def sample():
      if "grow" not in self._compiled:
        self._compiled["grow"] = grow_lib.Decoders(
            self.model, self.context.partitioner, self.policy_trainer.params_sharding,
            self.grow_config.num_samples, self.grow_config.sampling)
      return grow_lib.grow_step(policy, self.grow_config, self.context, output_dir=out_dir,
                                grow_step=g, params_sharding=self.policy_trainer.params_sharding,
                                decoders=self._compiled["grow"])

    self.state.run(spec, files.exists(files.join(out_dir, grown.MANIFEST)), sample, [out_dir])
    return out_dir

  def thresholds(self, g: int, grow_dir: str) -> List[float]:
    """tau_1 < ... < tau_I of Grow step g (quantiles are over its samples, never references)."""
    manifest = grown.load_manifest(grow_dir, verify_counts=False)
    taus = self.improve_config.thresholds.resolve(
        grown.sample_rewards(grown.shard_paths(grow_dir, manifest)))
    self.summary.setdefault("thresholds", {})[str(g)] = taus
    self.coverage(g, grow_dir)
    return taus

  def coverage(self, g: int, grow_dir: str) -> None:
    """The share of Grow step g's sources with a sample that the task's coverage function
    finds right (the colour demo: the colour), when the task registers one."""
    if corpus_metrics.get_coverage_fn(self.task) is None:
      return
    sources, samples = grown.samples_by_source(grow_dir)
    self.summary.setdefault("coverage", {})[str(g)] = corpus_metrics.coverage(
        self.task, sources, samples)

  def improve(self, g: int, i: int, index: int, tau: float, policy: Policy, grow_dir: str,
              bc: Policy) -> Tuple[PolicyRow, Policy]:
    """Improve step i of Grow step g (the run's `index`-th, 1-based) from `policy`: its
    row, and its policy (the next step's start)."""
    out_dir = os.path.join(self.model_dir, layout.improve_name(g, i))
    config, place = self.improve_config, improve_lib.Place(g, i, self.grow_config.steps)
    per_grow = len(config.thresholds.values)  # what `improve_step` weighs its KL term by
    spec = self.training_spec(
        layout.improve_name(g, i), after=[policy.stage, self.specs[layout.grow_name(g)]],
        threshold=tau, kl_weight=config.loss.kl_weight(place.index(per_grow),
                                                       place.total(per_grow)),
        improve=records.improve_record(config), optimizer=self.improve_trainer().optimizer,
        learning_rate=records.rates(config.learning_rate_for(config.steps), config.steps))
    result = self.state.run(
        spec, selection_lib.Selection(out_dir).finished,
        lambda: _step_summary(improve_lib.improve_step(
            policy, config, self.context, grown_dir=grow_dir, threshold=tau,
            output_dir=out_dir, place=place, reference_params=bc.params,
            trainer=self.improve_trainer())),
        [out_dir])
    state = selection_lib.restore_selected(out_dir, self.improve_trainer().abstract_state)
    evaluation = self.state.run(self.eval_spec(f"eval_{g}_{i}", spec), True,
                                lambda: self.evaluate(f"G{g} I{i} (tau={tau:.3f})", index,
                                                      state.params))
    row = self.row(evaluation, Role.REST, out_dir, spec, grow_step=g, improve_step=i,
                   kept_samples=result["metrics"]["kept_samples"],
                   kept_references=result["metrics"]["kept_references"],
                   trains_on=self.trains_on(g, grow_dir, tau, config.references == "keep"))
    return row, Policy(state.params, state.opt_state, out_dir, spec)

  def select(self, rows: List[PolicyRow], bc_from: Optional[str]) -> PolicyRow:
    """The ReST policy: the best on validation over BC and every Improve step; each arm's
    likewise over BC and its steps; and the best control on validation (BC, BC+, filtered
    BC's and random selection's picks), ReST's yardstick."""
    key = f"{SELECTION_SPLIT}/reward"
    best = lambda candidates: max(candidates, key=lambda r: r.metrics[key])  # noqa: E731
    picks, summary = {}, self.summary  # picks name rows by `PolicyRow.id`
    for arm in controls.ARMS:
      chain = [r for r in rows if r.role == arm.role]
      if chain:  # the arm's own pick (BC itself if no step of it beat BC)
        pick = best([rows[0]] + chain)
        pick.arm_selected = pick is not rows[0]
        picks[arm.role] = pick.id
    summary["arm_selected"] = picks
    control_roles = [arm.role for arm in controls.CONTROL_ARMS]
    controls_ = [r for r in rows if r.role in (Role.BC, Role.BC_PLUS) or (
        r.arm_selected and r.role in control_roles)]
    summary["best_control"] = best(controls_).id
    chosen = best([r for r in rows if r.role in (Role.BC, Role.REST)])  # the first of the best
    chosen.selected = True
    summary["selected"] = chosen.id
    # Where the selected policy is, relative to the run (`commands.policy_checkpoint`).
    summary["selected_dir"] = (
        os.path.abspath(chosen.directory) if bc_from and chosen.role == Role.BC
        else os.path.relpath(chosen.directory, self.model_dir))
    return chosen

  def test(self, rows: List[PolicyRow]) -> None:
    """The other splits (test), for BC, BC+, each arm's pick and the selected policy only."""
    others = [s for s in self.evaluation.splits if s != SELECTION_SPLIT]
    for row in rows:
      if row.role not in (Role.BC, Role.BC_PLUS) and not (row.selected or row.arm_selected):
        continue
      params = selection_lib.restore_selected(
          row.directory, self.trainer_of(row.role).abstract_state).params

      def evaluate(p=params, row=row):
        out = self.evaluate(row.policy, row.index, p, others)
        if jax.process_index() == 0 and others:  # the last split's (test's) outputs
          files.makedirs(files.join(self.model_dir, "outputs"))
          files.atomic_write_text(layout.outputs_path(self.model_dir, row.directory, others[-1]),
                                  json.dumps(self.evaluator.last_outputs))
        return out

      name = row.stage.name  # BC_FROM's folder may be named apart: its stage is `bc`
      extra = self.state.run(self.eval_spec("test_" + name, row.stage, others), True,
                             evaluate)
      row.metrics = {**row.metrics, **extra["metrics"]}

  def write_report(self, rows: List[PolicyRow]) -> None:
    # The learned reward's own held-out agreement (its reward_model.json), for the report
    # and for `seeds` (the reward's flaw accuracy beside ReST's margin).
    summary = self.state.summary = self.summary
    summary["reward_quality"] = dict(getattr(self.reward, "held_out", {}) or {})
    summary["reward_reads_references"] = bool(self.reward.needs_reference)
    summary["reward_name"] = self.reward.name
    self.state.forget_others(self.specs)
    summary["rows"] = [r.to_json(self.where) for r in rows]
    self.state.save()
    self.writer.flush()
    if jax.process_index() == 0:
      n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(
          self.policy_trainer.abstract_state.params))
      header = report.what_was_run(self.model, n_params, self.task, self.lengths, self.reward,
                                   self.grow_config, self.improve_config, self.evaluation,
                                   rows, self.state.steps, summary)
      report.write_report(self.model_dir, rows, self.state.steps, summary, self.evaluation, header,
                          SELECTION_SPLIT)


def rest(
    *,
    model,
    model_dir: str,
    train_dataset_cfg: pipeline.DatasetConfig,
    reward: Reward,
    bc: BCConfig,
    grow: grow_lib.GrowConfig = grow_lib.GrowConfig(),
    improve: improve_lib.ImproveConfig = improve_lib.ImproveConfig(),
    evaluation: policy_eval.EvalConfig = policy_eval.EvalConfig(),
    arms: controls.ArmsConfig = controls.ArmsConfig(),
    grow_from: Optional[str] = None,
    partitioner: Optional[partitioning.Partitioner] = None,
    checkpoint_period: int = 200,
    seed: int = 0,
    progress_bar: bool = True,
) -> List[PolicyRow]:
  """Runs (or resumes) the whole ReST loop, its BC+ control, and writes the report.

  Args:
    model: the policy (t5x API).
    model_dir: everything of the run goes here (`rest_jax/layout.py`).
    train_dataset_cfg: BC data (its task also provides Grow's sources and evaluation).
    reward: scores samples in Grow, and is what selection maximises on validation.
    bc: BC's steps, selection, learning rate and start (`BCConfig`).
    grow: G, N, the sampling configuration and Grow's batching.
    improve: thresholds (I = their number), loss, steps, optimizer and validation
      period of Improve; each Improve step's policy is its best checkpoint.
    evaluation: how every policy is evaluated (validation for all, the other splits
      for the selected ones).
    arms: which controls and ablations run beside ReST, and what rates the rows each
      step trains on (`controls.ArmsConfig`).
    grow_from: the `grow_1/` directory of another run, sampled from the same BC policy
      (so `bc.from_dir` is that run's `bc/`): this run's first grown dataset, read where it
      is; e.g. to try other thresholds or losses on the same samples.
    partitioner: the mesh.
    checkpoint_period: steps between checkpoints.
    seed: every random choice of the run derives from it.
    progress_bar: tqdm bars.

  Returns:
    The report's rows: BC, BC+ and one per Improve step, each with its validation
    metrics; BC, BC+ and the selected ReST policy also with the other splits'.
  """
  improve.thresholds.validate(reward.range)
  if improve.loss.name == "oac" and grow.num_samples < 2:
    raise ValueError("OAC's baseline is the mean reward of a source's other samples: it needs"
                     f" NUM_SAMPLES >= 2, not {grow.num_samples}")
  if improve.mix_ratio > 0:
    improve.loss.validate_rows(1, f"mixed-in original pairs (MIX_RATIO {improve.mix_ratio})")
  if grow_from:  # checked before any work
    grow_from = grown.sampled_from(
        grow_from, bc.from_dir or os.path.join(model_dir, layout.BC), reward)
  files.makedirs(model_dir)
  run = _Run(model=model, model_dir=model_dir, train_dataset_cfg=train_dataset_cfg,
             reward=reward, bc=bc, grow=grow, improve=improve, evaluation=evaluation,
             arms=arms, partitioner=partitioner or partitioning.Partitioner(),
             checkpoint_period=checkpoint_period, seed=seed, progress_bar=progress_bar)
  bc_from, chains = bc.from_dir, arms.chains(reward, improve)
  bc = run.bc(bc_from)
  rows = [run.bc_row(bc)]
  if arms.bc_plus and run.improve_total:
    rows.append(run.bc_plus(bc))
  policy, index = bc, 0
  for g in range(1, grow.steps + 1):
    grow_dir = run.grow(g, policy, grow_from)
    taus = run.thresholds(g, grow_dir)
    for arm in chains if g == 1 and run.improve_total else ():
      rows += run.arm(arm, bc, rows[0], grow_dir, taus)
    for i, tau in enumerate(taus, start=1):
      index += 1
      row, policy = run.improve(g, i, index, tau, policy, grow_dir, bc)
      row.optimizer_steps = rows[-1 if rows[-1].role == Role.REST else 0].optimizer_steps \
          + selection_lib.best_step_of(row.directory)
      rows.append(row)
  run.select(rows, bc_from)
  run.test(rows)
  run.write_report(rows)
  return rows



def _step_summary(result) -> Dict[str, Any]:
  """A training step's result as the state file keeps it."""
  return {"metrics": dict(result.metrics), "seconds": result.seconds}
