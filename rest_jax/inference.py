"""Sharded sampling and decoding of a policy over a seqio task's sources.

Shared by Grow (N samples per source), evaluation (greedy/beam and best-of-N)
and `infer`. Each sample's randomness comes from its identity:
`fold_in(seed, grow_step, source_id, sample_index)`, never from batch position,
so the same config and seed give the same samples on any mesh or host count.
"""

import copy
import inspect
import itertools
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from rest_jax import partitioning, sampling as sampling_lib, trainer as trainer_lib

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


def with_decode_fn(model, decode_fn):
  """A shallow copy of a t5x-API model that decodes with `decode_fn`."""
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


def through_first_eos(tokens: jax.Array, eos_id: int) -> jax.Array:
  """Mask of the positions of `[..., length]` decodes up to and including the first EOS."""
  is_eos = tokens == eos_id
  return (jnp.cumsum(is_eos, axis=-1) - is_eos) == 0


def teacher_forced_log_probs(model, params, encoder_tokens: jax.Array, targets: jax.Array,
                             sampling: sampling_lib.SamplingConfig, eos_id: int):
  """Per-token log-probabilities of `targets` `[rows, length]` by one teacher-forced pass.

  Returns `(behaviour, policy)`, each `[rows, length]`: under the distribution
  `sampling` draws from and under the model at temperature 1; 0 after the first EOS.
  This is how the per-token values of a decode function that returns only
  sequence sums (t5x's) are obtained, and how references are scored.
  """
  inputs = jnp.concatenate([jnp.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  mask = through_first_eos(targets, eos_id)
  # The network masks attention by `decoder_target_tokens > 0`; a sampler attends to
  # every position it filled, so a sampled padding id (0) must not read as padding.
  batch = {"encoder_input_tokens": encoder_tokens, "decoder_input_tokens": inputs,
           "decoder_target_tokens": jnp.where(mask, jnp.maximum(targets, 1), 0),
           "decoder_loss_weights": mask.astype(jnp.int32)}
  logits = model._compute_logits(params, batch).astype(jnp.float32)  # pylint: disable=protected-access

  def picked(log_probs):
    values = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return jnp.where(mask, values, 0.0)

  policy = picked(jax.nn.log_softmax(logits, axis=-1))
  behaviour = policy if sampling.is_policy else picked(sampling.log_probs(logits))
  return behaviour, policy


def computes_in_float32(model) -> bool:
  """Whether the model's network computes in float32 (its config's `dtype`; t5x's too)."""
  config = getattr(getattr(model, "module", None), "config", None)
  return jnp.dtype(getattr(config, "dtype", jnp.float32)) == jnp.float32


class PolicyDecoder:
  """`predict_batch_with_aux` compiled once for a batch shape, mesh and decode settings.

  Decodes with the library the model decodes with: its beam search (`sampling`
  None; `num_decodes` beams, 1 = greedy) or its temperature sampler with the
  sampling configuration (`sampling`; `num_decodes` samples), see
  `rest_jax.sampling`.

  Args:
    model: a t5x-API model.
    partitioner: the mesh.
    params_sharding: the parameters' shardings.
    num_decodes: samples (or beams) per input.
    sampling: how to sample; None decodes with beam search.
    token_log_probs: also return each sampled token's log-probability under the
      distribution sampled from (`behaviour_log_probs`) and under the policy at
      temperature 1 (`policy_log_probs`), `[rows, num_decodes, length]`: from the
      sampler itself when it can give them (rest_jax's, in float32), else by one
      teacher-forced pass over the samples (t5x's sampler; any bfloat16 model).
  """

  def __init__(self, model, partitioner: partitioning.Partitioner, params_sharding: PyTree,
               num_decodes: int = 1, sampling: Optional[sampling_lib.SamplingConfig] = None,
               token_log_probs: bool = False):
    decode_fn = (sampling_lib.beam_search_of(model) if sampling is None
                 else sampling_lib.sampler_of(model))
    self.model = with_decode_fn(model, decode_fn)
    self.decode_fn = decode_fn
    self.partitioner = partitioner
    self.num_decodes = num_decodes
    self.sampling = sampling
    self._rows = None  # the first call's (padded) local row count; later calls pad to it
    self._global_rows = None  # the same for `decode_global`
    params = {} if sampling is None else sampling.decoder_params(decode_fn)
    # The sampler's own per-token values only where they are the training pass's numbers:
    # in bfloat16 the cached decode and the teacher-forced pass round differently (a few
    # hundredths of a nat per sequence of a tiny model), and an importance ratio at the
    # behaviour policy would not be 1. Otherwise (and for t5x's sampler, which returns sums
    # only) one teacher-forced pass, the computation Improve trains with, gives them.
    native = (token_log_probs and computes_in_float32(model) and "return_token_log_probs"
              in inspect.signature(decode_fn).parameters)
    if native:
      params["return_token_log_probs"] = True
    eos_id = model.output_vocabulary.eos_id

    def predict(p, batch, rng):
      # A fresh dict per call: t5x's model adds `decode_rng` and `eos_id` to it.
      decodes, aux = self.model.predict_batch_with_aux(
          p, batch, rng=rng, decoder_params=dict(params), num_decodes=num_decodes,
          return_all_decodes=True)
      out = {"tokens": decodes, "scores": aux["scores"]}
      if token_log_probs and native:
        out["behaviour_log_probs"] = aux["token_log_probs"]
        out["policy_log_probs"] = aux["policy_token_log_probs"]
      elif token_log_probs:
        rows, n, length = decodes.shape
        encoder = jnp.repeat(batch["encoder_input_tokens"], n, axis=0)
        behaviour, policy = teacher_forced_log_probs(
            self.model, p, encoder, decodes.reshape(rows * n, length), sampling, eos_id)
        out["behaviour_log_probs"] = behaviour.reshape(rows, n, length)
        out["policy_log_probs"] = policy.reshape(rows, n, length)
      return out

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
      `tokens [rows, num_decodes, length]` sorted by increasing score, `scores`,
      and with `token_log_probs` the per-token log-probabilities.
    """
    rows = len(encoder_tokens)
    out = self.partitioner.to_local(self._decode(params, encoder_tokens, decode_length, keys))
    return {k: v[:rows] for k, v in out.items()}

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
    return {k: v[:rows] for k, v in out.items()}

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
    return self._predict(params, batch, keys)


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


