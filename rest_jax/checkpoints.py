"""Orbax checkpoints of the train state: save every N steps, keep K, restore, resume.

A checkpoint holds the whole `TrainState` (step, params, optimizer state). The
data position is the step itself: the input pipeline is deterministic and skips
the batches already consumed, so a resumed run sees exactly the batches an
uninterrupted run would have seen.
"""


from absl import logging
import gin
import jax
import numpy as np
import orbax.checkpoint as ocp

from rest_jax import faults, files
from rest_jax.trainer import TrainState


class CheckpointError(RuntimeError):
  """A checkpoint that is missing, unreadable or does not fit the model."""


@gin.configurable(module="rest_jax.checkpoints", allowlist=["use_ocdbt"])
class Checkpointer:
  """Saves and restores `TrainState`s under `<model_dir>/checkpoints`.

  Args:
    model_dir: the run's directory.
    save_every: save when `step % save_every == 0` (and always on `force`).
    keep: number of most recent checkpoints kept.
    subdir: folder under `model_dir` (ReST uses one per Improve step).
    use_ocdbt: orbax's default format (one OCDBT database per checkpoint, as t5x
      writes). False writes one TensorStore array per leaf instead, for a store
      without GCS's object generations and preconditions, which OCDBT's commits
      need (e.g. gcp-storage-emulator). Either format is read back.
  """

  def __init__(self, model_dir: str, save_every: int = 1000, keep: int = 3,
               subdir: str = "checkpoints", use_ocdbt: bool = True):
    self.directory = files.absolute(files.join(model_dir, subdir))  # a gs:// path too
    self.save_every = save_every
    registry = None
    if not use_ocdbt:
      registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
      standard = ocp.StandardCheckpointHandler(use_ocdbt=False)
      registry.add(None, ocp.args.StandardSave, standard)
      registry.add(None, ocp.args.StandardRestore, standard)
      registry.add(None, ocp.args.PyTreeRestore, ocp.PyTreeCheckpointHandler(use_ocdbt=False))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=save_every, max_to_keep=keep, create=True,
            # Orbax names its cross-host barriers by this prefix and a per-process
            # operation count only: two managers saving at once on several hosts (a
            # run's checkpoints and the selection's best one) would meet at the same
            # barrier and fail ("... is already ongoing"). The directory is the same
            # string on every host and differs between managers.
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=f"rest_jax:{self.directory}"),
        ),
        handler_registry=registry,
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def due(self, step: int) -> bool:
    """Whether `save` writes `step` (without `force`): every `save_every` steps, no other.

    (orbax alone would also save the first step it sees; rest_jax keeps the schedule
    exact so that whatever is saved beside a checkpoint, e.g. Improve's metrics so far,
    exists for every checkpoint.)
    """
    return step % self.save_every == 0

  def save(self, state: TrainState, force: bool = False) -> bool:
    """Saves if the step is due (or `force`); returns whether it saved."""
    step = int(jax.device_get(state.step))
    if not (force or self.due(step)):
      return False
    saved = self._manager.save(step, args=ocp.args.StandardSave(state.as_dict()), force=True)
    if saved:
      faults.point("checkpoint.save")  # orbax may still be writing it in the background
      logging.info("Saving checkpoint for step %d to %s", step, self.directory)
    return saved

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def restore(self, abstract_state: TrainState, step: int | None = None) -> TrainState:
    """Restores `step` (default: latest) onto the shardings of `abstract_state`.

    Raises:
      CheckpointError: no checkpoint, or one that orbax cannot read or that does
        not match the model (the message names the step and directory).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    try:
      tree = self._manager.restore(
          step, args=ocp.args.StandardRestore(abstract_state.as_dict())
      )
    except Exception as e:  # orbax raises many types; name what was being read.
      raise CheckpointError(
          f"cannot restore checkpoint step {step} from {self.directory}: {e}"
      ) from e
    return TrainState.from_dict(tree)

  def restore_params(self, abstract_params, step: int | None = None):
    """Only the parameters of `step` (default: latest), onto `abstract_params`' shardings.

    For a policy that is only used (sampled, evaluated, trained by a new optimizer):
    the optimizer state is not read, so a checkpoint of any optimizer (BC's, Improve's,
    t5x's) serves.

    Raises:
      CheckpointError: as `restore`.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    item = {"params": abstract_params}
    try:
      tree = self._manager.restore(step, args=ocp.args.PyTreeRestore(
          item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
          partial_restore=True))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"cannot restore checkpoint step {step} from {self.directory}: {e}") from e
    return tree["params"]

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def read_arrays(checkpoint_dir: str, step: int | None = None):
  """A saved train state as host numpy arrays, whatever mesh or host count saved it.

  For inspection and comparisons (tests, `convert`); training restores through
  `Checkpointer.restore` onto its own shardings.

  Args:
    checkpoint_dir: a `checkpoints/` directory of a run (or of one ReST step).
    step: default: the latest.
  """
  manager = ocp.CheckpointManager(files.absolute(checkpoint_dir))
  step = manager.latest_step() if step is None else step
  manager.close()
  if step is None:
    raise CheckpointError(f"no checkpoint in {checkpoint_dir}")
  path = files.join(files.absolute(checkpoint_dir), str(step), "default")
  checkpointer = ocp.StandardCheckpointer()
  try:
    metadata = checkpointer.metadata(path)
    metadata = getattr(metadata, "item_metadata", metadata)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
    tree = checkpointer.restore(path, target)
  except Exception as e:  # orbax raises many types; name what was being read.
    raise CheckpointError(f"cannot read checkpoint step {step} from {checkpoint_dir}: {e}") from e
  finally:
    checkpointer.close()
  return jax.tree_util.tree_map(np.asarray, tree)
