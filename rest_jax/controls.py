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
- random selection (an option): at each of its steps (I per Grow step, all from Grow 1's
  samples, as filtered BC), as many of the policy's samples as ReST's Grow 1 step at that
  threshold keeps, drawn uniformly without the reward, BC's loss. It separates the reward's
  effect from training on the model's own samples.

And the ablation beside them: ReST on the policy's samples alone (the original pairs
left out of the grown set), ReST's thresholds and loss, on Grow 1's rows. Each of these
`Arm`s runs through `arm_step`.
"""

import dataclasses
from typing import Any, List, Optional

import numpy as np

from rest_jax import improve as improve_lib, losses
from rest_jax import trainer as trainer_lib
from rest_jax.context import Policy, StepContext, StepResult
from rest_jax.data import grown, grown_tasks, pipeline
from rest_jax.roles import Role

BC_PLUS_SEED_OFFSET = 999
FILTERED_BC_SEED_OFFSET = 500_000
SAMPLES_ONLY_SEED_OFFSET = 600_000
RANDOM_SEED_OFFSET = 700_000


def bc_plus_step(policy: Policy, config: improve_lib.ImproveConfig, context: StepContext, *,
                 output_dir: str, total_steps: int,
                 trainer: Optional[trainer_lib.Trainer] = None) -> StepResult:
  """The BC+ control of a run whose Improve steps (`config`) total `total_steps`: BC
  continued on the original pairs for as many steps, with Improve's optimizer (its
  schedule over `total_steps`), batch size and selection, its start a candidate."""
  step = improve_lib.Step(output_dir, Role.BC_PLUS, context.seed + BC_PLUS_SEED_OFFSET,
                          total_steps, include_start=True)
  start = policy if config.optimizer_state == "continue" else Policy(policy.params)
  rows = context.partitioner.process_rows(config.batch_size)
  state, metrics, seconds = improve_lib.train_step(
      trainer or bc_plus_trainer(config, context, total_steps), start,
      lambda: pipeline.host_rows(improve_lib.original_pairs(
          context.task, context.feature_lengths, step.seed, context.reward.range[1]),
          config.batch_size, rows, drop_remainder=True),
      context, step, selection=config.selection)
  metrics["train_steps"] = total_steps
  return StepResult(metrics=metrics, seconds=seconds, directory=output_dir, state=state)


def bc_plus_config(config: improve_lib.ImproveConfig) -> improve_lib.ImproveConfig:
  """Improve's settings as BC+ trains with them (what it records): BC's loss on the
  original pairs, nothing mixed in."""
  return dataclasses.replace(config, loss=losses.OfflineRLLoss("bc"), mix_ratio=0.0,
                             references="keep")


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

  def config(self, improve: improve_lib.ImproveConfig) -> improve_lib.ImproveConfig:
    """Improve's settings as this arm trains with them (what its steps record): BC's loss
    and no mixed-in pairs unless it has Improve's loss; its own references."""
    if self.improve_loss:
      return dataclasses.replace(improve, references="keep" if self.references else "drop")
    return dataclasses.replace(improve, loss=losses.OfflineRLLoss("bc"), mix_ratio=0.0,
                               references="keep" if self.references else "drop")


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
             place: improve_lib.Place, trainer: Optional[trainer_lib.Trainer] = None,
             row_keys: Optional[np.ndarray] = None, reference_params: Any = None,
             kl_weight: float = 0.0) -> StepResult:
  """One step of `arm`: from `policy`, on the rows of `grown_dir` it keeps at `threshold`
  (or exactly `row_keys`), for as many steps as an Improve step, with Improve's
  optimizer, learning rate and selection; its data order and dropout follow `place` and
  the arm's own seed offset.

  Filtered BC is the cheap alternative to ReST a user tries first (filter the data you
  have with the reward, no sampling): if it matches ReST, the policy's samples add
  nothing. Its rows are the grown dataset's original pairs, scored by the same
  reference-free reward in Grow. An arm with Improve's loss trains as Improve does (its
  KL term to `reference_params` at `kl_weight`, its mixed-in original pairs).
  """
  config = arm.config(config)
  loss = config.loss
  rows = improve_lib.Rows(grown_dir, threshold, references=arm.references,
                          samples=arm.samples, row_keys=row_keys, mix_ratio=config.mix_ratio)
  return improve_lib.train_on_rows(
      policy, rows, config, context,
      improve_lib.Step(output_dir, f"{arm.role} {place.grow_step}.{place.step}",
                       place.seed(context.seed + arm.seed_offset), config.steps),
      loss=loss, trainer=trainer or config.trainer(context, config.steps, loss=loss),
      kl_weight=kl_weight, reference_params=reference_params)


ARMS = (FILTERED_BC, SAMPLES_ONLY, RANDOM_SELECTION)


@dataclasses.dataclass(frozen=True)
class ArmsConfig:
  """What runs beside ReST, from the same BC and Grow 1 (gin: `controls.ArmsConfig`).

  Attributes:
    bc_plus: the equal-compute control BC+ (BC continued on the original data for as
      many steps and examples as all Improve steps, with Improve's optimizer, selected
      on validation the same way, its start included).
    filtered_bc: the filtered-BC control (`FILTERED_BC`), unless the reward reads
      references (then it would be BC+, and the report says so).
    samples_only: the ablation ReST on the samples alone (`SAMPLES_ONLY`; run when the
      grown set keeps the original pairs).
    random_selection: the random-selection control (`RANDOM_SELECTION`).
    rows_rater: rates every grown row: the report's quality of the rows each step
      trains on (None: not measured).
  """

  bc_plus: bool = True
  filtered_bc: bool = True
  samples_only: bool = True
  random_selection: bool = False
  rows_rater: Any = None

  def chains(self, reward, improve: improve_lib.ImproveConfig) -> List[Arm]:
    """The arms this run's steps run, in the report's order."""
    return [arm for arm, on in (
        (FILTERED_BC, self.filtered_bc and not reward.needs_reference),
        (SAMPLES_ONLY, self.samples_only and improve.references == "keep"),
        (RANDOM_SELECTION, self.random_selection)) if on]
CONTROL_ARMS = (FILTERED_BC, RANDOM_SELECTION)  # the best control is chosen among these too
