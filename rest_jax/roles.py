"""The roles a policy plays in a `rest` run's report, spelled once.

A row of the report (`rows.PolicyRow`, and the run summary's "rows" in
`rest_state.json`) has one: BC, the controls
beside ReST (BC+, filtered BC, random selection), the ablation ReST on the samples
alone, and ReST. A `Role` is a `str`, so the state file keeps the plain name and
rows read back from it compare equal to the enum.
"""

import enum


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
