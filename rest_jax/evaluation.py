"""Evaluation of a policy: teacher-forced loss/accuracy and BLEU/chrF of its decodes."""

from typing import Any, Dict, Iterable, List, Mapping, Tuple

import jax
import numpy as np
import seqio

from rest_jax import partitioning, trainer as trainer_lib
from rest_jax.data import metrics as metrics_lib

PyTree = Any


class Predictor:
  """A compiled, sharded `predict_batch_with_aux` for fixed decode settings."""

  def __init__(self, model, partitioner: partitioning.Partitioner, params_sharding: PyTree,
               num_decodes: int = 1, decoder_params: Mapping[str, Any] | None = None,
               return_all_decodes: bool = False):
    self.model = model
    self.partitioner = partitioner
    self.num_decodes = num_decodes
    self._full_rows = None

    def predict(params, batch, rng):
      return model.predict_batch_with_aux(
          params, batch, rng=rng, decoder_params=dict(decoder_params or {}),
          num_decodes=num_decodes, return_all_decodes=return_all_decodes,
      )

    self._predict = partitioner.partition(
        predict,
        in_shardings=(params_sharding,
                      {k: partitioner.data_sharding(2) for k in
                       ("encoder_input_tokens", "decoder_input_tokens")},
                      partitioner.replicated),
        out_shardings=partitioner.data_sharding(),
    )

  def __call__(self, params, batch: Mapping[str, np.ndarray], rng=None) -> Tuple[np.ndarray, dict]:
    """Decodes a host batch; rows are padded to the mesh and trimmed again."""
    rows = batch["encoder_input_tokens"].shape[0]
    if self._full_rows is None:  # later (shorter) batches are padded to this: no recompiles
      self._full_rows = _pad_rows(batch, self.partitioner.data_parallel_size)[
          "encoder_input_tokens"].shape[0]
    padded = _pad_rows({k: batch[k] for k in ("encoder_input_tokens", "decoder_input_tokens")},
                       self._full_rows)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    decodes, aux = self._predict(params, self.partitioner.shard_batch(padded), rng)
    decodes, aux = trainer_lib.to_host((decodes, aux))
    return decodes[:rows], {k: v[:rows] for k, v in aux.items()}


def _pad_rows(batch: Mapping[str, np.ndarray], multiple: int) -> Dict[str, np.ndarray]:
  """Appends all-zero (padding) rows up to a multiple of `multiple` rows."""
  rows = next(iter(batch.values())).shape[0]
  target = -(-rows // multiple) * multiple
  if target == rows:
    return dict(batch)
  return {k: np.concatenate([v, np.zeros((target - rows,) + v.shape[1:], v.dtype)])
          for k, v in batch.items()}


def tokens_to_text(vocabulary: seqio.Vocabulary, tokens: np.ndarray) -> List[str]:
  """Detokenizes `[batch, length]` ids, stopping at EOS."""
  out = []
  for row in np.asarray(tokens).tolist():
    if vocabulary.eos_id in row:
      row = row[: row.index(vocabulary.eos_id)]
    out.append(vocabulary.decode([t for t in row if t > 0]))
  return out


def evaluate(
    trainer: trainer_lib.Trainer,
    params: PyTree,
    batches: Iterable[Mapping[str, np.ndarray]],
    predictor: Predictor | None = None,
) -> Dict[str, float]:
  """Loss and accuracy on `batches`; with a predictor, also BLEU and chrF of its decodes.

  Returns:
    {"loss", "accuracy", ...} and, when decoding, {"bleu", "chrf"} (0-100).
  """
  vocabulary = trainer.model.output_vocabulary
  accumulator = trainer_lib.MetricsAccumulator()
  references, hypotheses = [], []
  full_rows = None
  for batch in batches:
    # A short last batch is padded with empty rows (weight 0) to the shape of the
    # others, so nothing is recompiled and no example is dropped.
    full_rows = full_rows or batch["decoder_target_tokens"].shape[0]
    padded = _pad_rows(batch, full_rows)
    accumulator.add(trainer.eval_step(params, trainer.partitioner.shard_batch(padded)))
    if predictor is not None:
      decodes, _ = predictor(params, batch)
      hypotheses += tokens_to_text(vocabulary, decodes)
      references += tokens_to_text(vocabulary, batch["decoder_target_tokens"])
  results = accumulator.compute() if accumulator else {}
  if predictor is not None and references:
    results.update(metrics_lib.bleu(references, hypotheses))
    results.update(metrics_lib.chrf(references, hypotheses))
    results["examples"] = list(zip(references[:3], hypotheses[:3]))
  return results
