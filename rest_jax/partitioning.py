"""Meshes, logical-axis rules and shardings: one program for a CPU, a GPU or a TPU pod.

A `Partitioner` owns a `jax.sharding.Mesh` with axes `data` and `model`. Parameters
are sharded by their logical axis names (the `params_axes` collection that both
t5x models and ours produce) through t5x's standard rules; batches are split over
`data`; each step is one `jax.jit` with explicit in/out shardings.
"""

import dataclasses
import os
from typing import Any, Callable, Sequence, Tuple

from absl import logging
from flax.core import unfreeze
from flax.linen import partitioning as nn_partitioning
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

PyTree = Any
LogicalRules = Sequence[Tuple[str, str | None]]

DATA_AXIS = "data"
MODEL_AXIS = "model"


def standard_logical_axis_rules() -> LogicalRules:
  """t5x's default rules: data parallel over `batch`, model parallel over heads/mlp/vocab."""
  return (
      ("batch", DATA_AXIS),
      ("vocab", MODEL_AXIS),
      ("embed", None),
      ("mlp", MODEL_AXIS),
      ("heads", MODEL_AXIS),
      ("kv", None),
      ("joined_kv", MODEL_AXIS),
      ("relpos_buckets", None),
      ("abspos_buckets", None),
      ("length", None),
      ("layers", None),
      ("stack", None),
      ("mlp_activations", None),
  )


