"""The roles a policy plays in a `rest` run's report, spelled once.

A row of the report (and of `rest_state.json`'s "rows") has one: BC, the controls
beside ReST (BC+, filtered BC, random selection), the ablation ReST on the samples
alone, and ReST. A `Role` is a `str`, so the state file keeps the plain name and
rows read back from it compare equal to the enum.
"""

import enum
from typing import Any, Dict, Mapping, Optional, Sequence


class Role(str, enum.Enum):
  """A policy's role (its value is the report's name for it)."""

  BC = "BC"
  BC_PLUS = "BC+"
  FILTERED_BC = "filtered BC"
  RANDOM_SELECTION = "random selection"
  SAMPLES_ONLY = "ReST (samples only)"
  REST = "ReST"

  # A plain str in every way that matters: printed, formatted, hashed (a dict read from
  # the state file, keyed by names, finds a role) and compared as its name.
  __str__ = str.__str__
  __format__ = str.__format__
  __hash__ = str.__hash__


# The controls: a method must beat the best of these (chosen on validation) to claim a gain.
CONTROLS = (Role.BC, Role.BC_PLUS, Role.FILTERED_BC, Role.RANDOM_SELECTION)


def row_id(row: Mapping[str, Any]) -> Dict[str, Any]:
  """Which policy a row is: its role, Grow step and Improve step (BC and BC+: 0, 0).
  The run summary's picks (`best_control`, `arm_selected`) name rows by it."""
  return {"role": str(row["role"]), "grow_step": int(row.get("grow_step") or 0),
          "improve_step": int(row.get("improve_step") or 0)}


def find(rows: Sequence[Mapping[str, Any]], pick: Any,
         role: Optional[str] = None) -> Optional[Mapping[str, Any]]:
  """The row `pick` names: a `row_id`, or in runs from before ids its policy label (of
  `role` where two chains could share it: BC picked by several). None if none."""
  if isinstance(pick, Mapping):
    return next((r for r in rows if row_id(r) == dict(pick)), None)
  matches = [r for r in rows if r["policy"] == pick]
  return next((r for r in matches if r["role"] == role), matches[0] if matches else None)
