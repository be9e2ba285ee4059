"""`convert`: a t5x checkpoint's `target` tree, checked against (and loaded into) our model.

    python -m rest_jax.main convert --gin_file=configs/wmt_en_de.gin \
        --t5x_checkpoint=/ckpts/t5_1_1_base/checkpoint_1000000 [--output_dir=$MODEL_DIR/bc]

A t5x checkpoint directory holds a msgpack file `checkpoint` with the train state
(`{"target": params, "state": ...}`, or under `"optimizer"` in older ones). Small
arrays are stored in it directly; partitioned ones are TensorStore (zarr) arrays in
sibling directories, referenced by a spec. The built-in model uses t5x's parameter
names and logical axes, so names and shapes must match one to one: the report lists
every missing, unexpected and mis-shaped parameter. With `--output_dir`, a matching
checkpoint is written as a rest_jax checkpoint at step 0 (fresh optimizer state); run
`rest` with `--gin.BC_STEPS=0` and that directory as `MODEL_DIR/bc` to start ReST from
the t5x policy. t5x itself is not needed.
"""

import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from flax import serialization, traverse_util
import numpy as np

from rest_jax import checkpoints, partitioning, trainer as trainer_lib


class ConversionError(ValueError):
  """A checkpoint that cannot be read or does not fit the model."""


def _is_ts_spec(value: Any) -> bool:
  return isinstance(value, dict) and {"driver", "kvstore"} <= set(value)


def read_t5x_target(checkpoint_dir: str) -> Dict[str, Any]:
  """The flattened `target` tree: `{"encoder/layers_0/...": ndarray or TensorStore spec}`."""
  path = os.path.join(checkpoint_dir, "checkpoint")
  if not os.path.exists(path):
    raise ConversionError(f"{checkpoint_dir}: no t5x 'checkpoint' file (expected a"
                          " checkpoint_<step> directory written by t5x)")
  with open(path, "rb") as f:
    try:
      state = serialization.msgpack_restore(f.read())
    except Exception as e:  # msgpack raises several types on a damaged file
      raise ConversionError(f"{path}: not a readable t5x msgpack checkpoint ({e})") from e
  target = state.get("target", state.get("optimizer", {}).get("target"))
  if target is None:
    raise ConversionError(f"{path}: no 'target' tree (top-level keys: {sorted(state)})")
  flat = {}

  def walk(node, prefix):
    if isinstance(node, dict) and not _is_ts_spec(node):
      for key, value in node.items():
        walk(value, prefix + (key,))
    else:
      flat["/".join(prefix)] = node

  walk(target, ())
  return flat


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


def convert(*, model, t5x_checkpoint: str, output_dir: Optional[str] = None,
            feature_lengths: Optional[Mapping[str, int]] = None,
            partitioner: Optional[partitioning.Partitioner] = None) -> Report:
  """Checks a t5x checkpoint against `model` and, if it matches and asked, converts it.

  Args:
    model: the configured model (t5x API).
    t5x_checkpoint: a t5x `checkpoint_<step>` directory.
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
  if output_dir and report.ok:
    values = {}
    for name, leaf in ours.items():
      value = theirs[name]
      array = _open(value, t5x_checkpoint).read().result() if _is_ts_spec(value) else value
      values[tuple(name.split("/"))] = np.asarray(array).astype(leaf.dtype)
    params = traverse_util.unflatten_dict(values)
    state = trainer.state_from_params(params)
    ckpt = checkpoints.Checkpointer(output_dir)
    ckpt.save(state, force=True)
    ckpt.close()
    report.written = ckpt.directory
  return report
