"""Improve: fine-tune the policy on the grown dataset filtered at a reward threshold.

Starts from the previous policy's parameters (or resumes from its own latest
checkpoint), trains with an offline-RL loss (`losses.OfflineRLLoss`) on the
sampled token ids through the same sharded `Trainer` and orbax checkpoints as
BC, and can mix the original parallel data into every batch. The optimizer is
Improve's own (its learning rate is set apart from BC's); its state starts
fresh or continues from the previous step's (`init_opt_state`).
"""

import dataclasses
import json
import os
import zlib
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from absl import logging
import jax
import numpy as np
import optax
import seqio
import tensorflow as tf

from rest_jax import checkpoints, files, losses, loop
from rest_jax import selection as selection_lib
from rest_jax import trainer as trainer_lib
from rest_jax.context import Policy, StepContext, StepResult
from rest_jax.data import grown, grown_tasks, pipeline
from rest_jax.rewards import ThresholdSchedule

REFERENCE_MODES = ("keep", "drop")
OPTIMIZER_STATES = ("fresh", "continue")


@dataclasses.dataclass(frozen=True)
class ImproveConfig:
  """Improve's settings, bound in gin (`improve.ImproveConfig`) and passed whole.

  Attributes:
    thresholds: tau_1 < ... < tau_I (I Improve steps per Grow step).
    loss: the offline-RL loss.
    steps: optimizer steps per Improve step.
    batch_size: global batch size.
    references: "keep" the reference rows (scored ones filtered like samples,
      unscored ones kept at every threshold) or "drop" them.
    samples: train on the policy's samples (False: on the kept original pairs
      alone: the filtered-BC control).
    mix_ratio: share of each batch drawn from the original parallel data.
    optimizer: Improve's optax optimizer for a model that carries an optax one
      (rest_jax's): a function of the learning rate (gin:
      `@improve/trainer.default_optimizer`, unevaluated), built for each run with
      `learning_rate` over that run's steps; or a built optax transformation; None:
      the model's own.
    learning_rate: Improve's rate: a `trainer.LearningRateConfig` (its schedule
      spans each run that uses it: an Improve step, or BC+'s G x I x `steps`), a
      float, or a schedule. A model that carries a t5x `OptimizerDef` (t5x's
      Adafactor) trains with its own optimizer at this rate.
    optimizer_state: "fresh" (a new optimizer state every Improve step) or
      "continue" (the previous step's, BC's for the first).
    selection: how often each Improve step (and BC+) is evaluated on validation to
      keep its best checkpoint.
  """

  thresholds: ThresholdSchedule = ThresholdSchedule((0.0,))
  loss: losses.OfflineRLLoss = losses.OfflineRLLoss()
  steps: int = 300
  batch_size: int = 64
  references: str = "keep"
  mix_ratio: float = 0.0
  optimizer: Optional[optax.GradientTransformation] = None
  learning_rate: Any = None
  optimizer_state: str = "fresh"
  selection: selection_lib.SelectionConfig = selection_lib.SelectionConfig(eval_period=100)

  def learning_rate_for(self, steps: int):
    """The rate (or schedule) of a run of `steps` optimizer steps."""
    if isinstance(self.learning_rate, trainer_lib.LearningRateConfig):
      return self.learning_rate.schedule_for(steps)
    return self.learning_rate

  @property
  def schedule_ignores_length(self) -> bool:
    """Whether the rate is the same for a run of any length (then BC+ can share Improve's
    compiled step)."""
    rate = self.learning_rate
    return not isinstance(rate, trainer_lib.LearningRateConfig) or rate.schedule == "constant"

  def optimizer_for(self, steps: int) -> Optional[optax.GradientTransformation]:
    """Improve's optax optimizer for a run of `steps` optimizer steps (None: the model's)."""
    if self.optimizer is None or isinstance(self.optimizer, optax.GradientTransformation):
      return self.optimizer
    return self.optimizer(learning_rate=self.learning_rate_for(steps))

  def trainer(self, context: StepContext, steps: int,
              loss: Optional[losses.OfflineRLLoss] = None) -> trainer_lib.Trainer:
    """The compiled train step of a run of `steps` steps with `loss` (default this loss)."""
    return trainer_lib.Trainer(
        context.model, context.partitioner,
        trainer_lib.batch_input_shapes(self.batch_size, context.feature_lengths),
        optimizer=self.optimizer_for(steps), loss_fn=loss or self.loss,
        learning_rate=self.learning_rate_for(steps))

  def __post_init__(self):
    if self.references not in REFERENCE_MODES:
      raise ValueError(f"ImproveConfig.references={self.references!r}: use one of"
                       f" {REFERENCE_MODES}")
    if self.optimizer_state not in OPTIMIZER_STATES:
      raise ValueError(f"ImproveConfig.optimizer_state={self.optimizer_state!r}: use one of"
                       f" {OPTIMIZER_STATES}")
    if not 0.0 <= self.mix_ratio < 1.0:
      raise ValueError(f"ImproveConfig.mix_ratio={self.mix_ratio} must be in [0, 1)")


