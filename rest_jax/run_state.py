"""`rest_state.json`: which steps of a run are finished, under which records, with results.

`RunState.run(name, finished, fn, outputs, config=...)` runs a step unless it is
finished and unchanged. A step's `config` is its record (`rest_jax/records.py`,
derived from its config objects); a changed record, or a step before it redone in
this run, redoes it from scratch (its outputs removed first) and the log says why,
naming the changed fields.
"""

import dataclasses
import json
import os
import resource
from typing import Any, Dict, Mapping, Optional, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils

from rest_jax import files, layout, records


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
  upstream_changed: str = ""  # the first step this run (re)did that later steps build on

  @classmethod
  def load(cls, model_dir: str) -> "RunState":
    path = layout.state_path(model_dir)
    if jax.process_index() == 0:  # a state file a killed run did not rename into place
      files.remove_temporaries(model_dir, [files.temporary_prefix(layout.STATE_FILE)])
    state = {}
    if files.exists(path):
      state = json.loads(files.read_text(path))
    return cls(path, state.get("steps", {}), state.get("configs", {}))

  def save(self) -> None:
    if jax.process_index() != 0:
      return
    files.atomic_write_text(
        self.path, json.dumps({"steps": self.steps, "configs": self.configs}, indent=2),
        "rest.state")

  def run(self, name: str, finished: bool, fn, outputs: Sequence[str] = (),
          upstream: bool = True, config: Optional[Mapping[str, Any]] = None) -> Any:
    """Runs step `name` unless it is finished and nothing it depends on changed.

    A step is redone, its `outputs` removed first, when a step before it was redone
    in this run, or when its `config` differs from the one it was started with (the
    log says which of the two, and which values changed). A step whose outputs are
    finished on disk but which this state file does not record (a killed run, or a
    finished `bc/` or `grow_1/` copied from another run) is run again to read its
    result back (it finds its work done), and does not make the steps after it start
    afresh: only a step that did work does, and only if it is `upstream` of them
    (BC+, a control beside the chain, is not).
    """
    config = json.loads(json.dumps(config, default=str)) if config is not None else None
    recorded = self.configs.get(name)
    changed = ", ".join(records.changes(recorded, config))
    if finished and name in self.steps and not self.upstream_changed and not changed:
      logging.info("rest: %s already done", name)
      return self.steps[name]
    why = "; ".join(([f"{self.upstream_changed} was redone in this run"]
                     if self.upstream_changed else []) +
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
    if config is not None and recorded != config:
      self.configs[name] = config
      self.save()  # before any work: a killed step resumes only under the same config
    result = fn()
    if isinstance(result, dict):  # memory after each step: a leak shows as a rising line
      result = {**result, **memory_mb()}
    self.steps[name] = result
    if upstream and not reused and not self.upstream_changed:
      self.upstream_changed = name
    self.save()
    return result
