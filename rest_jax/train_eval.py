"""`train`'s periodic evaluation of the model it trains: teacher-forced loss and token
accuracy, and corpus BLEU/chrF of its greedy or beam decodes (a `rest` run's policies are
evaluated by `policy_eval.py` instead).
"""

from typing import Any, Dict, Iterable, Mapping

import jax
from jax.experimental import multihost_utils
import numpy as np

from rest_jax import inference, trainer as trainer_lib
from rest_jax.data import corpus_metrics as metrics_lib

PyTree = Any


def evaluate(
    trainer: trainer_lib.Trainer,
    params: PyTree,
    batches: Iterable[Mapping[str, np.ndarray]],
    decoder: "inference.PolicyDecoder | None" = None,
) -> Dict[str, float]:
  """Loss and accuracy on `batches`; with a decoder, also BLEU and chrF of its best decodes.

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
    padded = inference.pad_rows(batch, full_rows)
    accumulator.add(trainer.eval_step(params, trainer.partitioner.shard_batch(padded)))
    if decoder is not None:
      decodes = decoder(params, batch["encoder_input_tokens"],
                        batch["decoder_target_tokens"].shape[1])["tokens"][:, -1]
      # Each process decoded its rows of the batch; the corpus metrics need all.
      decodes, targets = _all_rows(decodes), _all_rows(batch["decoder_target_tokens"])
      real = targets.any(axis=1)  # a short last batch is padded with empty rows
      decodes, targets = decodes[real], targets[real]
      hypotheses += inference.tokens_to_text(vocabulary, decodes)
      references += inference.tokens_to_text(vocabulary, targets)
  results = accumulator.compute() if accumulator else {}
  if decoder is not None and references:
    results.update(metrics_lib.bleu(references, hypotheses))
    results.update(metrics_lib.chrf(references, hypotheses))
    results["examples"] = list(zip(references[:3], hypotheses[:3]))
  return results


def _all_rows(x: np.ndarray) -> np.ndarray:
  """Every process's rows, in process order (the batch's row order)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))