class EmptyImproveStepError(ValueError):
  """A threshold that keeps no rows of the grown dataset."""


def kept_mask(columns: Mapping[str, np.ndarray], threshold: float, include_references: bool,
              include_samples: bool = True, row_keys: Optional[np.ndarray] = None
              ) -> np.ndarray:
  """Which rows of a grown dataset (`grown.read_columns`) a step trains on.

  Scored rows pass at `reward >= threshold`; unscored references pass at every threshold.
  With `row_keys` (`grown_tasks.row_key`s, e.g. random selection's draw), exactly those
  rows, whatever their reward: `grown_tasks.kept_mask`, the rule `Rows.task` trains by.
  """
  return grown_tasks.kept_mask(columns, None if row_keys is not None else threshold,
                               include_references, include_samples, row_keys)


def kept_quality(columns: Mapping[str, np.ndarray], keep: np.ndarray,
                 rated: Optional[np.ndarray] = None) -> Dict[str, Dict[str, float]]:
  """What a step trains on, per kind (samples, original pairs): the rows `keep` keeps, their
  mean training reward (over scored rows) and their mean score by `rated` (a second
  rater's score of every row, e.g. the held-out reward; nan where not given)."""
  out = {}
  for kind, rows in (("samples", keep & ~columns["is_reference"]),
                     ("references", keep & columns["is_reference"])):
    scored = rows & columns["scored"]
    out[kind] = {
        "rows": int(rows.sum()),
        "reward": float(columns["reward"][scored].mean()) if scored.any() else float("nan"),
        "held_out": (float(np.nanmean(rated[rows])) if rated is not None
                     and np.isfinite(rated[rows]).any() else float("nan"))}
  return out


def kept_rows(grown_dir: str, threshold: float, include_references: bool,
              include_samples: bool = True, row_keys: Optional[np.ndarray] = None
              ) -> Dict[str, int]:
  """Rows the threshold keeps: samples, references, and references without a reward.

  Raises:
    EmptyImproveStepError: nothing is kept (the message gives the reward percentiles).
  """
  manifest = grown.load_manifest(grown_dir, verify_counts=False)
  columns = grown.read_columns(grown.shard_paths(grown_dir, manifest))
  keep = kept_mask(columns, threshold, include_references, include_samples, row_keys)
  refs = columns["is_reference"]
  kept = {"samples": int(np.sum(keep & ~refs)), "references": int(np.sum(keep & refs)),
          "unscored_references": int(np.sum(keep & refs & ~columns["scored"]))}
  if kept["samples"] + kept["references"] == 0:
    pct = manifest["reward"].get("percentiles", {})
    raise EmptyImproveStepError(
        f"threshold {threshold} keeps no rows of {grown_dir} ({columns['reward'].size} rows;"
        f" sample reward percentiles {pct}, max {manifest['reward'].get('max')}): lower the"
        " threshold or use quantile thresholds")
  return kept


