"""`plan`: what a configuration costs on a mesh, before paying for the slice.

    python -m rest_jax.main plan --gin_file=configs/wmt_en_de.gin --mesh=4x2

For the configured model, optimizer, batch and sampler it prints each parameter's
sharding, the bytes per device of parameters, optimizer state, the sampler's KV
cache and the compiled steps' temporaries (activations), and the collectives XLA
put in the compiled train and sample steps. Nothing is allocated: shapes come from
`jax.eval_shape`, the steps are lowered and compiled on abstract arrays. On a
machine with fewer devices than the mesh, the CLI simulates them on the CPU; the
SPMD partitioning (hence the shardings and collectives) is the one a TPU or GPU
gets, though the backend's own fusion and scheduling may differ.
"""

import collections
import dataclasses
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, TextIO

from flax.core import unfreeze
from flax.linen import partitioning as nn_partitioning
import jax
import jax.numpy as jnp
import numpy as np

from rest_jax import inference, partitioning, sampling as sampling_lib, trainer as trainer_lib

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128)\[([\d,]*)\]")
_BYTES = {"pred": 1, "bf16": 2, "c64": 8, "c128": 16}


def _itemsize(dtype: str) -> int:
  return _BYTES.get(dtype) or max(int(dtype[1:]) // 8, 1)


def device_bytes(shape, dtype, sharding) -> int:
  """Bytes one device holds of an array with this sharding."""
  return int(np.prod(sharding.shard_shape(tuple(shape)), dtype=np.int64)) * np.dtype(dtype).itemsize


def tree_device_bytes(shapes: Any, shardings: Any) -> int:
  return sum(device_bytes(x.shape, x.dtype, s)
             for x, s in zip(jax.tree_util.tree_leaves(shapes), jax.tree_util.tree_leaves(shardings)))


def collectives(hlo_text: str) -> Dict[str, Dict[str, int]]:
  """Collective ops of a compiled HLO module: count and bytes of their results, by kind."""
  out: Dict[str, Dict[str, int]] = collections.OrderedDict()
  for line in hlo_text.splitlines():
    if "=" not in line:
      continue
    lhs, rhs = line.split("=", 1)
    for kind in COLLECTIVES:
      match = re.search(rf"\s{kind}(-start)?\(", rhs)
      if match:
        result = rhs[: match.start()]
        size = sum(_itemsize(t) * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
                   for t, dims in _SHAPE.findall(result))
        entry = out.setdefault(kind, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += size
        break
  return out


@dataclasses.dataclass
class Plan:
  mesh: Dict[str, int]
  params: List[Dict[str, Any]]
  bytes_per_device: Dict[str, int]
  collectives: Dict[str, Dict[str, Dict[str, int]]]
  notes: List[str]


def _kv_cache_bytes(model, params_shapes, partitioner, rows: int, lengths, num_decodes: int,
                    notes: List[str]) -> int:
  """The sampler's caches per device: self-attention cache and encoder keys/values."""
  module = getattr(model, "module", None)
  if module is None or not hasattr(module, "init_cache"):
    notes.append("KV cache: the model has no init_cache (a t5x model); not estimated")
    return 0
  chunk = min(getattr(model, "_decode_cache_chunk", lengths["targets"]), lengths["targets"])
  cache = jax.eval_shape(lambda p: module.apply({"params": p}, rows * num_decodes,
                                                lengths["targets"], chunk,
                                                method=module.init_cache), params_shapes)

  def cross(p):
    tokens = jnp.zeros((rows, lengths["inputs"]), jnp.int32)
    encoded = module.apply({"params": p}, tokens, enable_dropout=False, method=module.encode)
    return module.apply({"params": p}, encoded, method=module.cross_attention_kv)

  cross_kv = jax.eval_shape(cross, params_shapes)
  heads = getattr(getattr(module, "config", None), "num_heads", None)
  data, model_par = partitioner.data_parallel_size, partitioner.model_parallel_size
  total = 0
  for leaf in jax.tree_util.tree_leaves((cache, cross_kv)):
    size = int(np.prod(leaf.shape)) * leaf.dtype.itemsize
    split = data if any(d in (rows, rows * num_decodes) for d in leaf.shape) else 1
    if heads and heads in leaf.shape and heads % model_par == 0:
      split *= model_par
    total += size // split
  notes.append("KV cache: batch rows split over 'data' and heads over 'model', as the"
               " attention layers shard them")
  return total


def make_plan(*, model, feature_lengths: Mapping[str, int], batch_size: int,
              partitioner: Optional[partitioning.Partitioner] = None,
              decode_batch_size: int = 32, num_decodes: int = 4,
              sampling: Optional[sampling_lib.SamplingConfig] = None,
              compile_steps: bool = True) -> Plan:
  """Shardings, bytes per device and collectives of a configuration on a mesh.

  Args:
    model: the policy (t5x API).
    feature_lengths: `{"inputs": Le, "targets": L}`.
    batch_size: global train batch size.
    partitioner: the mesh.
    decode_batch_size: sources per sampling batch (Grow's `grow_batch_size`).
    num_decodes: samples per source (N).
    sampling: Grow's sampling configuration (default: the paper's).
    compile_steps: compile the train and sample steps (temporaries, collectives).
  """
  partitioner = partitioner or partitioning.Partitioner()
  lengths = dict(feature_lengths)
  trainer = trainer_lib.Trainer(model, partitioner,
                                trainer_lib.batch_input_shapes(batch_size, lengths))
  params_shapes = trainer.abstract_state.params
  logical = unfreeze(nn_partitioning.get_axis_names(trainer.params_axes)) \
      if trainer.params_axes else {}
  rows = []
  for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(params_shapes)[0],
                                    jax.tree_util.tree_leaves(trainer.params_sharding)):
    node = logical
    for key in path:
      node = node.get(getattr(key, "key", key)) if isinstance(node, dict) else None
    rows.append({
        "name": "/".join(str(getattr(k, "key", k)) for k in path),
        "shape": tuple(leaf.shape), "dtype": str(leaf.dtype),
        "logical": tuple(node) if node is not None else None,
        "mesh": tuple(sharding.spec),
        "bytes_per_device": device_bytes(leaf.shape, leaf.dtype, sharding),
    })
  notes: List[str] = []
  opt = trainer.abstract_state.opt_state
  per_device = {
      "params": sum(r["bytes_per_device"] for r in rows),
      "optimizer_state": tree_device_bytes(opt, trainer.state_sharding.opt_state),
      "kv_cache": _kv_cache_bytes(model, params_shapes, partitioner, decode_batch_size, lengths,
                                  num_decodes, notes),
  }
  found: Dict[str, Dict[str, Dict[str, int]]] = {}
  if compile_steps:
    data = partitioner.data_sharding()
    batch = {k: jax.ShapeDtypeStruct(v, jnp.int32, sharding=data)
             for k, v in trainer_lib.batch_input_shapes(batch_size, lengths).items()}
    batch["decoder_loss_weights"] = batch["decoder_target_tokens"]
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=partitioner.replicated)
    train = trainer.lower_train_step(batch, rng).compile()
    sampler = inference.PolicyDecoder(model, partitioner, trainer.params_sharding, num_decodes,
                                      sampling or sampling_lib.SamplingConfig(),
                                      token_log_probs=True)
    sample = sampler.lower(params_shapes, decode_batch_size, lengths).compile()
    for name, compiled in (("train_step", train), ("sample_step", sample)):
      memory = compiled.memory_analysis()
      if memory is not None:
        per_device[f"{name}_temporaries"] = int(memory.temp_size_in_bytes)
      found[name] = collectives(compiled.as_text())
    platform = partitioner.mesh.devices.flat[0].platform
    notes.append("temporaries: XLA's scratch for the compiled step on one device (activations"
                 f" kept for the backward pass, logits, decode loop state), as the {platform}"
                 " compiler schedules it; another backend assigns its own buffers, so on a"
                 " simulated mesh take it as an estimate")
  return Plan(mesh=dict(partitioner.mesh.shape), params=rows, bytes_per_device=per_device,
              collectives=found, notes=notes)


