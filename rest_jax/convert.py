"""`convert`: a t5x checkpoint's `target` tree, checked against (and loaded into) a model.

    python -m rest_jax.main convert --gin_file=configs/wmt_en_de.gin \
        --t5x_checkpoint=/ckpts/t5_1_1_base/checkpoint_1000000 [--output_dir=$MODEL_DIR/bc]

t5x writes a `checkpoint_<step>` directory in one of two formats:

- Orbax (t5x's default): `state/`, an Orbax PyTree checkpoint of the train state
  `{"target": params, "state": ...}`, read with orbax;
- legacy (`use_orbax=False`): a msgpack file `checkpoint` with the train state (or
  `"optimizer"` in older ones); small arrays inside it, partitioned ones as
  TensorStore (zarr) arrays in sibling directories, referenced by a spec.

The model can be rest_jax's (its parameter tree is t5x's: names, 2-D attention
kernels, logical axes) or t5x's own: names and shapes must match one to one, and the
report lists every missing, unexpected and mis-shaped parameter. With `--output_dir`,
a matching checkpoint is written as a rest_jax checkpoint at step 0 (fresh optimizer
state): `rest` with `--gin.BC_STEPS=0` and that directory as `MODEL_DIR/bc` starts ReST
from the t5x policy. `rest` also reads `INITIAL_CHECKPOINT_PATH` (t5x's macro) through
`read_params`. t5x itself is not needed.
"""

import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from flax import serialization, traverse_util
import jax
import numpy as np

from rest_jax import checkpoints, partitioning, trainer as trainer_lib


class ConversionError(ValueError):
  """A checkpoint that cannot be read or does not fit the model."""


def _is_ts_spec(value: Any) -> bool:
  return isinstance(value, dict) and {"driver", "kvstore"} <= set(value)


ORBAX_ITEM = "state"


def _flatten(target) -> Dict[str, Any]:
  flat = {}

  def walk(node, prefix):
    if isinstance(node, Mapping) and not _is_ts_spec(node):
      for key, value in node.items():
        walk(value, prefix + (str(key),))
    else:
      flat["/".join(prefix)] = node

  walk(target, ())
  return flat


def _read_orbax(checkpoint_dir: str) -> Dict[str, Any]:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  path = os.path.abspath(os.path.join(checkpoint_dir, ORBAX_ITEM))
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    metadata = checkpointer.metadata(path)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    if "target" not in tree:
      raise ConversionError(f"{path}: no 'target' tree (top-level keys: {sorted(tree)})")
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                          tree)
    state = checkpointer.restore(path, restore_args=restore_args)
  except ConversionError:
    raise
  except Exception as e:  # orbax raises many types; name what was being read
    raise ConversionError(f"{path}: not a readable Orbax checkpoint ({e})") from e
  finally:
    checkpointer.close()
  return _flatten(state["target"])


def read_t5x_target(checkpoint_dir: str) -> Dict[str, Any]:
  """The flattened `target` tree: `{"encoder/layers_0/...": ndarray or TensorStore spec}`."""
  if os.path.isdir(os.path.join(checkpoint_dir, ORBAX_ITEM)):
    return _read_orbax(checkpoint_dir)
  path = os.path.join(checkpoint_dir, "checkpoint")
  if not os.path.exists(path):
    raise ConversionError(
        f"{checkpoint_dir}: neither an Orbax t5x checkpoint ('{ORBAX_ITEM}/') nor a legacy one"
        " (a 'checkpoint' msgpack file): give a checkpoint_<step> directory written by t5x")
  with open(path, "rb") as f:
    try:
      state = serialization.msgpack_restore(f.read())
    except Exception as e:  # msgpack raises several types on a damaged file
      raise ConversionError(f"{path}: not a readable t5x msgpack checkpoint ({e})") from e
  target = state.get("target", state.get("optimizer", {}).get("target"))
  if target is None:
    raise ConversionError(f"{path}: no 'target' tree (top-level keys: {sorted(state)})")
  return _flatten(target)


def _shape(value: Any, checkpoint_dir: str) -> Tuple[int, ...]:
  if _is_ts_spec(value):
    shape = value.get("metadata", {}).get("shape")
    if shape is None:
      shape = _open(value, checkpoint_dir).shape
    return tuple(int(d) for d in shape)
  return tuple(np.shape(value))


def _open(spec: Mapping[str, Any], checkpoint_dir: str):
  import tensorstore as ts  # pylint: disable=g-import-not-at-top (comes with orbax)

  spec = {**spec, "kvstore": dict(spec["kvstore"])}
  kvstore = spec["kvstore"]
  if kvstore.get("driver") in ("file", "gfile", "gcs") and not os.path.isabs(kvstore["path"]):
    spec["kvstore"] = {"driver": "file", "path": os.path.join(checkpoint_dir, kvstore["path"])}
  try:
    return ts.open(spec, open=True).result()
  except Exception as e:  # tensorstore raises ValueError and its own status errors
    raise ConversionError(f"{checkpoint_dir}: cannot open array {kvstore.get('path')} ({e})") from e