def _as_unscored_references(ds: tf.data.Dataset, lengths: Mapping[str, int],
                            reward_high: float) -> tf.data.Dataset:
  """Original pairs as rows of the grown dataset's shape: unscored references.

  They carry the reward scale's top, no baseline to speak of, and no behaviour
  log-probabilities (only BC and GOLD accept them).
  """
  high = tf.constant(reward_high, tf.float32)
  return ds.map(lambda ex: {
      **ex, "reward": high, "value": high, "value_loo": high,
      "is_reference": tf.constant(1.0), "scored": tf.constant(0.0),
      **{k: tf.zeros([lengths["targets"]], tf.float32) for k in grown_tasks.TOKEN_FEATURES}})


def original_pairs(task: str, lengths: Mapping[str, int], seed: int, reward_high: float):
  ds = seqio.get_dataset(task, dict(lengths), dataset_split="train", shuffle=True,
                         num_epochs=None, seed=seed,
                         feature_converter=seqio.EncDecFeatureConverter(pack=False))
  return _as_unscored_references(ds, lengths, reward_high)


def _mixed_dataset(name: str, lengths: Mapping[str, int], batch_size: int, seed: int,
                   mix_task: Optional[str], mix_ratio: float, reward_high: float,
                   rows: Tuple[int, int]):
  converter = grown_tasks.RewardEncDecFeatureConverter(
      scalar_features=grown_tasks.SCALAR_FEATURES, token_features=grown_tasks.TOKEN_FEATURES)
  ds = seqio.get_dataset(name, dict(lengths), dataset_split="train", shuffle=True, num_epochs=None,
                         feature_converter=converter, seed=seed)
  if mix_task and mix_ratio > 0:
    original = original_pairs(mix_task, lengths, seed, reward_high)
    ds = tf.data.Dataset.sample_from_datasets([ds, original], [1 - mix_ratio, mix_ratio],
                                              seed=seed)
  # The same global batches on any number of hosts, each host keeping its rows.
  return pipeline.host_rows(ds, batch_size, rows, drop_remainder=True)


def _metrics_path(model_dir: str, step: int) -> str:
  return os.path.join(model_dir, "train_metrics", f"step_{step}.json")


def _save_metrics(model_dir: str, step: int, accumulator) -> None:
  if jax.process_index() != 0:
    return
  path = _metrics_path(model_dir, step)
  files.makedirs(os.path.dirname(path))
  files.atomic_write_text(path, json.dumps(accumulator.state_dict()))


def _load_metrics(model_dir: str, step: int):
  if step == 0:
    return trainer_lib.MetricsAccumulator()
  path = _metrics_path(model_dir, step)
  if not files.exists(path):
    logging.warning("%s missing: the metrics of this Improve step cover only the steps"
                    " after %d", path, step)
    return trainer_lib.MetricsAccumulator()
  return trainer_lib.MetricsAccumulator.from_state_dict(json.loads(files.read_text(path)))


