"""Single steps of ReST as commands: `grow`, `improve`, `eval` and `infer`.

Each takes a policy directory (a finished `rest` MODEL_DIR: its selected policy; a
`bc/` or `improve_G_I/` folder of one: its best checkpoint on validation; or any
`train` MODEL_DIR; see `policy_checkpoint`) and the model from gin, and does one job;
`rest` chains them. Configured by `gin/runs/steps.gin`.
"""

import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import numpy as np

from rest_jax import checkpoints, files, grow as grow_lib, improve as improve_lib
from rest_jax import inference, partitioning, policy_eval, trainer as trainer_lib
from rest_jax import sampling as sampling_lib, selection as selection_lib
from rest_jax.rewards import Reward


def policy_checkpoint(policy_dir: str) -> Tuple[checkpoints.Checkpointer, Optional[int]]:
  """The checkpoint (and step; None for the latest) that is the policy of `policy_dir`.

  - a finished `rest` MODEL_DIR: the policy it selected on validation;
  - a step of one (`bc/`, `improve_G_I/`, `bc_plus/`) or a `train` MODEL_DIR that
    kept a best checkpoint on validation (`selection.json`): that best checkpoint;
  - any other directory of checkpoints (`train` without validation, `convert`'s
    output): its latest checkpoint.
  """
  state_file = files.join(policy_dir, "rest_state.json")
  if files.exists(state_file):
    selected = json.loads(files.read_text(state_file))["steps"].get("selected_dir")
    if selected is None:
      raise ValueError(f"{policy_dir} is a `rest` run that has not selected a policy yet (it"
                       " selects when every step is done): point POLICY_DIR at one of its"
                       " steps, e.g. its bc/")
    policy_dir = files.join(policy_dir, selected)  # relative to the run, or absolute
  sel = selection_lib.Selection(policy_dir)
  if sel.best is not None:
    return checkpoints.Checkpointer(policy_dir, save_every=1, subdir="best"), sel.best[0]
  return checkpoints.Checkpointer(policy_dir), None


def _policy_state(model, policy_dir: str, feature_lengths, partitioner, batch_size: int = 64):
  """A policy with its optimizer state (`policy_checkpoint` says which checkpoint)."""
  trainer = trainer_lib.Trainer(model, partitioner,
                                trainer_lib.batch_input_shapes(batch_size, feature_lengths))
  ckpt, step = policy_checkpoint(policy_dir)
  state = ckpt.restore(trainer.abstract_state, step=step)
  ckpt.close()
  return trainer, state


def _policy(model, policy_dir: str, feature_lengths, partitioner, batch_size: int = 64):
  """A policy's parameters only: a checkpoint of BC's or Improve's optimizer serves."""
  trainer = trainer_lib.Trainer(model, partitioner,
                                trainer_lib.batch_input_shapes(batch_size, feature_lengths))
  ckpt, step = policy_checkpoint(policy_dir)
  params = ckpt.restore_params(trainer.abstract_state.params, step=step)
  ckpt.close()
  return trainer, params


def grow_command(*, model, policy_dir: str, output_dir: str, task_name: str,
                 feature_lengths: Mapping[str, int], reward: Reward,
                 grow: grow_lib.GrowConfig = grow_lib.GrowConfig(), grow_step: int = 1,
                 seed: int = 0,
                 partitioner: Optional[partitioning.Partitioner] = None) -> Dict[str, Any]:
  """One Grow step from a policy checkpoint (resumable: finished shards are kept)."""
  partitioner = partitioner or partitioning.Partitioner()
  trainer, params = _policy(model, policy_dir, feature_lengths, partitioner)
  return grow_lib.grow(
      model=model, params=params, partitioner=partitioner,
      params_sharding=trainer.params_sharding, task_name=task_name, split=grow.split,
      feature_lengths=feature_lengths, output_dir=output_dir, reward=reward,
      num_samples=grow.num_samples, sampling=grow.sampling, max_sources=grow.max_sources,
      batch_size=grow.batch_size, shard_size=grow.shard_size, seed=seed, grow_step=grow_step,
      overlength=grow.overlength, metadata={"policy": os.path.abspath(policy_dir)})