def initialize_multihost(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
  """Starts JAX's multi-controller runtime (one process per host).

  Arguments left as None come from `REST_JAX_COORDINATOR`, `REST_JAX_NUM_PROCESSES`
  and `REST_JAX_PROCESS_ID`, and otherwise from JAX's own detection (Cloud TPU,
  SLURM, ...). On CPU the gloo collectives are selected so that simulated hosts
  on one machine can run cross-process computations.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get("REST_JAX_COORDINATOR")
  if num_processes is None and "REST_JAX_NUM_PROCESSES" in env:
    num_processes = int(env["REST_JAX_NUM_PROCESSES"])
  if process_id is None and "REST_JAX_PROCESS_ID" in env:
    process_id = int(env["REST_JAX_PROCESS_ID"])
  if env.get("JAX_PLATFORMS", "").startswith("cpu") or env.get("REST_JAX_CPU_COLLECTIVES"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  logging.info("Process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def _resolve_mesh_shape(mesh_shape: Sequence[int] | None, num_devices: int) -> Tuple[int, int]:
  if mesh_shape is None:
    return num_devices, 1
  data, model = (int(x) for x in mesh_shape)
  if data == -1:
    if num_devices % model:
      raise ValueError(f"mesh_shape model={model} does not divide {num_devices} devices")
    data = num_devices // model
  if data * model != num_devices:
    raise ValueError(
        f"mesh_shape {data}x{model} needs {data * model} devices, but {num_devices} are"
        " available; set Partitioner.mesh_shape (e.g. --gin.Partitioner.mesh_shape=\"(-1, 1)\")"
    )
  return data, model


@dataclasses.dataclass
class Partitioner:
  """Builds the mesh and turns logical axis names into shardings.

  Attributes:
    mesh_shape: `(data, model)`; `data=-1` uses every device left; None is pure
      data parallelism over all devices.
    logical_axis_rules: mapping from logical names to mesh axes.
    devices: devices to use (default: all, across processes).
  """

  mesh_shape: Sequence[int] | None = None
  logical_axis_rules: LogicalRules = dataclasses.field(default_factory=standard_logical_axis_rules)
  devices: Sequence[jax.Device] | None = None

  def __post_init__(self):
    devices = list(self.devices if self.devices is not None else jax.devices())
    data, model = _resolve_mesh_shape(self.mesh_shape, len(devices))
    self.mesh = Mesh(np.asarray(devices).reshape(data, model), (DATA_AXIS, MODEL_AXIS))

  @property
  def data_parallel_size(self) -> int:
    return self.mesh.shape[DATA_AXIS]

  @property
  def model_parallel_size(self) -> int:
    return self.mesh.shape[MODEL_AXIS]

  # --- shardings -----------------------------------------------------------

  def sharding(self, logical_spec: PartitionSpec | None) -> NamedSharding:
    if logical_spec is None:
      return NamedSharding(self.mesh, PartitionSpec())
    mesh_spec = nn_partitioning.logical_to_mesh_axes(logical_spec, self.logical_axis_rules)
    return NamedSharding(self.mesh, mesh_spec)

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def data_sharding(self, ndim: int = 1) -> NamedSharding:
    """Leading (batch) axis over `data`, the rest replicated (any rank >= 1)."""
    del ndim  # the spec is a prefix, valid for every rank
    return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

  def params_shardings(self, params_axes: PyTree, params: PyTree) -> PyTree:
    """Shardings for `params` from their `params_axes` collection (t5x format).

    A parameter without axis names is replicated; a sharded dimension that the
    mesh axis does not divide is an error naming the parameter.
    """
    logical = unfreeze(nn_partitioning.get_axis_names(params_axes)) if params_axes else {}

    def lookup(path, leaf):
      node = logical
      for key in path:
        name = getattr(key, "key", getattr(key, "name", key))
        node = node.get(name) if isinstance(node, dict) else None
        if node is None:
          return self.replicated
      sharding = self.sharding(node)
      self._check_divisible(jax.tree_util.keystr(path), leaf.shape, sharding)
      return sharding

    return jax.tree_util.tree_map_with_path(lookup, params)

  def _check_divisible(self, name: str, shape, sharding: NamedSharding) -> None:
    for dim, axis in zip(shape, sharding.spec):
      if axis is not None and dim % self.mesh.shape[axis]:
        raise ValueError(
            f"parameter {name} of shape {tuple(shape)}: dimension {dim} is not divisible by"
            f" mesh axis '{axis}' of size {self.mesh.shape[axis]}"
        )

  def state_shardings(self, state_shapes: PyTree, params: PyTree, params_sharding: PyTree):
    """Shardings for any tree that embeds parameter-shaped leaves (e.g. optimizer state).

    A leaf whose path ends with a parameter's path (or with it and one field name,
    as t5x's optimizer states do) and whose shape equals that parameter's shape gets
    the parameter's sharding; everything else (counts, Adafactor's factored
    row/column moments) is replicated.
    """
    by_path = {}
    for (path, leaf), sharding in zip(
        jax.tree_util.tree_flatten_with_path(params)[0],
        jax.tree_util.tree_leaves(params_sharding),
    ):
      by_path[_path_names(path)] = (tuple(leaf.shape), sharding)

    def assign(path, leaf):
      names = _path_names(path)
      # The parameter's path at the end (optax states), or followed by one field name
      # (t5x's optimizer states: `.../kernel/m`, `.../kernel/v`).
      for end in (len(names), len(names) - 1):
        for start in range(end):
          match = by_path.get(names[start:end])
          if match and match[0] == tuple(leaf.shape):
            return match[1]
      return self.replicated

    return jax.tree_util.tree_map_with_path(assign, state_shapes)

  # --- compiled steps ------------------------------------------------------

  def partition(
      self,
      fn: Callable[..., Any],
      in_shardings: Any,
      out_shardings: Any,
      static_argnums: Sequence[int] = (),
      donate_argnums: Sequence[int] = (),
  ) -> Callable[..., Any]:
    """`jax.jit` with explicit shardings, run under this mesh and its axis rules."""
    jitted = jax.jit(
        fn, in_shardings=in_shardings, out_shardings=out_shardings,
        static_argnums=static_argnums, donate_argnums=donate_argnums,
    )

    def run(*args, **kwargs):
      with self.mesh, nn_partitioning.axis_rules(self.logical_axis_rules):
        return jitted(*args, **kwargs)

    def lower(*args, **kwargs):  # for inspection (memory, collectives) by `plan`
      with self.mesh, nn_partitioning.axis_rules(self.logical_axis_rules):
        return jitted.lower(*args, **kwargs)

    run.lower = lower
    return run

  def process_rows(self, global_rows: int) -> Tuple[int, int]:
    """The rows `[start, stop)` of a global batch that this process's devices hold.

    Process `p` of `P` holds rows `[p * B / P, (p + 1) * B / P)` when the model
    axis stays within hosts (the usual layout); if it spans hosts, the hosts
    that share data shards hold the same rows.
    """
    if global_rows % self.data_parallel_size:
      raise ValueError(
          f"batch size {global_rows} is not divisible by the data-parallel mesh"
          f" size {self.data_parallel_size}"
      )
    indices = self.data_sharding().devices_indices_map((global_rows,))
    local = [indices[d][0] for d in self.mesh.local_devices]
    return min(s.start or 0 for s in local), max(
        global_rows if s.stop is None else s.stop for s in local)

  def local_batch_size(self, global_batch_size: int) -> int:
    """Rows this process loads for a global batch."""
    start, stop = self.process_rows(global_batch_size)
    return stop - start

  def shard_batch(self, local_batch: PyTree, global_rows: int | None = None) -> PyTree:
    """Turns each process's rows of a batch into global arrays split over `data`.

    `global_rows` defaults to the local rows times the number of row groups
    (processes holding distinct rows).
    """
    def place(x):
      x = np.asarray(x)
      rows = global_rows or x.shape[0] * self.data_parallel_size // self.local_data_shards
      return jax.make_array_from_process_local_data(
          self.data_sharding(x.ndim), x, (rows,) + x.shape[1:])

    return jax.tree_util.tree_map(place, local_batch)

  @property
  def local_data_shards(self) -> int:
    """Distinct data shards held by this process's devices."""
    mine = set(self.mesh.local_devices)
    return sum(1 for row in self.mesh.devices if any(d in mine for d in row))

  def to_local(self, tree: PyTree) -> PyTree:
    """Host copies of this process's rows of batch-sharded global arrays."""
    def local(x):
      if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
      start, stop = self.process_rows(x.shape[0])
      shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
      seen, parts = set(), []
      for shard in shards:
        begin = shard.index[0].start or 0
        if begin not in seen:
          seen.add(begin)
          parts.append(np.asarray(shard.data))
      out = np.concatenate(parts)
      assert out.shape[0] == stop - start, (out.shape, start, stop)
      return out

    return jax.tree_util.tree_map(local, tree)


