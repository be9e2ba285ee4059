"""Model selection on validation: keep a training run's best checkpoint, stop early, resume.

Every policy ReST uses is chosen on validation, never on test: BC keeps its best
checkpoint by validation reward and stops once it has not improved for `patience`
evaluations; each Improve step (and the BC+ control) keeps its best checkpoint.

    <model_dir>/checkpoints/    the run's latest state, for resuming (`Checkpointer`)
    <model_dir>/best/           the best state so far by the validation score
    <model_dir>/selection.json  every evaluation (step, score), the best, and whether
                                the run finished (reached its steps, or stopped early)

The best checkpoint is saved (and waited for) before `selection.json` names it, and
`best/` keeps two, so a run killed between the two writes still finds the state the
file names. Evaluations after the checkpoint a run resumes from are forgotten and
redone, so a resumed run records what an uninterrupted one would.
"""

import dataclasses
import json
from typing import Any, Dict, List, Optional, Tuple

import jax

from rest_jax import checkpoints, files
from rest_jax.trainer import TrainState

SELECTION_FILE = "selection.json"


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
  """When to evaluate on validation and when to stop (gin: `selection.SelectionConfig`).

  Attributes:
    eval_period: optimizer steps between validation evaluations (and at the end).
    patience: stop after this many evaluations without a better score (None: never).
    min_delta: a score must beat the best by more than this to count as better.
  """

  eval_period: int = 100
  patience: Optional[int] = None
  min_delta: float = 0.0


class Selection:
  """The validation history and best checkpoint of one training run (BC, Improve, BC+)."""

  def __init__(self, model_dir: str, config: Optional[SelectionConfig] = None):
    """`config` None: the one the run's file recorded (a reader, e.g. of another run's BC,
    sees its patience and min_delta), else the default."""
    self.model_dir = model_dir
    self.config = config or SelectionConfig()
    self.path = files.join(model_dir, SELECTION_FILE)
    self.history: List[Tuple[int, float]] = []
    self.finished = False
    if jax.process_index() == 0:  # a selection file a killed run did not rename into place
      files.remove_temporaries(model_dir, [files.temporary_prefix(SELECTION_FILE)])
    if files.exists(self.path):
      saved = json.loads(files.read_text(self.path))
      self.history = [(int(s), float(v)) for s, v in saved["history"]]
      self.finished = bool(saved["finished"])
      if config is None and saved.get("config"):
        known = {f.name for f in dataclasses.fields(SelectionConfig)}
        self.config = SelectionConfig(**{k: v for k, v in saved["config"].items() if k in known})
    self._best_ckpt = None

  # --- queries ---------------------------------------------------------------

  @property
  def best(self) -> Optional[Tuple[int, float]]:
    """(step, score) of the best evaluation: the first of the highest scores."""
    best = None
    for step, score in self.history:
      if best is None or score > best[1] + self.config.min_delta:
        best = (step, score)
    return best

  def due(self, step: int, total_steps: int) -> bool:
    return step % self.config.eval_period == 0 or step == total_steps

  @property
  def should_stop(self) -> bool:
    """Whether `patience` evaluations in a row did not beat the best."""
    if self.config.patience is None or not self.history:
      return False
    best_step = self.best[0]
    since = sum(1 for step, _ in self.history if step > best_step)
    return since >= self.config.patience

  # --- updates -----------------------------------------------------------------

  def resume_from(self, step: int) -> None:
    """Forgets evaluations after `step` (the checkpoint a run resumes from): they are redone."""
    self.history = [(s, v) for s, v in self.history if s <= step]
    self.finished = False

  def record(self, step: int, score: float, state: TrainState) -> bool:
    """Adds an evaluation; saves `state` as the best if it is. Returns whether it is."""
    previous = self.best
    self.history.append((int(step), float(score)))
    is_best = self.best[0] == step and (previous is None or previous[0] != step)
    if is_best:
      ckpt = self._best_checkpointer()
      if step not in ckpt.all_steps():  # else a killed run saved this same state already
        ckpt.save(state, force=True)
        ckpt.wait()
    self._write()
    return is_best

  def finish(self) -> None:
    self.finished = True
    self._write()

  def restore_best(self, abstract_state: TrainState) -> TrainState:
    """The best state (raises `CheckpointError` if there is none)."""
    best = self.best
    if best is None:
      raise checkpoints.CheckpointError(f"{self.path}: no validation evaluation yet")
    return self._best_checkpointer().restore(abstract_state, step=best[0])

  def close(self) -> None:
    if self._best_ckpt is not None:
      self._best_ckpt.close()
      self._best_ckpt = None

  def summary(self) -> Dict[str, Any]:
    """The history in brief; `since_best` (evaluations after the best) against `patience`
    says whether the run converged: patience ran out, at or before its last step."""
    best = self.best
    return {"evaluations": len(self.history), "best_step": best and best[0],
            "best_score": best and best[1],
            "last_step": self.history[-1][0] if self.history else None,
            "stopped_early": self.should_stop, "patience": self.config.patience,
            "since_best": sum(1 for step, _ in self.history if best and step > best[0])}

  def _best_checkpointer(self) -> checkpoints.Checkpointer:
    if self._best_ckpt is None:
      self._best_ckpt = checkpoints.Checkpointer(self.model_dir, save_every=1, keep=2,
                                                 subdir="best")
    return self._best_ckpt

  def _write(self) -> None:
    if jax.process_index() != 0:
      return
    files.makedirs(self.model_dir)
    files.atomic_write_text(self.path, json.dumps(
        {"history": self.history, "finished": self.finished, "best": self.best,
         "config": dataclasses.asdict(self.config)}, indent=1), "selection.write")


def finished_bc(directory: str) -> str:
  """`directory` if it holds a finished BC step (rest's `bc/`), else a ValueError."""
  if not Selection(directory).finished:
    raise ValueError(
        f"BC_FROM = {directory!r} is not a finished BC step: it needs the"
        f" {SELECTION_FILE} and best/ checkpoint that `rest` writes when BC"
        " ends (point it at a run's bc/)")
  return directory


def restore_selected(step_dir: str, abstract_state: Any):
  """The state a finished step's selection picked (its best checkpoint on validation)."""
  sel = Selection(step_dir)
  state = sel.restore_best(abstract_state)
  sel.close()
  return state


def summary_of(step_dir: str) -> Dict[str, Any]:
  """A step's selection summary (best and last step, history, early stop)."""
  sel = Selection(step_dir)
  summary = sel.summary()
  sel.close()
  return summary


def best_step_of(step_dir: str) -> int:
  return summary_of(step_dir)["best_step"]
