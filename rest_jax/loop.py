"""The one training loop: BC (`train`), Improve, the controls and the reward model.

Each of them builds a `Job` for `run`: its trainer (model, loss, optimizer), its
batches (already positioned at the step it resumes from), its checkpointer, and
optionally a `Selection` on validation; and `Hooks` for what only it does (BC's
summaries and evaluations, Improve's metrics saved beside each checkpoint). The
loop owns what must be the same everywhere:

- resume: it starts at the state's step; the caller restores the state and skips
  the data to that step, so a resumed run sees the same batches and keys;
- checkpoints: every `checkpointer.save_every` steps and at the last step;
- selection: validation every `eval_period` steps (and, with `include_start`, at
  the start), the best checkpoint kept, an early stop after `patience` evaluations
  without improvement (saved where a re-run finds it);
- preemption: after a SIGTERM (or a fault point) the step is saved and `Preempted`
  raised, so that the same command continues bit for bit.
"""

import dataclasses
import time
from typing import Any, Callable, Iterator, Mapping, Optional

import jax
import tqdm

from rest_jax import checkpoints, faults, preemption, selection as selection_lib
from rest_jax import trainer as trainer_lib

# (step done, new state, the step's metrics, the host batch) -> None
AfterStep = Callable[[int, trainer_lib.TrainState, Mapping[str, Any], Mapping[str, Any]], None]


@dataclasses.dataclass
class LoopResult:
  """How a run of the loop ended.

  Attributes:
    state: the last state (not the selected one: `Selection.restore_best` gives that).
    stopped_early: selection's patience ran out before `total_steps`.
    seconds: wall time of this call.
    tokens: target tokens trained on in this call (all hosts).
  """

  state: trainer_lib.TrainState
  stopped_early: bool
  seconds: float
  tokens: int


@dataclasses.dataclass
class Job:
  """What a training stage hands the loop: everything `run` consumes.

  Attributes:
    name: for the bar and the preemption message.
    trainer: the compiled train step.
    state: where to start (a restored checkpoint, or a fresh state at step 0).
    batches: host batches from the state's step on.
    total_steps: the run's last step.
    checkpointer: where the run's latest state goes; closed on return.
    dropout_rng: the base key (each step folds its number in).
    fault_point: the name of the fault point after each step (`faults.py`).
    loss_args: keyword arguments of the loss (e.g. BVMPO's frozen BC policy).
    selection: keeps the best checkpoint by `validate`; finished on return.
    validate: the validation score of parameters (higher is better).
    include_start: the state at step 0 is a candidate of the selection.
  """

  name: str
  trainer: trainer_lib.Trainer
  state: trainer_lib.TrainState
  batches: Iterator[Mapping[str, Any]]
  total_steps: int
  checkpointer: checkpoints.Checkpointer
  dropout_rng: jax.Array
  fault_point: str
  loss_args: Optional[Mapping[str, Any]] = None
  selection: Optional[selection_lib.Selection] = None
  validate: Optional[Callable[[Any], float]] = None
  include_start: bool = False


@dataclasses.dataclass(frozen=True)
class Hooks:
  """What only some stages do around the loop's steps.

  Attributes:
    after_step: called after every step (metrics, summaries, evaluations).
    before_checkpoint: called with the step before each checkpoint is written
      (state kept beside it, e.g. metrics so far).
    progress_bar: tqdm bar (on process 0).
    bar_postfix: show tokens/s on the bar.
  """

  after_step: Optional[AfterStep] = None
  before_checkpoint: Optional[Callable[[int], None]] = None
  progress_bar: bool = True
  bar_postfix: bool = True


def run(job: Job, hooks: Hooks = Hooks()) -> LoopResult:
  """Trains `job` from its state's step to `job.total_steps` (or an early stop); see the
  module doc."""
  name, trainer, state, batches = job.name, job.trainer, job.state, job.batches
  total_steps, checkpointer, selection, validate = (job.total_steps, job.checkpointer,
                                                    job.selection, job.validate)
  after_step, before_checkpoint = hooks.after_step, hooks.before_checkpoint
  start = int(jax.device_get(state.step))
  if selection is not None:
    if validate is None:
      raise ValueError(f"{name}: a selection needs a validate function")
    selection.resume_from(start)
    if job.include_start and start == 0 and not any(s == 0 for s, _ in selection.history):
      selection.record(0, validate(state.params), state)
  bar = tqdm.tqdm(total=total_steps, initial=start, desc=name, unit="step", dynamic_ncols=True,
                  disable=not (hooks.progress_bar and jax.process_index() == 0))
  tick, tokens, stopped = time.perf_counter(), 0, False

  def save(done: int, force: bool) -> None:
    if before_checkpoint is not None and (force or checkpointer.due(done)):
      before_checkpoint(done)
    checkpointer.save(state, force=force)

  for _ in range(start, total_steps):
    batch = next(batches)
    state, metrics = trainer.train_step(state, trainer.partitioner.shard_batch(batch),
                                        job.dropout_rng, job.loss_args)
    faults.point(job.fault_point)
    done = int(jax.device_get(state.step))
    if "decoder_loss_weights" in batch:
      tokens += int(batch["decoder_loss_weights"].sum()) * jax.process_count()
    if after_step is not None:
      after_step(done, state, metrics, batch)
    save(done, force=done == total_steps)
    bar.update(1)
    if hooks.bar_postfix and tokens:
      bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - tick, 1e-9):.0f}")
    if selection is not None and selection.due(done, total_steps):
      selection.record(done, validate(state.params), state)
      tqdm.tqdm.write(f"{name} step {done:6d} validation score {selection.history[-1][1]:.4f}"
                      f" (best {selection.best[1]:.4f} at step {selection.best[0]})")
      if selection.should_stop and done < total_steps:
        if checkpointer.latest_step() != done:
          save(done, force=True)  # where a re-run finds the stopped run
        stopped = True
        break
    if preemption.reached(done):
      if checkpointer.latest_step() != done:
        save(done, force=True)
      checkpointer.close()
      bar.close()
      raise preemption.Preempted(f"preempted during {name} at step {done}: saved; run the"
                                 " same command again to continue")
  bar.close()
  if selection is not None:
    if not selection.history:  # nothing trained (e.g. BC_STEPS = 0, or a lost selection file)
      if checkpointer.latest_step() is None:
        save(int(jax.device_get(state.step)), force=True)
      selection.record(int(jax.device_get(state.step)), validate(state.params), state)
    selection.finish()
  checkpointer.close()
  return LoopResult(state=state, stopped_early=stopped, seconds=time.perf_counter() - tick,
                    tokens=tokens)
