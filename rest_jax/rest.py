"""The ReST loop: BC, then G Grow steps, each followed by I Improve steps at rising thresholds.

    MODEL_DIR/
      bc/                          the behaviour-cloning policy: checkpoints/ to resume,
                                   best/ (its best validation checkpoint), selection.json
      bc_plus/                     the equal-compute control (BC continued), likewise
      grow_1/                      grown dataset of Grow step 1 (shards + manifest)
      improve_1_1/                 Improve step 1 of Grow step 1, likewise ...
      rest_state.json              what is done, with every evaluation and timing
      report.md, *.png             the final table and plots

Every policy is chosen on validation: BC trains until its validation reward stops
improving and keeps its best checkpoint; every Improve step keeps its best
checkpoint, and the next step (and the next Grow step) starts from it; the run's
ReST policy is the best on validation over BC and every Improve step. Test is
evaluated only for the selected policies (BC, BC+, ReST) and never chooses.

Every step's output is a file, so `rest` re-run after a crash continues where it
stopped: a finished step (its selection file says so, or its manifest exists) is
skipped, an unfinished one resumes (checkpoints, finished shards), and once a step
has been (re)done, every later step is redone from scratch on top of it.
"""

import dataclasses
import json
import os
import resource
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

from absl import logging
from clu import metric_writers
import jax
import numpy as np
from jax.experimental import multihost_utils

from rest_jax import controls, files, grow as grow_lib, improve as improve_lib
from rest_jax import partitioning, policy_eval, records, report, selection as selection_lib
from rest_jax import train as train_lib
from rest_jax import trainer as trainer_lib
from rest_jax.context import Policy, StepContext
from rest_jax.data import grown, pipeline
from rest_jax.rewards import Reward

STATE_FILE = "rest_state.json"