@dataclasses.dataclass(frozen=True)
class Rows:
  """What a training step trains on: the rows of a grown dataset it keeps, and original
  pairs mixed into its batches.

  Attributes:
    grown_dir: the Grow step's dataset.
    threshold: scored rows pass at `reward >= threshold` (unscored references always).
    references: train on the dataset's original pairs (`is_reference` rows).
    samples: train on the policy's samples.
    row_keys: exactly these rows (`grown_tasks.row_key`s) instead of the ones the
      threshold keeps (random selection).
    mix_ratio: share of each batch drawn from the task's original pairs.
  """

  grown_dir: str
  threshold: float
  references: bool = True
  samples: bool = True
  row_keys: Optional[np.ndarray] = None
  mix_ratio: float = 0.0

  def task(self, vocabulary: seqio.Vocabulary, reward_high: float) -> seqio.Task:
    """The kept rows as a seqio task (registered once per rows)."""
    keys = "" if self.row_keys is None else zlib.crc32(
        np.asarray(self.row_keys, np.int64).tobytes())
    mode = "keep" if self.references else "drop"
    name = "rest_grown_" + str(zlib.crc32(
        f"{self.grown_dir}@{self.threshold}@{mode}@{self.samples}@{keys}".encode()))
    return grown_tasks.register_grown_task(
        name, self.grown_dir, vocabulary,
        threshold=self.threshold if self.row_keys is None else None,
        include_references=self.references, include_samples=self.samples,
        unscored_reward=reward_high, verify_counts=False, row_keys=self.row_keys)


@dataclasses.dataclass(frozen=True)
class Step:
  """One training step of a run: its folder, its name in logs, its data-order and dropout
  seed, its optimizer steps, and whether its start is a candidate of its selection (BC+:
  it can end where it started, never below it on validation)."""

  output_dir: str
  name: str
  seed: int
  steps: int
  include_start: bool = False


def train_step(trainer: trainer_lib.Trainer, policy: Policy, batches: Callable[[], Any],
               context: StepContext, step: Step, *,
               selection: Optional[selection_lib.SelectionConfig],
               loss_args: Mapping[str, Any] = None) -> Tuple[Any, Dict[str, Any], float]:
  """Trains `step` from `policy` (or resumes it from its own latest checkpoint) on
  `batches()`, keeping its best checkpoint on validation when the context validates.

  Returns:
    `(state, metrics, seconds)`: the best state on validation (else the last), the
    step's accumulated training metrics (with its selection's summary), wall time.
  """
  ckpt = checkpoints.Checkpointer(step.output_dir, save_every=context.checkpoint_period, keep=1)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(trainer.abstract_state)
  else:
    state = trainer.state_from_params(policy.params, policy.opt_state)
  start = int(jax.device_get(state.step))
  accumulator = _load_metrics(step.output_dir, start)
  keeper = (selection_lib.Selection(step.output_dir, selection)
            if context.validate is not None and selection is not None else None)
  result = loop.run(
      loop.Job(step.name, trainer, state, batches().skip(start).as_numpy_iterator(),
               step.steps, ckpt, jax.random.PRNGKey(step.seed + 17), "improve.step",
               loss_args=dict(loss_args or {}), selection=keeper, validate=context.validate,
               include_start=step.include_start),
      loop.Hooks(
          after_step=lambda done, new_state, metrics, batch: accumulator.add(metrics),
          # The metrics so far, saved with (just before) the checkpoint of the same step, so
          # that a resumed step reports what an uninterrupted one would.
          before_checkpoint=lambda done: _save_metrics(step.output_dir, done, accumulator),
          progress_bar=context.progress_bar))
  state, metrics = result.state, accumulator.compute() if accumulator else {}
  if keeper is not None:
    state = keeper.restore_best(trainer.abstract_state)
    metrics["selection"] = keeper.summary()
    keeper.close()
  return state, metrics, result.seconds


