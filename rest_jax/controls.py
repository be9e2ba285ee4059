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
"""

from typing import Any, Callable, Dict, List, Mapping, Optional


from rest_jax import improve as improve_lib, losses, partitioning
from rest_jax import selection as selection_lib
from rest_jax import trainer as trainer_lib
from rest_jax.context import Policy, StepContext, StepResult
from rest_jax.data import grown, pipeline

BC_PLUS_SEED_OFFSET = 999
FILTERED_BC_SEED_OFFSET = 500_000


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


def filtered_bc_step(policy: Policy, config: improve_lib.ImproveConfig, context: StepContext, *,
                     grown_dir: str, threshold: float, output_dir: str, grow_step: int,
                     step: int, trainer: Optional[trainer_lib.Trainer] = None) -> StepResult:
  """One step of the filtered-BC control: BC continued on the original pairs that the
  reward keeps at `threshold`, for as many steps as an Improve step, with Improve's
  optimizer, learning rate and selection.

  It is the cheap alternative to ReST a user tries first (filter the data you have with
  the reward, no sampling): if it matches ReST, the policy's samples add nothing. The
  original pairs are the grown dataset's reference rows, scored by the same
  reference-free reward in Grow.
  """
  selection = (selection_lib.Selection(output_dir, config.selection)
               if context.validate is not None else None)
  result = improve_lib.improve(
      model=context.model, init_params=policy.params, partitioner=context.partitioner,
      grown_dir=grown_dir, threshold=threshold, model_dir=output_dir,
      feature_lengths=context.feature_lengths, loss=losses.OfflineRLLoss("bc"),
      train_steps=config.steps, batch_size=config.batch_size, references="keep",
      samples=False, reward_high=context.reward.range[1],
      checkpoint_period=context.checkpoint_period,
      seed=context.seed + FILTERED_BC_SEED_OFFSET + 1000 * grow_step + step,
      progress_bar=context.progress_bar, name=f"filtered BC {grow_step}.{step}",
      trainer=trainer or config.trainer(context, config.steps, loss=losses.OfflineRLLoss("bc")),
      init_opt_state=policy.opt_state if config.optimizer_state == "continue" else None,
      selection=selection, validate=context.validate)
  return StepResult(metrics=result["metrics"], seconds=result["seconds"],
                    directory=result["model_dir"])