def memory_mb() -> Dict[str, float]:
  """This process's resident memory now and its peak so far, in MiB (Linux)."""
  out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
  try:
    with open("/proc/self/statm") as f:
      out["rss_mb"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
  except OSError:
    pass
  return out


@dataclasses.dataclass
class _Progress:
  """The state file: finished steps with their results and configs; written atomically."""

  path: str
  steps: Dict[str, Any] = dataclasses.field(default_factory=dict)
  # Each step's configuration as it was when the step started (what makes a result stale).
  configs: Dict[str, Any] = dataclasses.field(default_factory=dict)
  upstream_changed: str = ""  # the first step this run (re)did that later steps build on

  @classmethod
  def load(cls, model_dir: str) -> "_Progress":
    path = files.join(model_dir, STATE_FILE)
    if jax.process_index() == 0:  # a state file a killed run did not rename into place
      files.remove_temporaries(model_dir, [files.temporary_prefix(STATE_FILE)])
    state = {}
    if files.exists(path):
      state = json.loads(files.read_text(path))
    return cls(path, state.get("steps", {}), state.get("configs", {}))

  def save(self) -> None:
    if jax.process_index() != 0:
      return
    files.atomic_write_text(
        self.path, json.dumps({"steps": self.steps, "configs": self.configs}, indent=2),
        "rest.state")

  def run(self, name: str, finished: bool, fn, outputs: Sequence[str] = (),
          upstream: bool = True, config: Optional[Mapping[str, Any]] = None) -> Any:
    """Runs step `name` unless it is finished and nothing it depends on changed.

    A step is redone, its `outputs` removed first, when a step before it was redone
    in this run, or when its `config` differs from the one it was started with (the
    log says which of the two, and which values changed). A step whose outputs are
    finished on disk but which this state file does not record (a killed run, or a
    finished `bc/` or `grow_1/` copied from another run) is run again to read its
    result back (it finds its work done), and does not make the steps after it start
    afresh: only a step that did work does, and only if it is `upstream` of them
    (BC+, a control beside the chain, is not).
    """
    config = json.loads(json.dumps(config, default=str)) if config is not None else None
    recorded = self.configs.get(name)
    changed = ", ".join(records.changes(recorded, config))
    if finished and name in self.steps and not self.upstream_changed and not changed:
      logging.info("rest: %s already done", name)
      return self.steps[name]
    why = "; ".join(([f"{self.upstream_changed} was redone in this run"]
                     if self.upstream_changed else []) +
                    ([f"its configuration changed ({changed})"] if changed else []))
    reused = finished and not why
    if reused and outputs and name not in self.steps:
      logging.warning("rest: %s is finished in %s (not recorded in this run's state): reusing it",
                      name, ", ".join(outputs))
    existing = [p for p in outputs if files.exists(p)] if why else []
    if existing:
      logging.warning("rest: redoing %s from scratch (removing %s): %s", name,
                      ", ".join(existing), why)
      if jax.process_index() == 0:
        for path in existing:  # outputs of an older upstream or config
          files.rmtree(path)
    elif why and name in self.steps:
      logging.warning("rest: redoing %s: %s", name, why)
    if jax.process_count() > 1:  # nobody reads a step's directory while it is removed
      multihost_utils.sync_global_devices(f"rest: {name} starts")
    if config is not None and recorded != config:
      self.configs[name] = config
      self.save()  # before any work: a killed step resumes only under the same config
    result = fn()
    if isinstance(result, dict):  # memory after each step: a leak shows as a rising line
      result = {**result, **memory_mb()}
    self.steps[name] = result
    if upstream and not reused and not self.upstream_changed:
      self.upstream_changed = name
    self.save()
    return result


def rest(
    *,
    model,
    model_dir: str,
    train_dataset_cfg: pipeline.DatasetConfig,
    bc_steps: int,
    reward: Reward,
    grow: grow_lib.GrowConfig = grow_lib.GrowConfig(),
    improve: improve_lib.ImproveConfig = improve_lib.ImproveConfig(),
    evaluation: policy_eval.EvalConfig = policy_eval.EvalConfig(),
    bc_selection: selection_lib.SelectionConfig = selection_lib.SelectionConfig(
        eval_period=100, patience=5),
    bc_plus: bool = True,
    bc_learning_rate: Any = None,
    initial_checkpoint_path: Optional[str] = None,
    bc_from: Optional[str] = None,
    grow_from: Optional[str] = None,
    partitioner: Optional[partitioning.Partitioner] = None,
    checkpoint_period: int = 200,
    seed: int = 0,
    progress_bar: bool = True,
) -> List[Dict[str, Any]]:
  """Runs (or resumes) the whole ReST loop, its BC+ control, and writes the report.

  Args:
    model: the policy (t5x API).
    model_dir: everything of the run goes here.
    train_dataset_cfg: BC data (its task also provides Grow's sources and evaluation).
    bc_steps: BC's most training steps; it stops earlier once its validation reward
      has not improved for `bc_selection.patience` evaluations, and keeps its best
      checkpoint: the BC policy.
    reward: scores samples in Grow, and is what selection maximises on validation.
    grow: G, N, the sampling configuration and Grow's batching.
    improve: thresholds (I = their number), loss, steps, optimizer and validation
      period of Improve; each Improve step's policy is its best checkpoint.
    evaluation: how every policy is evaluated (validation for all, the other splits
      for the selected ones).
    bc_selection: BC's validation period and patience.
    bc_plus: also run the equal-compute control BC+ (BC continued on the original
      data for as many steps and examples as all Improve steps, with Improve's
      optimizer, selected on validation the same way).
    bc_learning_rate: BC's rate or schedule for a model that carries a t5x
      `OptimizerDef` (rest_jax's models carry an optax optimizer with its rate).
    initial_checkpoint_path: a t5x checkpoint (t5x's INITIAL_CHECKPOINT_PATH; Orbax
      or legacy) that BC starts from instead of a random initialisation; with
      `bc_steps=0` it is the BC policy.
    bc_from: the `bc/` directory of another run (finished): its selected checkpoint is
      this run's BC policy, read where it is (nothing is copied or written there).
    grow_from: the `grow_1/` directory of another run, sampled from the same BC policy
      (so `bc_from` is that run's `bc/`): this run's first grown dataset, read where it
      is; e.g. to try other thresholds or losses on the same samples.
    partitioner: the mesh.
    checkpoint_period: steps between checkpoints.
    seed: every random choice of the run derives from it.
    progress_bar: tqdm bars.

  Returns:
    The report's rows: BC, BC+ and one per Improve step, each with its validation
    metrics; BC, BC+ and the selected ReST policy also with the other splits'.
  """
  thresholds = improve.thresholds
  thresholds.validate(reward.range)
  loss = improve.loss
  if loss.name == "oac" and grow.num_samples < 2:
    raise ValueError("OAC's baseline is the mean reward of a source's other samples: it needs"
                     f" NUM_SAMPLES >= 2, not {grow.num_samples}")
  if improve.mix_ratio > 0:
    loss.validate_rows(1, f"mixed-in original pairs (MIX_RATIO {improve.mix_ratio})")
  partitioner = partitioner or partitioning.Partitioner()
  files.makedirs(model_dir)
  task, lengths = train_dataset_cfg.mixture_or_task_name, dict(train_dataset_cfg.task_feature_lengths)
  select_split = SELECTION_SPLIT
  progress = _Progress.load(model_dir)
  policy = trainer_lib.Trainer(
      model, partitioner, trainer_lib.batch_input_shapes(train_dataset_cfg.batch_size, lengths),
      learning_rate=bc_learning_rate)
  evaluator = policy_eval.PolicyEvaluator(
      model, partitioner, policy.params_sharding, reward, evaluation, seed=seed)
  writer = metric_writers.create_default_writer(
      os.path.join(model_dir, "rest"), just_logging=jax.process_index() != 0)
  def validate(params) -> float:
    return evaluator.validation_reward(params, task, select_split, lengths,
                                       evaluation.max_examples)

  context = StepContext(model=model, partitioner=partitioner, task=task,
                        feature_lengths=lengths, reward=reward, seed=seed,
                        checkpoint_period=checkpoint_period, progress_bar=progress_bar,
                        validate=validate)
  improve_total = grow.steps * len(thresholds.values) * improve.steps
  # Compiled once for the run: every Grow step samples, every Improve step trains with them.
  compiled: Dict[str, Any] = {}

  def improve_trainer() -> trainer_lib.Trainer:
    if "improve" not in compiled:
      compiled["improve"] = improve.trainer(context, improve.steps)
    return compiled["improve"]

  def bc_plus_trainer() -> trainer_lib.Trainer:
    if loss.name == "bc" and _schedule_ignores_length(improve):  # Improve's compiled step
      return improve_trainer()
    if "bc_plus" not in compiled:
      compiled["bc_plus"] = controls.bc_plus_trainer(improve, context, improve_total)
    return compiled["bc_plus"]

  # What each step's record holds besides its own config (records.describe of all of it).
  model_record = {"model": records.describe(model), "task": task, "lengths": lengths,
                  "seed": seed}

  def selected_state(step_dir: str, trainer: trainer_lib.Trainer):
    sel = selection_lib.Selection(step_dir)
    state = sel.restore_best(trainer.abstract_state)
    sel.close()
    return state, sel.summary()

  def evaluate(label: str, index: int, params, splits=(select_split,)) -> Dict[str, Any]:
    tick = time.perf_counter()
    out = {}
    for split in splits:
      for key, value in evaluator(params, task, split, lengths, evaluation.max_examples).items():
        out[f"{split}/{key}"] = value
    writer.write_scalars(index, {k: v for k, v in out.items()
                                 if k.endswith(("reward", "bleu", "chrf"))})
    logging.info("rest eval %s: %s", label, out)
    return {"policy": label, "index": index, "metrics": out,
            "seconds": time.perf_counter() - tick}

  # --- BC, to convergence on validation ---------------------------------------
  bc_dir = os.path.join(model_dir, "bc")
  if bc_from:
    bc_dir = _finished_bc(bc_from)
  if grow_from:  # checked before BC trains
    grow_from = _grown_from(grow_from, bc_dir)
  def where(path: str) -> str:
    """A step's input as its config records it: relative to the run when inside it (a
    copied or moved run is the same run), absolute when it is another run's."""
    inside = os.path.relpath(os.path.abspath(path), os.path.abspath(model_dir))
    return os.path.abspath(path) if inside.startswith("..") else inside

  bc_config = {"from": where(bc_dir) if bc_from else None, "bc_steps": bc_steps,
               "initial_checkpoint_path": initial_checkpoint_path,
               "data": records.describe(train_dataset_cfg),
               "selection": records.describe(bc_selection),
               "learning_rate": records.describe(bc_learning_rate),
               "optimizer": records.describe(policy.optimizer), **model_record}

  def reuse_bc():
    sel = selection_lib.Selection(bc_dir)
    summary = sel.summary()
    sel.close()
    return {"seconds": 0.0, "selection": summary, "reused_from": bc_dir,
            "overlength_examples": pipeline.overlength_count(train_dataset_cfg)}

  def run_bc():
    tick = time.perf_counter()
    sel = selection_lib.Selection(bc_dir, bc_selection)
    train_lib.train(model=model, train_dataset_cfg=train_dataset_cfg, model_dir=bc_dir,
                    total_steps=bc_steps, partitioner=partitioner,
                    checkpoint_period=checkpoint_period, seed=seed, progress_bar=progress_bar,
                    selection=sel, validate=validate, learning_rate=bc_learning_rate,
                    initial_checkpoint_path=initial_checkpoint_path)
    summary = sel.summary()
    # Early means before BC_STEPS: patience running out at the last step is not early.
    summary["stopped_early"] = bool(summary["stopped_early"] and
                                    (summary["last_step"] or 0) < bc_steps)
    sel.close()
    return {"seconds": time.perf_counter() - tick, "selection": summary,
            "overlength_examples": pipeline.overlength_count(train_dataset_cfg)}

  if bc_from:
    progress.run("bc", True, reuse_bc, config=bc_config)
  else:
    progress.run("bc", selection_lib.Selection(bc_dir).finished, run_bc, [bc_dir],
                 config=bc_config)
  bc_state, bc_summary = selected_state(bc_dir, policy)
  bc_params, bc_opt_state = bc_state.params, bc_state.opt_state
  bc_step = bc_summary["best_step"]
  rows = [{**progress.run("eval_bc", True, lambda: evaluate("BC", 0, bc_params)),
           "role": "BC", "optimizer_steps": bc_step, "dir": bc_dir}]

  # --- BC+, the equal-compute control -----------------------------------------
  bc_policy = Policy(bc_params, bc_opt_state, bc_dir)
  bc_plus_dir = os.path.join(model_dir, "bc_plus")
  if bc_plus and improve_total:
    plus_trainer = bc_plus_trainer()
    progress.run(
        "bc_plus", selection_lib.Selection(bc_plus_dir).finished,
        lambda: _step_summary(controls.bc_plus_step(
            bc_policy, improve, context, output_dir=bc_plus_dir, total_steps=improve_total,
            trainer=plus_trainer)),
        [bc_plus_dir], upstream=False,
        config={"steps": improve_total, "improve": _improve_record(improve),
                "optimizer": records.describe(plus_trainer.optimizer),
                "learning_rate": _rates(improve.learning_rate_for(improve_total), improve_total),
                **model_record})
    plus_state, plus_summary = selected_state(bc_plus_dir, plus_trainer)
    rows.append({**progress.run("eval_bc_plus", True,
                                lambda: evaluate("BC+", -1, plus_state.params)),
                 "role": "BC+", "optimizer_steps": bc_step + plus_summary["best_step"],
                 "dir": bc_plus_dir})

  # --- Grow / Improve ---------------------------------------------------------
  num_improve = grow.steps * len(thresholds.values)
  current, steps_behind, index = bc_policy, bc_step, 0
  for g in range(1, grow.steps + 1):
    grow_dir = os.path.join(model_dir, f"grow_{g}")
    grow_config = {"policy": where(current.directory), "grow": records.describe(grow),
                   "reward": reward.identity, **model_record}
    if g == 1 and grow_from:
      grow_dir, grow_config["from"] = grow_from, where(grow_from)

    def run_grow(grow_dir=grow_dir, start=current, g=g):
      if "grow" not in compiled:
        compiled["grow"] = grow_lib.Decoders(model, partitioner, policy.params_sharding,
                                             grow.num_samples, grow.sampling)
      return grow_lib.grow_step(start, grow, context, output_dir=grow_dir, grow_step=g,
                                params_sharding=policy.params_sharding,
                                decoders=compiled["grow"])

    if g == 1 and grow_from:
      def reuse_grow(grow_dir=grow_dir):
        manifest = grown.load_manifest(grow_dir, verify_counts=False)
        return {"seconds": 0.0, "reused_from": grow_dir, "samples": manifest["num_samples"],
                "counts": manifest.get("counts", {})}

      progress.run("grow_1", True, reuse_grow, config=grow_config)
    else:
      progress.run(f"grow_{g}", files.exists(files.join(grow_dir, grown.MANIFEST)), run_grow,
                   [grow_dir], config=grow_config)
    manifest = grown.load_manifest(grow_dir, verify_counts=False)
    # Quantile thresholds are taken over the policy's samples, never the references.
    taus = thresholds.resolve(grown.sample_rewards(grown.shard_paths(grow_dir, manifest)))
    progress.steps.setdefault("thresholds", {})[str(g)] = taus
    for i, tau in enumerate(taus, start=1):
      index += 1
      step_dir = os.path.join(model_dir, f"improve_{g}_{i}")

      def run_improve(step_dir=step_dir, tau=tau, start=current, g=g, i=i, index=index):
        return _step_summary(improve_lib.improve_step(
            start, improve, context, grown_dir=grow_dir, threshold=tau, output_dir=step_dir,
            grow_step=g, step=i, improve_index=index - 1, num_improve_steps=num_improve,
            reference_params=bc_params, trainer=improve_trainer()))

      step = progress.run(
          f"improve_{g}_{i}", selection_lib.Selection(step_dir).finished, run_improve,
          [step_dir], config={"grown": where(grow_dir), "threshold": tau,
                              "kl_weight": loss.kl_weight(index - 1, num_improve),
                              "improve": _improve_record(improve),
                              "optimizer": records.describe(improve_trainer().optimizer),
                              "learning_rate": _rates(improve.learning_rate_for(improve.steps),
                                                      improve.steps),
                              "reward_range": list(reward.range), **model_record})
      state, summary = selected_state(step_dir, improve_trainer())
      current = Policy(state.params, state.opt_state, step_dir)
      steps_behind += summary["best_step"]
      row = progress.run(f"eval_{g}_{i}", True, lambda g=g, i=i, tau=tau, p=current.params:
                         evaluate(f"G{g} I{i} (tau={tau:.3f})", index, p))
      rows.append({**row, "role": "ReST", "optimizer_steps": steps_behind, "dir": step_dir,
                   "kept_samples": step["metrics"]["kept_samples"],
                   "kept_references": step["metrics"]["kept_references"]})

  # --- selection on validation, then the other splits for the selected policies ---
  key = f"{select_split}/reward"
  rest_rows = [r for r in rows if r["role"] in ("BC", "ReST")]
  chosen = max(rest_rows, key=lambda r: r["metrics"][key])  # the first of the best
  chosen["selected"] = True
  others = [s for s in evaluation.splits if s != select_split]
  for row in rows:
    if row["role"] in ("BC", "BC+") or row.get("selected"):
      name = "test_" + os.path.basename(row["dir"])
      params = _load_selected(row, policy, improve_trainer, bc_plus_trainer)
      extra = progress.run(name, True, lambda p=params, row=row: evaluate(
          row["policy"], row["index"], p, others))
      row["metrics"] = {**row["metrics"], **extra["metrics"]}
  progress.steps["selected"] = chosen["policy"]
  # Where the selected policy is, relative to the run (`commands.policy_checkpoint`).
  progress.steps["selected_dir"] = (os.path.relpath(chosen["dir"], model_dir)
                                    if not bc_from or chosen["role"] != "BC"
                                    else os.path.abspath(chosen["dir"]))
  progress.steps["rows"] = [{k: r[k] for k in ("policy", "role", "metrics", "optimizer_steps")
                             if k in r} | {"selected": bool(r.get("selected"))} for r in rows]
  progress.save()
  writer.flush()
  if jax.process_index() == 0:
    header = _header(model, policy, task, lengths, reward, grow, improve, evaluation, rows,
                     progress.steps)
    report.write_report(model_dir, rows, progress.steps, evaluation, header, select_split)
  return rows


def _guard_lines(steps) -> List[str]:
  """Per Grow step, the rows each reward guard fired on (rewards/guards.py)."""
  lines = []
  for name, step in sorted(steps.items()):
    if not (name.startswith("grow_") and isinstance(step, dict)):
      continue
    fired = {k[len("guard_"):]: v for k, v in step.get("counts", {}).items()
             if k.startswith("guard_")}
    if fired:
      lines.append(f"- Grow step {name[len('grow_'):]}: reward guards fired on "
                   + ", ".join(f"{guard} {n}" for guard, n in fired.items())
                   + f" of {step.get('samples', 0)} samples.")
  return lines


def _header(model, policy, task, lengths, reward, grow, improve, evaluation, rows, steps):
  """'What was run': the lines a reader needs before the tables."""
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(
      policy.abstract_state.params))
  counts = {split: int(r["metrics"].get(f"{split}/examples", 0))
            for r in rows for split in evaluation.splits if f"{split}/examples" in r["metrics"]}
  cut = {split: int(r["metrics"].get(f"{split}/overlength", 0))
         for r in rows for split in evaluation.splits if f"{split}/overlength" in r["metrics"]}
  sampling = grow.sampling
  bc = steps.get("bc", {})
  bc_sel = bc.get("selection", {}) if isinstance(bc, dict) else {}
  grow_cut = sum(s.get("overlength_sources", 0) for k, s in steps.items()
                 if k.startswith("grow_") and isinstance(s, dict))
  held_out = evaluation.held_out_reward
  lines = [
      "## What was run", "",
      f"- Task `{task}`, feature lengths {dict(lengths)}; evaluated sentences per split:"
      f" {counts}.",
      f"- Model `{type(model).__module__}.{type(model).__name__}`, {n_params:,} parameters.",
      f"- Metrics decode {'greedily' if evaluation.beam_size == 1 else f'with beam {evaluation.beam_size}'};"
      f" best-of-{evaluation.best_of_n} samples at temperature {evaluation.sampling.temperature}.",
      f"- Training reward `{reward.name}` on {list(reward.range)},"
      f" {'reads references' if reward.needs_reference else 'reference-free'};"
      f" held-out reward: {f'`{held_out.name}`' if held_out else 'none'}.",
      f"- Grow: G = {grow.steps}, N = {grow.num_samples} samples per source at temperature"
      f" {sampling.temperature}, top-k {sampling.topk or 'off'}, top-p {sampling.topp or 'off'}.",
      f"- Improve: loss `{improve.loss.name}`, {improve.steps} steps of {improve.batch_size}"
      f" per Improve step, optimizer state {improve.optimizer_state}, references"
      f" {improve.references}; thresholds per Grow step {steps.get('thresholds', {})}.",
      f"- Selection on validation reward: BC evaluated every few steps, best at step"
      f" {bc_sel.get('best_step')} of {bc_sel.get('last_step')}"
      f"{' (stopped early)' if bc_sel.get('stopped_early') else ''}; each Improve step and"
      f" BC+ keep their best checkpoint; test is evaluated for the selected policies only.",
      *_guard_lines(steps),
      f"- Over-long examples cut to the feature lengths: BC training"
      f" {bc.get('overlength_examples', 0) if isinstance(bc, dict) else 0}, Grow sources or"
      f" references {grow_cut}, evaluation {cut}.", ""]
  return lines


