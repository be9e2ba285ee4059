"""Preemption notices: save at the next step boundary on every host, then exit.

Cloud TPU and spot VMs send SIGTERM some time before they stop a host. `install`
turns SIGTERM into a request; the training loops (BC, Improve, BC+) ask `reached`
after every optimizer step, and Grow between sampling batches. On a request a loop
saves a checkpoint of the step it has just finished (and Improve its metrics so
far) and raises `Preempted`; the command exits with `EXIT_CODE` (75, sysexits'
"temporary failure: try again"), and re-running it continues from there, as after
any interruption, to the same end state.

With several hosts, the hosts must stop at the same step: JAX's preemption sync
point (`multihost_utils.reached_preemption_sync_point`, the mechanism orbax and
t5x use; it needs `jax.distributed`, which `--multihost` starts) tells every host
at the same step once any host got the notice.
"""

import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils

EXIT_CODE = 75
_REQUESTED = threading.Event()
_INSTALLED = []
_CALLS = [0]  # every host asks as often, in lockstep: the sync point's increasing step id


class Preempted(Exception):
  """Raised at a step boundary after a preemption notice; everything done is saved."""


def _on_sigterm(signum, frame):
  del signum, frame
  _REQUESTED.set()
  logging.warning("preemption notice (SIGTERM): saving at the next step boundary")


def install() -> None:
  """Turns SIGTERM into a preemption request (the main thread's handler)."""
  if not _INSTALLED and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _on_sigterm)
    _INSTALLED.append(True)


def request() -> None:
  """Requests a preemption stop, as SIGTERM does (tests, fault injection)."""
  _REQUESTED.set()


def reached(step: int) -> bool:
  """Whether to save and stop after `step` (the same answer on every host).

  Every host must call this as often as the others (it is called after every
  optimizer step, which all hosts run together).
  """
  del step  # the loops restart their own step counts; the sync point needs one sequence
  _CALLS[0] += 1
  if jax.process_count() > 1:
    try:
      return bool(multihost_utils.reached_preemption_sync_point(_CALLS[0]))
    except RuntimeError:  # no preemption sync manager: agree on the local notices
      notices = multihost_utils.process_allgather(
          jax.numpy.asarray(_REQUESTED.is_set(), jax.numpy.int32))
      return bool(notices.max())
  return _REQUESTED.is_set()


def check(step: int, what: str) -> None:
  """Raises `Preempted` if a notice came (call where everything before is saved)."""
  if reached(step):
    raise Preempted(f"preempted during {what} at step {step}: the work done is saved; run the"
                    " same command again to continue")
