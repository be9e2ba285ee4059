"""A row of a `rest` run's report: one policy, what it is, where it is, how it scored.

`rest` returns its rows, the report prints them, and the state file's run summary
keeps them (`to_json`), where `seeds` reads them back (`from_json`) and finds a
policy by its role, Grow step and Improve step (`PolicyRow.id`), never by its label.
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from rest_jax.roles import Role

# What the state file keeps of a row (its stage spec and its seconds stay in the run).
_SAVED = ("policy", "role", "grow_step", "improve_step", "metrics", "optimizer_steps",
          "bc_steps", "trains_on", "kept_samples", "kept_references", "selected",
          "arm_selected")


@dataclasses.dataclass
class PolicyRow:
  """One policy of a run.

  Attributes:
    policy: the report's label ("BC", "G1 I2 (tau=0.512)", "filtered BC G1 I1 ...").
    role: the part it plays (BC, a control, the samples-only ablation, ReST).
    directory: its step folder (in the state file: relative to the run, or absolute
      for BC read from another run).
    metrics: `<split>/<metric>` of every split it was evaluated on.
    grow_step: g of the step that trained it (0 for BC and BC+).
    improve_step: i of the step that trained it (0 for BC and BC+).
    index: its TensorBoard step in the run's summaries.
    optimizer_steps: optimizer steps from initialisation to its checkpoint.
    bc_steps: BC's share of them (BC+: the report says when BC+ kept its start).
    kept_samples: samples its step trained on (a step on a grown dataset).
    kept_references: original pairs its step trained on.
    trains_on: per kind of row it trained on, their number and mean rewards.
    selected: the run's ReST policy (the best on validation over BC and ReST's steps).
    arm_selected: its arm's pick on validation.
    seconds: the wall time of its evaluation.
    stage: its stage spec in the run (`rest_jax/stages.py`); not saved.
  """

  policy: str
  role: Role
  directory: str = ""
  metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
  grow_step: int = 0
  improve_step: int = 0
  index: int = 0
  optimizer_steps: Optional[int] = None
  bc_steps: Optional[int] = None
  kept_samples: Optional[int] = None
  kept_references: Optional[int] = None
  trains_on: Optional[Dict[str, Any]] = None
  selected: bool = False
  arm_selected: bool = False
  seconds: float = 0.0
  stage: Any = dataclasses.field(default=None, repr=False, compare=False)

  @property
  def id(self) -> Dict[str, Any]:
    """Which policy it is: role, Grow step, Improve step (what the summary's picks name)."""
    return {"role": str(self.role), "grow_step": self.grow_step,
            "improve_step": self.improve_step}

  def to_json(self, where: Callable[[str], str] = lambda path: path) -> Dict[str, Any]:
    """The row as the state file keeps it; `where` writes its folder (relative)."""
    out = {k: getattr(self, k) for k in _SAVED if getattr(self, k) is not None}
    out["role"] = str(self.role)
    return {**out, "dir": where(self.directory)}

  @classmethod
  def from_json(cls, row: Mapping[str, Any]) -> "PolicyRow":
    """A row read back from a state file (older files: without folder or steps)."""
    known = {k: row[k] for k in _SAVED if k in row and row[k] is not None}
    return cls(**{**known, "role": Role(row.get("role", Role.REST)),
                  "directory": row.get("dir", "")})


def find(rows: Sequence[PolicyRow], pick: Any, role: Optional[str] = None
         ) -> Optional[PolicyRow]:
  """The row `pick` names: a `PolicyRow.id`, or in runs from before ids its label (of
  `role` where two chains could share it: BC picked by several). None if none."""
  if isinstance(pick, Mapping):
    return next((r for r in rows if r.id == dict(pick)), None)
  matches = [r for r in rows if r.policy == pick]
  return next((r for r in matches if r.role == role), matches[0] if matches else None)
