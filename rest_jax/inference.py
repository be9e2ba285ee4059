"""Sharded sampling and decoding of a policy over a seqio task's sources.

Shared by Grow (N samples per source), evaluation (greedy/beam and best-of-N)
and `infer`. Each sample's randomness comes from its identity:
`fold_in(seed, grow_step, source_id, sample_index)`, never from batch position,
so the same config and seed give the same samples on any mesh or host count.
"""

import copy
import importlib
import itertools
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import jax
import numpy as np
import seqio

from rest_jax import partitioning, trainer as trainer_lib

PyTree = Any


def tokens_to_text(vocabulary: seqio.Vocabulary, tokens: np.ndarray) -> List[str]:
  """Detokenizes `[batch, length]` ids, stopping at EOS."""
  out = []
  for row in np.asarray(tokens).tolist():
    if vocabulary.eos_id in row:
      row = row[: row.index(vocabulary.eos_id)]
    out.append(vocabulary.decode([t for t in row if t > 0]))
  return out


def pad_rows(batch: Mapping[str, np.ndarray], multiple: int) -> Dict[str, np.ndarray]:
  """Appends all-zero (padding) rows up to a multiple of `multiple` rows."""
  rows = next(iter(batch.values())).shape[0]
  target = -(-rows // multiple) * multiple
  if target == rows:
    return dict(batch)
  return {k: np.concatenate([v, np.zeros((target - rows,) + v.shape[1:], v.dtype)])
          for k, v in batch.items()}


def per_sample_rngs(model) -> bool:
  """Whether the model takes one PRNG key per sample (`[B, N, 2]`), as rest_jax's does.

  A t5x model takes one key per batch: its samples then depend on how sources are
  batched, so Grow's rows are reproducible for a fixed batch size and mesh only.
  """
  return bool(getattr(model, "PER_SAMPLE_RNGS", False))


def native_decode_fn(model, decode_fn):
  """`decode_fn` (rest_jax.decoding's) or, for another library's model, its own namesake.

  A t5x model calls its decode function with t5x's signature, so it gets
  `t5x.decoding.temperature_sample` / `beam_search`; that module is imported only
  here, when the configured model already comes from that library.
  """
  if per_sample_rngs(model) or decode_fn is None:
    return decode_fn
  package = type(model).__module__.rpartition(".")[0]  # "t5x" for t5x.models
  decoding_module = importlib.import_module(f"{package}.decoding" if package else "decoding")
  return getattr(decoding_module, decode_fn.__name__)


def with_decode_fn(model, decode_fn):
  """A shallow copy of a t5x-API model that decodes with `decode_fn` (see `native_decode_fn`)."""
  decode_fn = native_decode_fn(model, decode_fn)
  if getattr(model, "_decode_fn", None) is decode_fn:
    return model
  clone = copy.copy(model)
  clone._decode_fn = decode_fn  # pylint: disable=protected-access (t5x models keep it here too)
  return clone


def sample_keys(seed: int, grow_step: int, source_ids: np.ndarray, num_samples: int) -> np.ndarray:
  """Raw PRNG keys `[batch, num_samples, 2]` from (seed, grow step, source id, sample index)."""
  base = jax.random.fold_in(jax.random.PRNGKey(seed), grow_step)

  def per_source(source_id):
    key = jax.random.fold_in(base, source_id)
    return jax.vmap(lambda n: jax.random.fold_in(key, n))(np.arange(num_samples))

  return np.asarray(jax.vmap(per_source)(np.asarray(source_ids, np.uint32)))


class PolicyDecoder:
  """`predict_batch_with_aux` compiled once for a batch shape, mesh and decode settings.

  Args:
    model: a t5x-API model; `decode_fn` overrides the model's (e.g. sampling).
    partitioner: the mesh.
    params_sharding: the parameters' shardings.
    num_decodes: samples (or beams) per input.
    decoder_params: keyword arguments of the decode function.
  """

  def __init__(self, model, partitioner: partitioning.Partitioner, params_sharding: PyTree,
               num_decodes: int = 1, decoder_params: Optional[Mapping[str, Any]] = None,
               decode_fn=None):
    self.model = with_decode_fn(model, decode_fn) if decode_fn is not None else model
    self.partitioner = partitioner
    self.num_decodes = num_decodes
    self._rows = None  # the first call's (padded) local row count; later calls pad to it
    self._global_rows = None  # the same for `decode_global`
    params = dict(decoder_params or {})

    def predict(p, batch, rng):
      return self.model.predict_batch_with_aux(
          p, batch, rng=rng, decoder_params=params, num_decodes=num_decodes,
          return_all_decodes=True)

    data = partitioner.data_sharding()
    self._per_sample = per_sample_rngs(self.model)
    self._predict = partitioner.partition(
        predict, in_shardings=(params_sharding, {"encoder_input_tokens": data,
                                                 "decoder_input_tokens": data},
                               data if self._per_sample else partitioner.replicated),
        out_shardings=data)
    self._first_key = partitioner.partition(lambda k: k[0, 0], in_shardings=(data,),
                                            out_shardings=partitioner.replicated)

  def __call__(self, params, encoder_tokens: np.ndarray, decode_length: int,
               keys: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """Decodes this process's `[rows, Le]` inputs; returns this process's decodes.

    On several hosts every process calls this together (the decode is one
    program on the global mesh), each with its own rows.

    Args:
      params: the policy's parameters.
      encoder_tokens: inputs; rows are padded (to the mesh and to the first
        call's row count, so nothing recompiles) and the padding trimmed again.
      decode_length: length of the decodes.
      keys: `[rows, num_decodes, 2]` raw PRNG keys (sampling only).

    Returns:
      `tokens [rows, num_decodes, length]` sorted by increasing score, `scores`.
    """
    rows = len(encoder_tokens)
    out = self.partitioner.to_local(self._decode(params, encoder_tokens, decode_length, keys))
    return {"tokens": out["tokens"][:rows], "scores": out["scores"][:rows]}

  def decode_global(self, params, encoder_tokens: np.ndarray, decode_length: int,
                    keys: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """Every process passes the same rows and gets every row's decodes.

    Each process decodes only its share of the rows (`Partitioner.process_rows`).
    """
    rows = len(encoder_tokens)
    if keys is None:
      keys = np.zeros((rows, self.num_decodes, 2), np.uint32)
    if self._global_rows is None:
      self._global_rows = -(-rows // self.partitioner.data_parallel_size) * \
          self.partitioner.data_parallel_size
    padded = pad_rows({"tokens": encoder_tokens, "keys": np.asarray(keys, np.uint32)},
                      self._global_rows)
    start, stop = self.partitioner.process_rows(self._global_rows)
    out = self._decode(params, padded["tokens"][start:stop], decode_length,
                       padded["keys"][start:stop])
    out = trainer_lib.to_host(out)
    return {"tokens": out["tokens"][:rows], "scores": out["scores"][:rows]}

  def lower(self, params_shapes, rows: int, feature_lengths: Mapping[str, int]):
    """The decode step lowered for `rows` global rows (abstract), for `plan`."""
    data = self.partitioner.data_sharding()
    batch = {"encoder_input_tokens": jax.ShapeDtypeStruct((rows, feature_lengths["inputs"]),
                                                          np.int32, sharding=data),
             "decoder_input_tokens": jax.ShapeDtypeStruct((rows, feature_lengths["targets"]),
                                                          np.int32, sharding=data)}
    keys = jax.ShapeDtypeStruct((rows, self.num_decodes, 2), np.uint32, sharding=data)
    if not self._per_sample:
      keys = jax.ShapeDtypeStruct((2,), np.uint32, sharding=self.partitioner.replicated)
    return self._predict.lower(params_shapes, batch, keys)

  def _decode(self, params, encoder_tokens, decode_length, keys):
    """Global arrays of the decodes of this process's rows (padded)."""
    rows = len(encoder_tokens)
    if keys is None:
      keys = np.zeros((rows, self.num_decodes, 2), np.uint32)
    batch = {"encoder_input_tokens": encoder_tokens.astype(np.int32),
             "decoder_input_tokens": np.zeros((rows, decode_length), np.int32),
             "keys": np.asarray(keys, np.uint32)}
    if self._rows is None:
      self._rows = pad_rows(batch, self.partitioner.local_data_shards)["keys"].shape[0]
    if rows > self._rows:
      raise ValueError(f"{rows} rows, more than the first call's {self._rows}")
    batch = self.partitioner.shard_batch(pad_rows(batch, self._rows))
    keys = batch.pop("keys")
    if not self._per_sample:  # one key for the batch: the first row's first sample key
      keys = self._first_key(keys)
    decodes, aux = self._predict(params, batch, keys)
    return {"tokens": decodes, "scores": aux["scores"]}


OVERLENGTH_POLICIES = ("truncate", "error")


def fit_length(ids, length: int, eos_id: int, what: str, overlength: str = "truncate"):
  """`ids` cut to `length` tokens, still ending in EOS; (ids, whether it was cut).

  `overlength="error"` raises instead, naming `what` (task, split, example).
  """
  ids = list(ids)
  if len(ids) <= length:
    return ids, False
  if overlength == "error":
    raise ValueError(f"{what} has {len(ids)} tokens, more than the feature length {length}"
                     " (raise TASK_FEATURE_LENGTHS, or set overlength='truncate' to cut and"
                     " count such examples)")
  if overlength != "truncate":
    raise ValueError(f"overlength={overlength!r}: expected one of {OVERLENGTH_POLICIES}")
  cut = ids[:length]
  if ids[-1] == eos_id:
    cut[-1] = eos_id
  return cut, True


def source_batches(task_name: str, split: str, feature_lengths: Mapping[str, int],
                   batch_size: int, start: int = 0, count: Optional[int] = None,
                   overlength: str = "truncate") -> Iterator[Dict[str, Any]]:
  """Batches of a task's examples in split order, with their global `source_id`.

  The last batch is padded with empty rows (`valid` False) to `batch_size`. An
  input or target longer than its feature length is cut (keeping EOS) and counted
  in the batch's `overlength`, or is an error naming the example (`overlength`).
  """
  task = seqio.get_mixture_or_task(task_name)
  eos = task.output_features["targets"].vocabulary.eos_id
  # Full-length examples (no sequence length): the cut is made, and counted, here.
  ds = task.get_dataset(None, split=split, shuffle=False, try_in_mem_cache=False)
  examples = itertools.islice(ds.as_numpy_iterator(), start,
                              None if count is None else start + count)
  source_id = start
  length = feature_lengths["inputs"]
  while True:
    chunk = list(itertools.islice(examples, batch_size))
    if not chunk:
      return
    tokens = np.zeros((batch_size, length), np.int32)
    targets, overlong = [], 0
    for i, ex in enumerate(chunk):
      what = f"{task_name}/{split} example {source_id + i}"
      ids, cut_inputs = fit_length(ex["inputs"], length, eos, f"{what} (inputs)", overlength)
      tokens[i, : len(ids)] = ids
      target, cut_target = fit_length(ex["targets"], feature_lengths["targets"], eos,
                                      f"{what} (targets)", overlength)
      targets.append(np.asarray(target, np.int32))
      overlong += int(cut_inputs or cut_target)
    yield {
        "encoder_input_tokens": tokens,
        "source_id": np.arange(source_id, source_id + batch_size),
        "valid": np.arange(batch_size) < len(chunk),
        "inputs": [ex["inputs_pretokenized"].decode("utf-8") for ex in chunk],
        "targets": [ex["targets_pretokenized"].decode("utf-8") for ex in chunk],
        "target_tokens": targets,
        "overlength": overlong,
    }
    source_id += len(chunk)


def decode_texts(vocabulary: seqio.Vocabulary, tokens: np.ndarray) -> List[List[str]]:
  """`[rows, n, length]` ids -> per row, its n texts."""
  rows, n, length = tokens.shape
  flat = tokens_to_text(vocabulary, tokens.reshape(rows * n, length))
  return [flat[i * n:(i + 1) * n] for i in range(rows)]


def count_examples(task_name: str, split: str, limit: Optional[int] = None) -> int:
  """Examples of a split after the task's preprocessors (some drop examples)."""
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(None, split=split, shuffle=False, try_in_mem_cache=False)
  return sum(1 for _ in itertools.islice(ds.as_numpy_iterator(), limit))


def repeat_for(values: Sequence[Any], n: int) -> List[Any]:
  return [v for v in values for _ in range(n)]


