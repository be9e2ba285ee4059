"""Single steps of ReST as commands: `grow`, `improve`, `eval` and `infer`.

Each takes a policy checkpoint directory (a `bc/` or `improve_G_I/` folder of a
`rest` run, or any `train` MODEL_DIR) and the model from gin, and does one job;
`rest` chains them. Configured by `gin/runs/steps.gin`.
"""

import json
import os
from typing import Any, Dict, Mapping, Optional

import jax
import numpy as np

from rest_jax import checkpoints, decoding, grow as grow_lib, improve as improve_lib
from rest_jax import inference, losses, partitioning, policy_eval, trainer as trainer_lib
from rest_jax.rewards import Reward


def _policy(model, policy_dir: str, feature_lengths, partitioner, batch_size: int = 64):
  trainer = trainer_lib.Trainer(model, partitioner,
                                trainer_lib.batch_input_shapes(batch_size, feature_lengths))
  ckpt = checkpoints.Checkpointer(policy_dir)
  params = ckpt.restore(trainer.abstract_state).params
  ckpt.close()
  return trainer, params


def grow_command(*, model, policy_dir: str, output_dir: str, task_name: str,
                 feature_lengths: Mapping[str, int], reward: Reward, split: str = "train",
                 num_samples: int = 4, decoder_params: Optional[Mapping[str, Any]] = None,
                 max_sources: Optional[int] = None, grow_step: int = 1, seed: int = 0,
                 batch_size: int = 32, shard_size: int = 1024,
                 partitioner: Optional[partitioning.Partitioner] = None) -> Dict[str, Any]:
  """One Grow step from a policy checkpoint (resumable: finished shards are kept)."""
  partitioner = partitioner or partitioning.Partitioner()
  trainer, params = _policy(model, policy_dir, feature_lengths, partitioner)
  return grow_lib.grow(
      model=model, params=params, partitioner=partitioner,
      params_sharding=trainer.params_sharding, task_name=task_name, split=split,
      feature_lengths=feature_lengths, output_dir=output_dir, reward=reward,
      num_samples=num_samples, decoder_params=decoder_params, max_sources=max_sources,
      batch_size=batch_size, shard_size=shard_size, seed=seed, grow_step=grow_step,
      metadata={"policy": os.path.abspath(policy_dir)})


def improve_command(*, model, policy_dir: str, grown_dir: str, threshold: float,
                    output_dir: str, feature_lengths: Mapping[str, int],
                    loss: Optional[losses.OfflineRLLoss] = None, train_steps: int = 300,
                    batch_size: int = 64, seed: int = 0,
                    partitioner: Optional[partitioning.Partitioner] = None) -> Dict[str, Any]:
  """One Improve step from a policy checkpoint on a grown dataset (resumable)."""
  partitioner = partitioner or partitioning.Partitioner()
  _, params = _policy(model, policy_dir, feature_lengths, partitioner, batch_size)
  result = improve_lib.improve(
      model=model, init_params=params, partitioner=partitioner, grown_dir=grown_dir,
      threshold=threshold, model_dir=output_dir, feature_lengths=feature_lengths, loss=loss,
      train_steps=train_steps, batch_size=batch_size, seed=seed)
  return result["metrics"]


def eval_command(*, model, policy_dir: str, task_name: str, feature_lengths: Mapping[str, int],
                 reward: Reward, splits=("validation", "test"), beam_size: int = 1,
                 best_of_n: int = 4, max_examples: Optional[int] = None,
                 partitioner: Optional[partitioning.Partitioner] = None) -> Dict[str, float]:
  """Reward, BLEU and chrF of a policy's greedy/beam and best-of-N output."""
  partitioner = partitioner or partitioning.Partitioner()
  trainer, params = _policy(model, policy_dir, feature_lengths, partitioner)
  evaluator = policy_eval.PolicyEvaluator(model, partitioner, trainer.params_sharding, reward,
                                          beam_size=beam_size, best_of_n=best_of_n)
  out = {}
  for split in splits:
    for key, value in evaluator(params, task_name, split, feature_lengths, max_examples).items():
      out[f"{split}/{key}"] = value
  print(json.dumps(out, indent=2))
  return out


def infer_command(*, model, policy_dir: str, input_file: str, output_file: str,
                  feature_lengths: Mapping[str, int], reward: Optional[Reward] = None,
                  num_samples: int = 8, temperature: float = 1.0, batch_size: int = 32,
                  seed: int = 0,
                  partitioner: Optional[partitioning.Partitioner] = None) -> str:
  """Translates a text file (one source per line) with best-of-N reranking.

  `num_samples` translations are sampled per line and the one the reward prefers
  is written (references are not known, so the reward must be reference-free,
  e.g. a learned model with `use_reference=False`); with no reward, the most
  likely sample under the policy is kept.
  """
  if reward is not None and reward.needs_reference:
    raise ValueError(f"infer reranks without references, but reward '{reward.name}' needs"
                     " them: use a reference-free reward (a learned model trained with"
                     " use_reference=False) or none (the policy's own likelihood)")
  partitioner = partitioner or partitioning.Partitioner()
  trainer, params = _policy(model, policy_dir, feature_lengths, partitioner)
  sampler = inference.PolicyDecoder(model, partitioner, trainer.params_sharding, num_samples,
                                    {"temperature": temperature},
                                    decode_fn=decoding.temperature_sample)
  vocabulary = model.input_vocabulary
  with open(input_file, encoding="utf-8") as f:
    sources = [line.rstrip("\n") for line in f]
  batch_size = -(-batch_size // partitioner.data_parallel_size) * partitioner.data_parallel_size
  outputs = []
  for start in range(0, len(sources), batch_size):
    chunk = sources[start:start + batch_size]
    tokens = np.zeros((batch_size, feature_lengths["inputs"]), np.int32)
    for i, text in enumerate(chunk):
      ids = list(vocabulary.encode(text))[: feature_lengths["inputs"] - 1] + [vocabulary.eos_id]
      tokens[i, : len(ids)] = ids
    keys = inference.sample_keys(seed, 0, np.arange(start, start + batch_size), num_samples)
    out = sampler.decode_global(params, tokens, feature_lengths["targets"], keys)
    texts = inference.decode_texts(model.output_vocabulary, out["tokens"])[: len(chunk)]
    if reward is not None:
      scores = reward(inference.repeat_for(chunk, num_samples),
                      [t for row in texts for t in row], None).reshape(len(chunk), num_samples)
    else:
      scores = np.asarray(out["scores"])[: len(chunk)]
    outputs += [row[int(np.argmax(s))] for row, s in zip(texts, scores)]
  if jax.process_index() == 0:
    with open(output_file, "w", encoding="utf-8") as f:
      f.write("\n".join(outputs) + ("\n" if outputs else ""))
  return output_file