SELECTION_SPLIT = "validation"


def _step_summary(result) -> Dict[str, Any]:
  """A training step's result as the state file keeps it."""
  return {"metrics": dict(result.metrics), "seconds": result.seconds}


def _improve_record(config: improve_lib.ImproveConfig) -> Any:
  """ImproveConfig as a record, less its thresholds: each step records its own tau."""
  described = records.describe(config)
  described.pop("thresholds", None)
  return described


def _schedule_ignores_length(config: improve_lib.ImproveConfig) -> bool:
  """Whether Improve's rate is the same for a run of any length (then BC+ can share its
  compiled step)."""
  rate = config.learning_rate
  return not isinstance(rate, trainer_lib.LearningRateConfig) or rate.schedule == "constant"


def _rates(learning_rate, steps: int) -> List[float]:
  """A rate or schedule as comparable numbers: its values at the start, middle and end."""
  if learning_rate is None:  # a t5x model's OptimizerDef: its gin rate
    return []
  if not callable(learning_rate):
    return [float(learning_rate)]
  return [float(learning_rate(s)) for s in (0, steps // 2, steps)]


def _finished_bc(directory: str) -> str:
  """`directory` if it holds a finished BC step (rest's `bc/`), else a ValueError."""
  if not selection_lib.Selection(directory).finished:
    raise ValueError(
        f"BC_FROM = {directory!r} is not a finished BC step: it needs the {selection_lib.SELECTION_FILE}"
        " and best/ checkpoint that `rest` writes when BC ends (point it at a run's bc/)")
  return directory


def _grown_from(directory: str, bc_dir: str) -> str:
  """`directory` if it is a finished grown dataset sampled from the BC policy `bc_dir`."""
  manifest = grown.load_manifest(directory, verify_counts=False)
  policy = manifest["metadata"].get("policy")
  if policy and os.path.abspath(policy) != os.path.abspath(bc_dir):
    raise ValueError(
        f"GROW_FROM = {directory!r} was sampled from the policy {policy}, but this run's BC"
        f" policy is {bc_dir}: set BC_FROM = {policy!r} as well (Improve trains from the"
        " policy that sampled it)")
  return directory


def _load_selected(row, policy, improve_trainer, bc_plus_trainer):
  trainer = {"BC": policy, "BC+": None, "ReST": None}[row["role"]]
  if row["role"] == "BC+":
    trainer = bc_plus_trainer()
  elif row["role"] == "ReST":
    trainer = improve_trainer()
  sel = selection_lib.Selection(row["dir"])
  state = sel.restore_best(trainer.abstract_state)
  sel.close()
  return state.params
