"""The controls every `rest` report carries beside ReST: what a sceptic tries first.

- BC+: BC continued on the original pairs for as many optimizer steps, of as many
  examples each, as all the run's Improve steps together, with Improve's optimizer
  and learning rate (its schedule spans the whole control), selected on validation
  the same way. Its selection includes its starting point (the BC policy), so it is
  never below BC on validation.
- filtered BC: BC continued on the original training pairs that the same reward keeps at
  the same thresholds (Improve's values, or its quantile levels over the pairs' rewards),
  step for step as Improve (I steps per Grow step, each as long as an Improve step, each
  keeping its best checkpoint), without the policy's samples. With a reward that reads
  references the pairs carry no reward (a reference would score itself): there it is BC+.
- random selection (an option): at each Improve step of Grow 1, as many of the policy's
  samples as ReST's step keeps, drawn uniformly without the reward, BC's loss. It
  separates the reward's effect from training on the model's own samples.

And the ablation beside them: ReST on the policy's samples alone (the original pairs
left out of the grown set), ReST's thresholds and loss, on Grow 1's rows. Each of these
`Arm`s runs through `arm_step`.
"""

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from rest_jax import improve as improve_lib, losses, partitioning
from rest_jax import selection as selection_lib
from rest_jax import trainer as trainer_lib
from rest_jax.context import Policy, StepContext, StepResult
from rest_jax.data import grown, grown_tasks, pipeline
from rest_jax.roles import Role

BC_PLUS_SEED_OFFSET = 999
FILTERED_BC_SEED_OFFSET = 500_000
SAMPLES_ONLY_SEED_OFFSET = 600_000
RANDOM_SEED_OFFSET = 700_000


def bc_plus(*, model, init_params: Any, partitioner: partitioning.Partitioner, task: str,
            model_dir: str, feature_lengths: Mapping[str, int], train_steps: int,
            batch_size: int, trainer: Optional[trainer_lib.Trainer] = None,
            init_opt_state: Any = None, reward_high: float = 1.0,
            checkpoint_period: int = 200, seed: int = 0, progress_bar: bool = True,
            selection: Optional[selection_lib.Selection] = None,
            validate: Optional[Callable[[Any], float]] = None,
            include_start: bool = True) -> Dict[str, Any]:
  """BC continued on the original data, selected on validation.

  Args:
    model: the policy (t5x API).
    init_params: the BC policy.
    partitioner: the mesh.
    task: the original parallel data (its train split).
    model_dir: the control's directory.
    feature_lengths: task feature lengths.
    train_steps: all Improve steps' optimizer steps together.
    batch_size: Improve's batch size.
    trainer: a `Trainer` with the BC loss and Improve's optimizer over `train_steps`;
      built here (with the model's optimizer) if None.
    init_opt_state: an optimizer state to continue from (BC's, when Improve continues).
    reward_high: the reward scale's top (carried by the rows; BC ignores it).
    checkpoint_period: steps between checkpoints.
    seed: data order and dropout.
    progress_bar: tqdm bar.
    selection: keeps the best checkpoint on validation.
    validate: the validation score of parameters.
    include_start: the starting point (step 0) is a candidate of the selection.
  """
  if trainer is None:
    trainer = trainer_lib.Trainer(
        model, partitioner, trainer_lib.batch_input_shapes(batch_size, feature_lengths),
        loss_fn=losses.OfflineRLLoss("bc"))
  state, accumulator, seconds = improve_lib.finetune(
      trainer=trainer, init_params=init_params, init_opt_state=init_opt_state,
      dataset=lambda: pipeline.host_rows(
          improve_lib.original_pairs(task, feature_lengths, seed, reward_high), batch_size,
          partitioner.process_rows(batch_size), drop_remainder=True),
      train_steps=train_steps, model_dir=model_dir, checkpoint_period=checkpoint_period,
      seed=seed, progress_bar=progress_bar, name="BC+", loss_args={}, selection=selection,
      validate=validate, include_start=include_start)
  results = accumulator.compute() if accumulator else {}
  results["train_steps"] = train_steps
  if selection is not None:
    results["selection"] = selection.summary()
  return {"state": state, "params": state.params, "metrics": results, "seconds": seconds,
          "model_dir": model_dir}