def improve_command(*, model, policy_dir: str, grown_dir: str, threshold: float,
                    output_dir: str, feature_lengths: Mapping[str, int],
                    improve: improve_lib.ImproveConfig = improve_lib.ImproveConfig(),
                    bc_dir: Optional[str] = None, kl_weight: float = 1.0, seed: int = 0,
                    mix_task: Optional[str] = None, reward_high: float = 1.0,
                    partitioner: Optional[partitioning.Partitioner] = None) -> Dict[str, Any]:
  """One Improve step from a policy checkpoint on a grown dataset (resumable).

  The policy's optimizer state is continued or started fresh as
  `improve.optimizer_state` says; a loss with a KL term reads the frozen BC
  policy from `bc_dir` (default: the policy itself) with weight `kl_weight`.
  """
  partitioner = partitioner or partitioning.Partitioner()
  loss = improve.loss
  trainer = trainer_lib.Trainer(model, partitioner,
                                trainer_lib.batch_input_shapes(improve.batch_size,
                                                               feature_lengths),
                                optimizer=improve.optimizer, loss_fn=loss,
                                learning_rate=improve.learning_rate)
  if improve.optimizer_state == "continue":  # the policy's own optimizer state (BC's)
    _, state = _policy_state(model, policy_dir, feature_lengths, partitioner)
    init_params, init_opt_state = state.params, state.opt_state
  else:
    init_params = _policy(model, policy_dir, feature_lengths, partitioner)[1]
    init_opt_state = None
  reference = None
  if loss.uses_reference_policy:
    reference = _policy(model, bc_dir or policy_dir, feature_lengths, partitioner)[1]
  result = improve_lib.improve(
      model=model, init_params=init_params, partitioner=partitioner, grown_dir=grown_dir,
      threshold=threshold, model_dir=output_dir, feature_lengths=feature_lengths, loss=loss,
      train_steps=improve.steps, batch_size=improve.batch_size,
      references=improve.references, mix_task=mix_task if improve.mix_ratio else None,
      mix_ratio=improve.mix_ratio, reward_high=reward_high, seed=seed, trainer=trainer,
      init_opt_state=init_opt_state, reference_params=reference, kl_weight=kl_weight)
  return result["metrics"]


def eval_command(*, model, policy_dir: str, task_name: str, feature_lengths: Mapping[str, int],
                 reward: Reward, evaluation: policy_eval.EvalConfig = policy_eval.EvalConfig(),
                 partitioner: Optional[partitioning.Partitioner] = None) -> Dict[str, float]:
  """Reward, BLEU and chrF of a policy's greedy/beam and best-of-N output."""
  partitioner = partitioner or partitioning.Partitioner()
  trainer, params = _policy(model, policy_dir, feature_lengths, partitioner)
  evaluator = policy_eval.PolicyEvaluator(model, partitioner, trainer.params_sharding, reward,
                                          evaluation)
  out = {}
  for split in evaluation.splits:
    for key, value in evaluator(params, task_name, split, feature_lengths,
                                evaluation.max_examples).items():
      out[f"{split}/{key}"] = value
  print(json.dumps(out, indent=2))
  return out


def infer_command(*, model, policy_dir: str, input_file: str, output_file: str,
                  feature_lengths: Mapping[str, int], reward: Optional[Reward] = None,
                  num_samples: int = 8,
                  sampling: sampling_lib.SamplingConfig = sampling_lib.SamplingConfig(),
                  batch_size: int = 32, seed: int = 0,
                  partitioner: Optional[partitioning.Partitioner] = None) -> str:
  """Translates a text file (one source per line) with best-of-N reranking.

  `num_samples` translations are sampled per line (with `sampling`) and the one
  the reward prefers is written (references are not known, so the reward must be
  reference-free, e.g. a learned model with `use_reference=False`); with no
  reward, the sample most likely under the policy (at T = 1) is kept.
  """
  if reward is not None and reward.needs_reference:
    raise ValueError(f"infer reranks without references, but reward '{reward.name}' needs"
                     " them: use a reference-free reward (a learned model trained with"
                     " use_reference=False) or none (the policy's own likelihood)")
  partitioner = partitioner or partitioning.Partitioner()
  trainer, params = _policy(model, policy_dir, feature_lengths, partitioner)
  sampler = inference.PolicyDecoder(model, partitioner, trainer.params_sharding, num_samples,
                                    sampling, token_log_probs=reward is None)
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
      scores = np.asarray(out["policy_log_probs"]).sum(-1)[: len(chunk)]
    outputs += [row[int(np.argmax(s))] for row, s in zip(texts, scores)]
  if jax.process_index() == 0:
    with open(output_file, "w", encoding="utf-8") as f:
      f.write("\n".join(outputs) + ("\n" if outputs else ""))
  return output_file