def train_on_rows(policy: Policy, rows: Rows, config: ImproveConfig, context: StepContext,
                  step: Step, *, loss: losses.OfflineRLLoss, trainer: trainer_lib.Trainer,
                  kl_weight: float = 0.0, reference_params: Any = None) -> StepResult:
  """A step on the rows of a grown dataset (an Improve step, or an arm's beside it), with
  Improve's optimizer state rule, batch size and selection.

  Raises:
    EmptyImproveStepError: the rows keep nothing (before any training).
    ValueError: the loss cannot use the rows this step would train on.
  """
  kept = kept_rows(rows.grown_dir, rows.threshold, rows.references, rows.samples,
                   rows.row_keys)
  loss.validate_rows(kept["unscored_references"], f"reference rows of {rows.grown_dir}")
  if rows.mix_ratio > 0:
    loss.validate_rows(1, f"mixed-in original pairs of {context.task} (MIX_RATIO"
                       f" {rows.mix_ratio})")
  loss_args = {}
  if loss.uses_reference_policy:
    if reference_params is None:
      raise ValueError(f"Improve loss '{loss.name}' has a KL term to the BC policy: pass"
                       " reference_params")
    loss_args = {"reference_params": reference_params, "kl_weight": np.float32(kl_weight)}
  high, lengths = context.reward.range[1], context.feature_lengths
  task = rows.task(context.model.output_vocabulary, high)
  start = policy if config.optimizer_state == "continue" else Policy(policy.params)
  state, metrics, seconds = train_step(
      trainer, start, lambda: _mixed_dataset(
          task.name, lengths, config.batch_size, step.seed, context.task if rows.mix_ratio
          else None, rows.mix_ratio, high, context.partitioner.process_rows(config.batch_size)),
      context, step, selection=config.selection, loss_args=loss_args)
  metrics.update({"kept_samples": kept["samples"], "kept_references": kept["references"],
                  "threshold": float(rows.threshold)})
  if loss_args:
    metrics["kl_weight"] = float(kl_weight)
  logging.info("%s: %s", step.name, metrics)
  return StepResult(metrics=metrics, seconds=seconds,
                    directory=os.path.abspath(step.output_dir), state=state)


@dataclasses.dataclass(frozen=True)
class Place:
  """Where an Improve step stands in its run: step `step` (i) of Grow step `grow_step`
  (g), in a run of `grow_steps` (G) Grow steps. With the run's seed it fixes the step's
  data order and dropout (`seed + 1000 g + i`); with I, the thresholds' number, its
  place in BVMPO's annealed KL weight (step `index` of `total`)."""

  grow_step: int = 1
  step: int = 1
  grow_steps: int = 1

  def seed(self, run_seed: int) -> int:
    return run_seed + 1000 * self.grow_step + self.step

  def index(self, per_grow: int) -> int:
    """The step's place among all the run's Improve steps (0-based)."""
    return (self.grow_step - 1) * per_grow + self.step - 1

  def total(self, per_grow: int) -> int:
    return max(self.grow_steps, self.grow_step) * per_grow


def improve_step(policy: Policy, config: ImproveConfig, context: StepContext, *,
                 grown_dir: str, threshold: float, output_dir: str, place: Place = Place(),
                 reference_params: Any = None,
                 trainer: Optional[trainer_lib.Trainer] = None) -> StepResult:
  """Improve step `place` of a run, as `rest` runs it.

  Args:
    policy: the policy it starts from (its optimizer state is continued when
      `config.optimizer_state` is "continue").
    config: Improve's settings.
    context: the run's model, mesh, task, reward, seed and validation.
    grown_dir: the Grow step's dataset.
    threshold: this step's tau.
    output_dir: the step's directory.
    place: (g, i) and G: the step's data order, dropout and KL weight.
    reference_params: the frozen BC policy, for a loss with a KL term.
    trainer: `config.trainer(context, config.steps)`, compiled once per run.
  """
  if config.references not in REFERENCE_MODES:
    raise ValueError(f"references={config.references!r}: use one of {REFERENCE_MODES}")
  rows = Rows(grown_dir, threshold, references=config.references == "keep",
              mix_ratio=config.mix_ratio)
  per_grow = len(config.thresholds.values)
  return train_on_rows(
      policy, rows, config, context,
      Step(output_dir, f"improve {place.grow_step}.{place.step}", place.seed(context.seed),
           config.steps),
      loss=config.loss, trainer=trainer or config.trainer(context, config.steps),
      kl_weight=config.loss.kl_weight(place.index(per_grow), place.total(per_grow)),
      reference_params=reference_params)
