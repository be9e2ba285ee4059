"""Named fault points, for the preemption tests (`tests/faults/`).

The code calls `point("grow.sample")` and the like where a preemption would hurt
most: while sampling, between writing a shard's temporary file and renaming it,
during a train step, while orbax writes a checkpoint, before the manifest is
renamed into place. Nothing happens unless the environment asks for a fault:

    REST_JAX_FAULT=grow.sample:3     SIGKILL this process at the 3rd `grow.sample`
    REST_JAX_FAULT=*:17              ... at the 17th fault point of any name
    REST_JAX_FAULT_TRACE=/tmp/trace  append every point reached (name, count) to a file

SIGKILL, not an exception: no `finally`, no atexit, no flushing, as when a TPU VM
is preempted or a cluster's scheduler kills a job.
"""

import os
import signal
import threading
from typing import Dict, Optional, Tuple

FAULT_ENV = "REST_JAX_FAULT"
TRACE_ENV = "REST_JAX_FAULT_TRACE"
# SIGKILL (default: the process dies on the spot) or SIGTERM (a preemption notice: the
# process saves at its next step boundary and exits; rest_jax/preemption.py).
SIGNAL_ENV = "REST_JAX_FAULT_SIGNAL"

SITES = (
    "train.step",          # after a BC optimizer step
    "checkpoint.save",     # orbax has started (possibly async) writing a checkpoint
    "grow.sample",         # before sampling a batch of sources
    "grown.shard_write",   # a shard's temporary file is written, not yet renamed
    "grown.sidecar",       # a shard is in place, its sidecar not yet
    "grow.manifest",       # every shard is written, the manifest not yet begun
    "grown.manifest",      # the manifest's temporary file is written, not yet renamed
    "improve.step",        # after an Improve optimizer step
    "reward_model.step",   # after a reward-model optimizer step
    "eval.batch",          # during an evaluation
    "rest.state",          # rest_state.json's temporary file written, not yet renamed
    "selection.write",     # selection.json's temporary file written, not yet renamed
)

_counts: Dict[str, int] = {}
_spec: Optional[Tuple[str, int]] = None
_spec_source: Optional[str] = None
_LOCK = threading.Lock()


def _parse(value: str) -> Tuple[str, int]:
  site, sep, count = value.rpartition(":")
  if not sep or not count.isdigit() or int(count) < 1 or (site != "*" and site not in SITES):
    raise ValueError(f"{FAULT_ENV}={value!r}: expected SITE:COUNT with COUNT >= 1 and SITE"
                     f" '*' or one of {', '.join(SITES)}")
  return site, int(count)


def check_environment() -> None:
  """Rejects a malformed `REST_JAX_FAULT` at start-up rather than at the first fault point."""
  value = os.environ.get(FAULT_ENV)
  if value:
    _parse(value)
  kind = os.environ.get(SIGNAL_ENV, "KILL")
  if kind not in ("KILL", "TERM"):
    raise ValueError(f"{SIGNAL_ENV}={kind!r}: expected KILL or TERM")


def point(site: str) -> None:
  """Marks fault point `site`; kills the process here if `REST_JAX_FAULT` says so."""
  value = os.environ.get(FAULT_ENV)
  trace = os.environ.get(TRACE_ENV)
  if not value and not trace:
    return
  with _LOCK:  # points are reached from several threads (an ensemble's members)
    _point(site, value, trace)


def _point(site: str, value: str | None, trace: str | None) -> None:
  global _spec, _spec_source
  _counts[site] = _counts.get(site, 0) + 1
  _counts["*"] = _counts.get("*", 0) + 1
  if trace:
    with open(trace, "a") as f:
      f.write(f"{site} {_counts[site]}\n")
  if value:
    if value != _spec_source:
      _spec, _spec_source = _parse(value), value
    want, count = _spec
    if (want == "*" or want == site) and _counts[want] == count:
      if trace:
        with open(trace, "a") as f:
          f.write(f"KILL {site} {_counts[site]}\n")
      kind = os.environ.get(SIGNAL_ENV, "KILL")
      os.kill(os.getpid(), signal.SIGTERM if kind == "TERM" else signal.SIGKILL)
