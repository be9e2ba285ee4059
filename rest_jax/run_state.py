"""`rest_state.json`: which steps of a run are finished, under which records, with results,
and the run's summary (its rows, picks, thresholds) apart from them.

`RunState.run(spec, finished, fn, outputs)` runs a stage unless it is finished and
unchanged. A stage's record is derived from its spec (`rest_jax/stages.py`: its
inputs and the records of the stages it reads); a changed record, or a stage it
reads redone in this run, redoes it from scratch (its outputs removed first) and the
log says why, naming the changed fields.
"""

import dataclasses
import json
import os
import resource
from typing import Any, Dict, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils

from rest_jax import files, layout, records, stages


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
class RunState:
  """The state file: finished steps with their results and configs; written atomically."""

  path: str
  steps: Dict[str, Any] = dataclasses.field(default_factory=dict)
  # Each step's configuration as it was when the step started (what makes a result stale).
  configs: Dict[str, Any] = dataclasses.field(default_factory=dict)
  # The stages this run did work in: every stage that reads one of them is redone.
  redone: set = dataclasses.field(default_factory=set)
  # What the run found, apart from its stages' results: its report's rows, the picks on
  # validation, each Grow step's thresholds (`layout.SUMMARY_KEYS`); rewritten each run.
  summary: Dict[str, Any] = dataclasses.field(default_factory=dict)

  @classmethod
  def load(cls, model_dir: str) -> "RunState":
    path = layout.state_path(model_dir)
    if jax.process_index() == 0:  # a state file a killed run did not rename into place
      files.remove_temporaries(model_dir, [files.temporary_prefix(layout.STATE_FILE)])
    state = {}
    if files.exists(path):
      state = json.loads(files.read_text(path))
    steps = state.get("steps", {})
    # A state file from before the summary had its own place kept it among the steps.
    legacy = {k: steps.pop(k) for k in layout.SUMMARY_KEYS if k in steps}
    return cls(path, steps, state.get("configs", {}), summary=state.get("summary", legacy))

  def forget_others(self, names) -> None:
    """Drops the results of the stages this run did not build (a G or an arm no longer
    run, a policy no longer picked for test): the state's results are this run's. Their
    records stay, so that such a stage built again later is compared with the record
    its outputs on disk were made under."""
    for name in [n for n in self.steps if n in self.configs and n not in names]:
      self.steps.pop(name)

  def save(self) -> None:
    if jax.process_index() != 0:
      return
    files.atomic_write_text(
        self.path, json.dumps({"steps": self.steps, "configs": self.configs,
                               "summary": self.summary}, indent=2),
        "rest.state")

  def run(self, spec: stages.Spec, finished: bool, fn, outputs: Sequence[str] = ()) -> Any:
    """Runs stage `spec` unless it is finished and nothing it depends on changed.

    A stage is redone, its `outputs` removed first, when its record (`spec.record`:
    its inputs, and the records of the stages it reads) differs from the one it was
    started with, or when a stage it reads did work in this run (the log says which,
    and names the changed fields). A stage whose outputs are finished on disk but
    which this state file does not record (a killed run, or a finished `bc/` or
    `grow_1/` copied from another run) is run again to read its result back (it finds
    its work done), and does not make the stages that read it start afresh: only a
    stage that did work does.
    """
    name, config = spec.name, spec.record
    recorded = self.configs.get(name)
    changed = ", ".join(records.changes(recorded, config)) if recorded != config else ""
    upstream = [s.name for s in spec.after if s.name in self.redone]
    if finished and name in self.steps and not upstream and not changed:
      logging.info("rest: %s already done", name)
      return self.steps[name]
    why = "; ".join(([f"{', '.join(upstream)} was redone in this run"] if upstream else []) +
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
    if why or recorded != config:
      # Before any work: a killed step resumes only under the same config, and its old
      # result is not taken for the new one's.
      self.configs[name] = config
      self.steps.pop(name, None)
      self.save()
    result = fn()
    if isinstance(result, dict):  # memory after each step: a leak shows as a rising line
      result = {**result, **memory_mb()}
    self.steps[name] = result
    if not reused:
      self.redone.add(name)
    self.save()
    return result
