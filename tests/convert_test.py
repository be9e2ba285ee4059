"""`convert`: a t5x-format checkpoint (msgpack + TensorStore) checked against and loaded into our model."""

import os

from flax import serialization, traverse_util
import numpy as np
import pytest
import tensorstore as ts

from rest_jax import checkpoints, convert, main
from tests.conftest import init_params, make_model


def _write_t5x_checkpoint(directory, params, edit=None):
  """A checkpoint laid out as t5x writes one: big arrays in TensorStore, the rest in msgpack."""
  os.makedirs(directory)
  flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
  if edit:
    edit(flat)
  target = {}
  for name, value in flat.items():
    if value.ndim >= 2:  # partitioned in t5x: a zarr array beside the msgpack file
      path = "target." + name.replace("/", ".")
      spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": path},
              "metadata": {"shape": list(value.shape), "dtype": "<f4",
                           "chunks": list(value.shape)}}
      store = ts.open({**spec, "kvstore": {"driver": "file",
                                           "path": os.path.join(directory, path)}},
                      create=True).result()
      store.write(value).result()
      leaf = spec
    else:
      leaf = value
    target[tuple(name.split("/"))] = leaf
  state = {"target": traverse_util.unflatten_dict(target), "state": {"step": np.int32(1000)}}
  with open(os.path.join(directory, "checkpoint"), "wb") as f:
    f.write(serialization.msgpack_serialize(state))


def test_matching_checkpoint_converts_and_loads(tmp_path):
  model = make_model()
  params = init_params(model, seed=3)
  _write_t5x_checkpoint(tmp_path / "checkpoint_1000", params)
  report = convert.convert(model=model, t5x_checkpoint=str(tmp_path / "checkpoint_1000"),
                           output_dir=str(tmp_path / "bc"))
  assert report.ok, report.format()
  assert len(report.matched) == len(traverse_util.flatten_dict(params)) == 52
  restored = checkpoints.read_arrays(str(tmp_path / "bc" / "checkpoints"))
  assert int(restored["step"]) == 0
  for key, value in traverse_util.flatten_dict(params).items():
    np.testing.assert_array_equal(traverse_util.flatten_dict(restored["params"])[key], value)


def test_mismatches_are_listed_and_nothing_is_written(tmp_path):
  model = make_model()

  def edit(flat):
    del flat["decoder/decoder_norm/scale"]
    flat["encoder/extra/kernel"] = np.zeros((3, 3), np.float32)
    flat["token_embedder/embedding"] = np.zeros((65, 32), np.float32)

  _write_t5x_checkpoint(tmp_path / "checkpoint_7", init_params(model), edit)
  report = convert.convert(model=model, t5x_checkpoint=str(tmp_path / "checkpoint_7"),
                           output_dir=str(tmp_path / "out"))
  assert not report.ok and report.written is None and not (tmp_path / "out").exists()
  assert report.missing == [("decoder/decoder_norm/scale", (32,))]
  assert report.unexpected == [("encoder/extra/kernel", (3, 3))]
  assert report.mismatched == [("token_embedder/embedding", (65, 32), (64, 32))]
  assert "MISMATCH: 1 missing, 1 unexpected, 1 mis-shaped" in report.format()


def test_not_a_t5x_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(convert.ConversionError, match="neither an Orbax t5x checkpoint"):
    convert.read_t5x_target(str(tmp_path))
  (tmp_path / "checkpoint").write_bytes(b"\x00garbage")
  with pytest.raises(convert.ConversionError, match="not a readable t5x msgpack"):
    convert.read_t5x_target(str(tmp_path))


def test_convert_command_names_the_problem(tmp_path):
  import gin

  try:
    with pytest.raises(SystemExit, match="convert: .*neither an Orbax t5x checkpoint"):
      main.main(["convert", "--gin_file=configs/demo.gin", "--gin.MODEL_DIR='unused'",
                 f"--t5x_checkpoint={tmp_path}"])
  finally:
    gin.clear_config()