def _human(n: int) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if abs(n) < 1024 or unit == "GiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
    n /= 1024
  return str(n)


def format_plan(plan: Plan) -> str:
  lines = [f"mesh: {' x '.join(f'{k}={v}' for k, v in plan.mesh.items())}", "",
           "parameter | shape | logical axes | mesh axes | bytes/device",
           "---|---|---|---|---"]
  for r in plan.params:
    logical = ",".join(str(a) for a in r["logical"]) if r["logical"] else "-"
    mesh = ",".join(str(a) for a in r["mesh"]) if r["mesh"] else "replicated"
    lines.append(f"{r['name']} | {r['shape']} | {logical} | {mesh} | {r['bytes_per_device']}")
  lines += ["", "per device:"]
  total = 0
  for key, value in plan.bytes_per_device.items():
    lines.append(f"  {key:28s} {value:>14,d} B  ({_human(value)})")
    total += value
  lines.append(f"  {'total':28s} {total:>14,d} B  ({_human(total)})")
  for step, found in plan.collectives.items():
    lines.append(f"collectives in {step}:")
    if not found:
      lines.append("  none")
    for kind, entry in found.items():
      lines.append(f"  {kind:20s} {entry['count']:4d} ops  {entry['bytes']:>14,d} B"
                   f" ({_human(entry['bytes'])})")
  lines += [f"note: {n}" for n in plan.notes]
  return "\n".join(lines)


def plan(*, output: Optional[TextIO] = None, **kwargs) -> Plan:
  """The `plan` command: `make_plan` printed (gin binds its arguments)."""
  result = make_plan(**kwargs)
  print(format_plan(result), file=output or sys.stdout)
  return result