def bc_plus_step(policy: Policy, config: improve_lib.ImproveConfig, context: StepContext, *,
                 output_dir: str, total_steps: int,
                 trainer: Optional[trainer_lib.Trainer] = None) -> StepResult:
  """The BC+ control of a run whose Improve steps (`config`) total `total_steps`."""
  selection = (selection_lib.Selection(output_dir, config.selection)
               if context.validate is not None else None)
  result = bc_plus(
      model=context.model, init_params=policy.params, partitioner=context.partitioner,
      task=context.task, model_dir=output_dir, feature_lengths=context.feature_lengths,
      train_steps=total_steps, batch_size=config.batch_size,
      trainer=trainer or bc_plus_trainer(config, context, total_steps),
      init_opt_state=policy.opt_state if config.optimizer_state == "continue" else None,
      reward_high=context.reward.range[1], checkpoint_period=context.checkpoint_period,
      seed=context.seed + BC_PLUS_SEED_OFFSET, progress_bar=context.progress_bar,
      selection=selection, validate=context.validate)
  return StepResult(metrics=result["metrics"], seconds=result["seconds"],
                    directory=output_dir)


def bc_plus_trainer(config: improve_lib.ImproveConfig, context: StepContext,
                    total_steps: int) -> trainer_lib.Trainer:
  """BC's loss with Improve's optimizer, its learning-rate schedule over `total_steps`."""
  return config.trainer(context, total_steps, loss=losses.OfflineRLLoss("bc"))




def reference_thresholds(config: improve_lib.ImproveConfig, grown_dir: str) -> List[float]:
  """Filtered BC's thresholds: Improve's own values (absolute thresholds), or its quantile
  levels taken over the original pairs' rewards (quantile thresholds)."""
  manifest = grown.load_manifest(grown_dir, verify_counts=False)
  columns = grown.read_columns(grown.shard_paths(grown_dir, manifest))
  scored = columns["reward"][columns["is_reference"] & columns["scored"]]
  if not scored.size:
    raise ValueError(f"{grown_dir}: no original pair carries a reward (a reward that reads"
                     " references does not score them): filtered BC is BC+ here")
  return config.thresholds.resolve(scored)


@dataclasses.dataclass(frozen=True)
class Arm:
  """A chain of steps beside ReST's own, from the BC policy on Grow 1's rows.

  Attributes:
    role: its role in the report.
    prefix: its steps' folder prefix (`layout.arm_step_name`).
    samples: trains on the policy's samples.
    references: trains on the original pairs.
    improve_loss: Improve's loss (else BC's).
    random: the samples are drawn uniformly, as many as ReST's step keeps, instead of
      by the reward.
    seed_offset: its data order and dropout seeds (apart from Improve's).
    grow_steps: how many Grow steps' worth of I steps it runs (None: the run's G), all
      on Grow 1's rows.
  """

  role: Role
  prefix: str
  samples: bool
  references: bool
  improve_loss: bool
  random: bool = False
  seed_offset: int = 0
  grow_steps: Optional[int] = None


# The original pairs alone that the reward keeps (lambda = 0 of the paper's Eq. 3): a control.
FILTERED_BC = Arm(Role.FILTERED_BC, "filtered_bc", samples=False, references=True,
                  improve_loss=False, seed_offset=FILTERED_BC_SEED_OFFSET)
# ReST on the policy's samples alone (lambda = 1): an ablation, Improve's loss and thresholds.
SAMPLES_ONLY = Arm(Role.SAMPLES_ONLY, "samples_only", samples=True, references=False,
                   improve_loss=True, seed_offset=SAMPLES_ONLY_SEED_OFFSET, grow_steps=1)
