"""What every step of a ReST run shares, and what a step starts from.

A step (BC, a control, Grow g, Improve g/i) is a function of its own config object
(`GrowConfig`, `ImproveConfig`, ...), the `StepContext` below and the `Policy` it
starts from; `rest` and the single-step commands (`grow`, `improve`) build the same
objects and call the same functions, so the two cannot drift apart.
"""

import dataclasses
from typing import Any, Callable, Mapping, Optional

from rest_jax import partitioning

PyTree = Any


@dataclasses.dataclass(frozen=True)
class StepContext:
  """The model, mesh, task and settings that every step of a run shares.

  Attributes:
    model: the policy's model (t5x API).
    partitioner: the mesh.
    task: the seqio task of the original pairs (BC's data, Grow's sources,
      evaluation).
    feature_lengths: the task's feature lengths.
    reward: the training reward (Grow scores with it; its range tops unscored rows).
    seed: every random choice of the run derives from it.
    checkpoint_period: steps between checkpoints.
    progress_bar: tqdm bars.
    validate: the validation score of parameters (higher is better) that selects
      each step's checkpoint; None: a step keeps its last one.
  """

  model: Any
  partitioner: partitioning.Partitioner
  task: str
  feature_lengths: Mapping[str, int]
  reward: Any
  seed: int = 0
  checkpoint_period: int = 200
  progress_bar: bool = True
  validate: Optional[Callable[[PyTree], float]] = None


@dataclasses.dataclass(frozen=True)
class Policy:
  """A policy a step starts from: parameters, optimizer state (or None), its directory."""

  params: PyTree
  opt_state: PyTree = None
  directory: str = ""
  stage: Any = None  # the `stages.Spec` that made it (`rest`): what reads it records it


@dataclasses.dataclass(frozen=True)
class StepResult:
  """What a training step (Improve, a control) reports: its metrics and wall time."""

  metrics: Mapping[str, Any]
  seconds: float
  directory: str
  state: Any = None  # its policy: the best state on validation (else the last)
