"""An ensemble's members side by side: training or scoring them concurrently on one device,
their checkpoints taking turns (`rest_jax.rewards.learned` trains and scores with these)."""

import concurrent.futures
import threading
from typing import Any, Callable, List

from rest_jax import checkpoints, partitioning, preemption


class TakingTurns(checkpoints.Checkpointer):
  """A `Checkpointer` whose opening, restores and saves (each waited for) take turns with
  those of the other members training in threads: Orbax's asynchronous saves from several
  threads at once wait on each other's signals and time out."""

  _turn = threading.RLock()

  def __init__(self, *args, **kwargs):
    with self._turn:
      super().__init__(*args, **kwargs)

  def save(self, state, force: bool = False) -> bool:
    with self._turn:
      saved = super().save(state, force)
      if saved:
        self.wait()
      return saved

  def restore(self, abstract_state, step=None):
    with self._turn:
      return super().restore(abstract_state, step)

  def close(self) -> None:
    with self._turn:
      super().close()


def map_members(fn: Callable[[int], Any], size: int,
                 partitioner: partitioning.Partitioner,
                 on_failure: Callable[[], None] | None = None) -> List[Any]:
  """`[fn(k) for k in range(size)]` over an ensemble's members (training them, scoring
  with one), concurrently when the partitioner's mesh is one device.

  A member's computations are small (a 2-layer encoder), and one alone leaves a CPU host's
  cores partly idle; the members share nothing, so each computes what it would alone, bit
  for bit, and the results come back in the members' order. On a mesh of several devices
  (or processes) they run one after another: every device must see the same collectives in
  the same order, and dispatch is asynchronous there anyway.

  `on_failure` is called as soon as one member fails or the waiting thread is interrupted
  (Ctrl-C), before waiting for the others: e.g. a preemption request, so that training
  members stop at their next step instead of running to their end.
  """
  if size == 1 or partitioner.mesh.devices.size > 1:
    return [fn(k) for k in range(size)]
  with concurrent.futures.ThreadPoolExecutor(max_workers=size,
                                             thread_name_prefix="reward_member") as pool:
    futures = [pool.submit(fn, k) for k in range(size)]
    try:
      concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
      if any(f.done() and f.exception() is not None for f in futures) and on_failure:
        on_failure()
    except BaseException:
      if on_failure:
        on_failure()
      raise
  errors = [f.exception() for f in futures if f.exception() is not None]
  if errors:  # the cause, not the stops it caused in the others
    raise next((e for e in errors if not isinstance(e, preemption.Preempted)), errors[0])
  return [f.result() for f in futures]
