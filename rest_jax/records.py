"""What decides "this step is finished and unchanged": a record derived from its config.

A `rest` step is reused on a re-run only if its record equals the one it was started
with. The record is not written by hand: `describe` turns the objects that configure
the step (its config dataclasses, the reward's `identity`, the model, the optimizer
and its schedule) into plain JSON data, every field included, so a knob added to a
config is recorded without anyone remembering to. `changes` names the fields that
differ, by their dotted path (`improve.loss.gold_min_weight 0.1 -> 0.9`).
"""

import dataclasses
import functools
import hashlib
import math
import types
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import seqio

from rest_jax.data import identity as identity_lib

# Deep enough for an optax chain inside a schedule inside a config; a cycle stops earlier.
_MAX_DEPTH = 12


def describe(obj: Any) -> Any:
  """`obj` as JSON data that changes whenever a setting inside it changes."""
  return _describe(obj, 0, set())


def _describe(obj: Any, depth: int, seen: set) -> Any:
  if obj is None or isinstance(obj, (bool, int, str)):
    return obj
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else repr(obj)
  if isinstance(obj, (np.generic,)):
    return _describe(obj.item(), depth, seen)
  if depth > _MAX_DEPTH:
    return f"<{type(obj).__qualname__}>"
  if id(obj) in seen:
    return f"<cycle {type(obj).__qualname__}>"
  seen = seen | {id(obj)}
  recurse = functools.partial(_describe, depth=depth + 1, seen=seen)
  identity = getattr(type(obj), "identity", None)
  if isinstance(identity, (property, functools.cached_property)):  # a reward: what its scores depend on
    return {"identity": recurse(obj.identity)}
  if isinstance(obj, seqio.Vocabulary):  # by its model's bytes, not its path
    return identity_lib.vocabulary(obj)
  if isinstance(obj, Mapping):
    return {str(k): recurse(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple, set, frozenset)) and not hasattr(obj, "_fields"):
    items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
    return [recurse(v) for v in items]
  if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # an array: small ones by value
    value = np.asarray(obj)
    if value.size > 64:
      return {"array": str(value.dtype), "shape": list(value.shape),
              "sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:16]}
    return {"array": str(value.dtype), "value": value.tolist()}
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    out = {"type": _name(type(obj))}
    for field in dataclasses.fields(obj):
      if field.name in ("parent", "name") and hasattr(obj, "apply"):  # a flax module's own
        continue
      out[field.name] = recurse(getattr(obj, field.name))
    return out
  if hasattr(obj, "_fields"):  # a named tuple (an optax transformation, a state)
    return {"type": _name(type(obj)), **{f: recurse(getattr(obj, f)) for f in obj._fields}}
  if isinstance(obj, functools.partial):
    return {"partial": recurse(obj.func), "args": recurse(obj.args),
            "keywords": recurse(obj.keywords)}
  if isinstance(obj, (types.FunctionType, types.MethodType)) or callable(obj) and hasattr(
      obj, "__wrapped__"):
    return _describe_function(obj, depth, seen)
  if isinstance(obj, type):
    return _name(obj)
  if isinstance(obj, types.ModuleType):
    return obj.__name__
  # Every setting, private ones too (a model's loss settings and vocabularies are).
  state = {k.lstrip("_"): v for k, v in vars(obj).items() if not k.startswith("__")} if hasattr(
      obj, "__dict__") else {}
  return {"type": _name(type(obj)), **{k: recurse(v) for k, v in sorted(state.items())
                                       if _is_setting(v)}}


def _is_setting(value: Any) -> bool:
  """Whether an attribute of a plain object is a setting (not a compiled or loaded thing)."""
  if value is None or isinstance(value, (bool, int, float, str, np.generic)):
    return True
  if isinstance(value, (list, tuple, Mapping)):
    return len(value) < 64
  return dataclasses.is_dataclass(value) or callable(value) or hasattr(value, "__dict__") and \
      not hasattr(value, "shape")


def _describe_function(fn, depth: int, seen: set) -> Dict[str, Any]:
  """A function by its name and the values it closes over (an optax schedule's rate...)."""
  fn = getattr(fn, "__wrapped__", fn)
  if isinstance(fn, types.MethodType):
    return {"method": _name(fn.__func__), "of": _describe(fn.__self__, depth + 1, seen)}
  if not isinstance(fn, types.FunctionType):
    return _describe(fn, depth + 1, seen)
  out: Dict[str, Any] = {"function": _name(fn)}
  cells = fn.__closure__ or ()
  if cells:
    closed = {}
    for name, cell in zip(fn.__code__.co_freevars, cells):
      try:
        closed[name] = _describe(cell.cell_contents, depth + 1, seen)
      except ValueError:  # an empty cell
        closed[name] = None
    out["closure"] = closed
  if fn.__defaults__:
    out["defaults"] = _describe(list(fn.__defaults__), depth + 1, seen)
  if fn.__kwdefaults__:
    out["kwdefaults"] = _describe(fn.__kwdefaults__, depth + 1, seen)
  return out


def _name(obj) -> str:
  return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def flatten(record: Any, prefix: str = "") -> Dict[str, Any]:
  """{dotted path: leaf} of a described record."""
  if isinstance(record, Mapping):
    out = {}
    for k, v in record.items():
      out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out or {prefix: {}}
  if isinstance(record, list) and any(isinstance(v, (Mapping, list)) for v in record):
    out = {}
    for i, v in enumerate(record):
      out.update(flatten(v, f"{prefix}[{i}]"))
    return out or {prefix: []}
  return {prefix: record}


def changes(recorded: Optional[Any], current: Optional[Any], limit: int = 6) -> List[str]:
  """'path old -> new' for each field that differs ([] when either is unknown)."""
  if recorded is None or current is None:
    return []
  old, new = flatten(recorded), flatten(current)
  out = [f"{k} {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
         for k in sorted(set(old) | set(new)) if old.get(k, _ABSENT) != new.get(k, _ABSENT)]
  if len(out) > limit:
    out = out[:limit] + [f"and {len(out) - limit} more"]
  return out


_ABSENT = object()


def improve_record(config) -> Any:
  """ImproveConfig as a record, less its thresholds: each step records its own tau."""
  described = describe(config)
  described.pop("thresholds", None)
  return described


def rates(learning_rate, steps: int) -> List[float]:
  """A rate or schedule as comparable numbers: its values at the start, middle and end."""
  if learning_rate is None:  # a t5x model's OptimizerDef: its gin rate
    return []
  if not callable(learning_rate):
    return [float(learning_rate)]
  return [float(learning_rate(s)) for s in (0, steps // 2, steps)]