# As many of the policy's samples as ReST's step keeps, drawn without the reward, BC's loss:
# training on the model's own samples, which alone helps MT self-training; a control.
RANDOM_SELECTION = Arm(Role.RANDOM_SELECTION, "random", samples=True, references=False,
                       improve_loss=False, random=True, seed_offset=RANDOM_SEED_OFFSET)


def random_row_keys(grown_dir: str, count: int, seed: int) -> np.ndarray:
  """`count` of the grown dataset's samples drawn uniformly without replacement (their
  `grown_tasks.row_key`s, sorted), with a generator seeded by `seed`."""
  manifest = grown.load_manifest(grown_dir, verify_counts=False)
  columns = grown.read_columns(grown.shard_paths(grown_dir, manifest))
  samples = ~columns["is_reference"]
  keys = grown_tasks.row_key(columns["source_id"][samples], columns["sample_id"][samples])
  if count > keys.size:
    raise ValueError(f"{grown_dir}: cannot draw {count} of its {keys.size} samples")
  return np.sort(np.random.default_rng(seed).choice(keys, size=count, replace=False))


def arm_step(policy: Policy, arm: Arm, config: improve_lib.ImproveConfig,
             context: StepContext, *, grown_dir: str, threshold: float, output_dir: str,
             grow_step: int, step: int, trainer: Optional[trainer_lib.Trainer] = None,
             row_keys: Optional[np.ndarray] = None, reference_params: Any = None,
             kl_weight: float = 0.0) -> StepResult:
  """One step of `arm`: from `policy`, on the rows of `grown_dir` it keeps at `threshold`
  (or exactly `row_keys`), for as many steps as an Improve step, with Improve's
  optimizer, learning rate and selection.

  Filtered BC is the cheap alternative to ReST a user tries first (filter the data you
  have with the reward, no sampling): if it matches ReST, the policy's samples add
  nothing. Its rows are the grown dataset's original pairs, scored by the same
  reference-free reward in Grow. An arm with Improve's loss trains as Improve does (its
  KL term to `reference_params` at `kl_weight`, its mixed-in original pairs).
  """
  loss = config.loss if arm.improve_loss else losses.OfflineRLLoss("bc")
  selection = (selection_lib.Selection(output_dir, config.selection)
               if context.validate is not None else None)
  result = improve_lib.improve(
      model=context.model, init_params=policy.params, partitioner=context.partitioner,
      grown_dir=grown_dir, threshold=threshold, model_dir=output_dir,
      feature_lengths=context.feature_lengths, loss=loss,
      train_steps=config.steps, batch_size=config.batch_size,
      references="keep" if arm.references else "drop", samples=arm.samples,
      reward_high=context.reward.range[1], checkpoint_period=context.checkpoint_period,
      seed=context.seed + arm.seed_offset + 1000 * grow_step + step,
      progress_bar=context.progress_bar, name=f"{arm.role} {grow_step}.{step}",
      trainer=trainer or config.trainer(context, config.steps, loss=loss),
      init_opt_state=policy.opt_state if config.optimizer_state == "continue" else None,
      selection=selection, validate=context.validate, row_keys=row_keys,
      mix_task=context.task if arm.improve_loss and config.mix_ratio else None,
      mix_ratio=config.mix_ratio if arm.improve_loss else 0.0,
      reference_params=reference_params if loss.uses_reference_policy else None,
      kl_weight=kl_weight)
  return StepResult(metrics=result["metrics"], seconds=result["seconds"],
                    directory=result["model_dir"])


ARMS = (FILTERED_BC, SAMPLES_ONLY, RANDOM_SELECTION)
CONTROL_ARMS = (FILTERED_BC, RANDOM_SELECTION)  # the best control is chosen among these too