@dataclasses.dataclass
class Report:
  checkpoint: str
  matched: List[str]
  missing: List[Tuple[str, Tuple[int, ...]]]  # in the model, not in the checkpoint
  unexpected: List[Tuple[str, Tuple[int, ...]]]  # in the checkpoint, not in the model
  mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]  # name, checkpoint, model
  written: Optional[str] = None

  @property
  def ok(self) -> bool:
    return not (self.missing or self.unexpected or self.mismatched)

  def format(self) -> str:
    lines = [f"t5x checkpoint {self.checkpoint}: {len(self.matched)} parameters match the model"
             f" (names and shapes)"]
    lines += [f"  missing from the checkpoint: {n} {s}" for n, s in self.missing]
    lines += [f"  not in the model: {n} {s}" for n, s in self.unexpected]
    lines += [f"  shape mismatch: {n}: checkpoint {c}, model {m}" for n, c, m in self.mismatched]
    lines.append("OK" if self.ok else
                 f"MISMATCH: {len(self.missing)} missing, {len(self.unexpected)} unexpected,"
                 f" {len(self.mismatched)} mis-shaped")
    if self.written:
      lines.append(f"wrote a rest_jax checkpoint (step 0) to {self.written}")
    return "\n".join(lines)


def _value(value, checkpoint_dir: str) -> np.ndarray:
  return np.asarray(_open(value, checkpoint_dir).read().result() if _is_ts_spec(value)
                    else value)


def _match(trainer, t5x_checkpoint: str):
  """The checkpoint's arrays by name, and the report of how they fit the model's tree."""
  flat = traverse_util.flatten_dict(serialization.to_state_dict(trainer.abstract_state.params))
  ours = {"/".join(k): v for k, v in flat.items()}
  theirs = read_t5x_target(t5x_checkpoint)
  shapes = {name: _shape(value, t5x_checkpoint) for name, value in theirs.items()}
  report = Report(
      checkpoint=t5x_checkpoint,
      matched=sorted(n for n in ours if n in shapes and shapes[n] == tuple(ours[n].shape)),
      missing=sorted((n, tuple(ours[n].shape)) for n in ours if n not in shapes),
      unexpected=sorted((n, s) for n, s in shapes.items() if n not in ours),
      mismatched=sorted((n, shapes[n], tuple(ours[n].shape)) for n in ours
                        if n in shapes and shapes[n] != tuple(ours[n].shape)))
  return theirs, report


def _params(trainer, theirs, t5x_checkpoint: str):
  """The checkpoint's values in the model's own parameter tree (dict or FrozenDict alike)."""
  abstract = trainer.abstract_state.params
  leaves = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    leaves.append(_value(theirs[name], t5x_checkpoint).astype(leaf.dtype))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract), leaves)


def read_params(trainer: trainer_lib.Trainer, t5x_checkpoint: str):
  """A t5x checkpoint's parameters in `trainer`'s model tree (t5x's INITIAL_CHECKPOINT_PATH).

  Raises:
    ConversionError: the checkpoint cannot be read, or does not fit the model (the
      message lists what is missing, unexpected or mis-shaped).
  """
  theirs, report = _match(trainer, t5x_checkpoint)
  if not report.ok:
    raise ConversionError(report.format())
  return _params(trainer, theirs, t5x_checkpoint)


def convert(*, model, t5x_checkpoint: str, output_dir: Optional[str] = None,
            feature_lengths: Optional[Mapping[str, int]] = None,
            partitioner: Optional[partitioning.Partitioner] = None) -> Report:
  """Checks a t5x checkpoint against `model` and, if it matches and asked, converts it.

  Args:
    model: the configured model (t5x API): rest_jax's or t5x's.
    t5x_checkpoint: a t5x `checkpoint_<step>` directory (Orbax or legacy).
    output_dir: write the parameters as a rest_jax checkpoint under
      `output_dir/checkpoints` (only when every name and shape matches).
    feature_lengths: shapes to initialize the model with (only their presence matters).
    partitioner: the mesh the converted state is built on.
  """
  lengths = dict(feature_lengths or {"inputs": 8, "targets": 8})
  partitioner = partitioner or partitioning.Partitioner()
  trainer = trainer_lib.Trainer(model, partitioner,
                                trainer_lib.batch_input_shapes(partitioner.data_parallel_size,
                                                               lengths))
  theirs, report = _match(trainer, t5x_checkpoint)
  if output_dir and report.ok:
    state = trainer.state_from_params(_params(trainer, theirs, t5x_checkpoint))
    ckpt = checkpoints.Checkpointer(output_dir)
    ckpt.save(state, force=True)
    ckpt.close()
    report.written = ckpt.directory
  return report
