"""What each stage of a `rest` run depends on, declared once: its `Spec`.

A stage is BC, Grow g, an Improve step, BC+, a step of another arm (filtered BC, the
samples-only ablation, random selection), the rating of Grow's rows, or an evaluation
of a policy on validation or test. Its spec names it, holds the objects that decide
its output (config dataclasses, the model, the reward, the task's identity, the
evaluation's settings: whole, never fields picked by hand), and the stages whose
outputs it reads: the policy it starts from or evaluates, the grown dataset it trains
on. Its record, what `RunState` compares on a re-run, is derived from the spec alone:
every input described (`records.describe`) and each upstream stage's record by digest.
So a changed setting changes the records of its stage and of everything that reads
that stage's output, and nothing else: a retrained policy's evaluations are redone,
and a chain of steps is redone from its first changed step.
"""

import dataclasses
import functools
import hashlib
import json
from typing import Any, Dict, Mapping, Optional, Tuple

from rest_jax import records
from rest_jax.data import identity


@dataclasses.dataclass(frozen=True, eq=False)
class Spec:
  """A stage: its name, what decides its output, and the stages it reads.

  Attributes:
    name: the stage's name in `rest_state.json` (and its folder, for a training step).
    inputs: name -> object; each is described whole into the record.
    after: the stages whose outputs this one reads (their records go into its own).
  """

  name: str
  inputs: Mapping[str, Any]
  after: Tuple["Spec", ...] = ()

  @functools.cached_property
  def record(self) -> Dict[str, Any]:
    """The stage's record: its inputs described, and its upstream stages' digests."""
    out = {key: records.describe(value) for key, value in self.inputs.items()}
    if self.after:
      out["after"] = {spec.name: spec.digest for spec in self.after}
    return json.loads(json.dumps(out, default=str))

  @functools.cached_property
  def digest(self) -> str:
    """A short hash of the record: what a stage downstream records of this one."""
    text = json.dumps(self.record, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Setting:
  """What every stage of a run shares and that decides results: the model (its loss
  settings and vocabularies included), the task (by what decides its rows), feature
  lengths, the training reward and the run's seed."""

  model: Any
  task: str
  feature_lengths: Mapping[str, int]
  reward: Any
  seed: int

  @functools.cached_property
  def identity(self) -> Dict[str, Any]:
    return {"model": records.describe(self.model), "task": identity.task(self.task),
            "feature_lengths": dict(self.feature_lengths),
            "reward": records.describe(self.reward), "seed": self.seed}


def training(name: str, setting: Setting, validation: Any, *, after: Tuple[Spec, ...] = (),
             **inputs: Any) -> Spec:
  """A training stage: the run's setting, how validation picks its checkpoint
  (`EvalConfig`), and its own inputs."""
  return Spec(name, {"setting": setting, "validation": validation, **inputs}, after)


def evaluation(name: str, setting: Setting, config: Any, policy: Spec,
               splits: Optional[Tuple[str, ...]] = None) -> Spec:
  """An evaluation of `policy`'s stage: the run's setting (the rewards it reports among
  it) and `EvalConfig` (examples, beam, best-of-N, held-out reward)."""
  inputs = {"setting": setting, "evaluation": config}
  if splits is not None:
    inputs["splits"] = list(splits)
  return Spec(name, inputs, (policy,))