def PjitPartitioner(  # pylint: disable=invalid-name (t5x's name, for t5x users' gin files)
    num_partitions: int | None = None,
    model_parallel_submesh: Sequence[int] | None = None,
    logical_axis_rules: LogicalRules | None = None,
    mesh_shape: Sequence[int] | None = None,
    **unsupported,
) -> Partitioner:
  """A `Partitioner` from t5x's `PjitPartitioner` arguments (what t5x users' gins bind).

  `num_partitions` (t5x: model-parallel partitions) and `model_parallel_submesh` (t5x:
  a TPU submesh `(x, y, z, cores)` for one model replica) both set the mesh's `model`
  axis size (the submesh's product); the rest of the devices form `data`.
  `logical_axis_rules` replace the standard ones. Other t5x arguments
  (`params_on_devices`, `backend`, `use_cpu_pjit`) have no meaning here: binding one is
  an error that names it.
  """
  if unsupported:
    raise ValueError(f"PjitPartitioner arguments {sorted(unsupported)} have no rest_jax"
                     " equivalent: remove them (the mesh is set by num_partitions,"
                     " model_parallel_submesh or MESH_SHAPE)")
  if num_partitions and model_parallel_submesh:
    raise ValueError("give num_partitions or model_parallel_submesh, not both (t5x's rule)")
  model = num_partitions or (int(np.prod(model_parallel_submesh))
                             if model_parallel_submesh else None)
  if model and mesh_shape is not None and int(mesh_shape[1]) != model:
    raise ValueError(f"mesh_shape {tuple(mesh_shape)} disagrees with {model} model partitions")
  if model:
    mesh_shape = (-1, model)
  kwargs = {} if logical_axis_rules is None else {"logical_axis_rules": logical_axis_rules}
  return Partitioner(mesh_shape=mesh_shape, **kwargs)


def _path_names(path) -> Tuple[str, ...]:
  names = []
  for key in path:
    name = getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))
    names.append(str(name))
  return tuple(names)
