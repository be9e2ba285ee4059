"""Evaluation of a policy: teacher-forced loss/accuracy and BLEU/chrF of its decodes."""

from typing import Any, Dict, Iterable, Mapping

import numpy as np

from rest_jax import inference, trainer as trainer_lib
from rest_jax.data import metrics as metrics_lib

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
      hypotheses += inference.tokens_to_text(vocabulary, decodes)
      references += inference.tokens_to_text(vocabulary, batch["decoder_target_tokens"])
  results = accumulator.compute() if accumulator else {}
  if decoder is not None and references:
    results.update(metrics_lib.bleu(references, hypotheses))
    results.update(metrics_lib.chrf(references, hypotheses))
    results["examples"] = list(zip(references[:3], hypotheses[:3]))
  return results
