"""Single steps of ReST as commands: `grow`, `improve`, `eval` and `infer`.

Each takes a policy directory (a finished `rest` MODEL_DIR: its selected policy; a
`bc/` or `improve_G_I/` folder of one: its best checkpoint on validation; or any
`train` MODEL_DIR; see `policy_checkpoint`) and the model from gin, and does one job;
`rest` chains them. Configured by `gin/runs/steps.gin`.
"""

import json
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import numpy as np

from rest_jax import checkpoints, files, grow as grow_lib, improve as improve_lib
from rest_jax import inference, layout, partitioning, policy_eval, trainer as trainer_lib
from rest_jax import sampling as sampling_lib, selection as selection_lib
from rest_jax.context import Policy, StepContext
from rest_jax.rewards import Reward


def policy_checkpoint(policy_dir: str) -> Tuple[checkpoints.Checkpointer, Optional[int]]:
  """The checkpoint (and step; None for the latest) that is the policy of `policy_dir`.

  - a finished `rest` MODEL_DIR: the policy it selected on validation;
  - a step of one (`bc/`, `improve_G_I/`, `bc_plus/`) or a `train` MODEL_DIR that
    kept a best checkpoint on validation (`selection.json`): that best checkpoint;
  - any other directory of checkpoints (`train` without validation, `convert`'s
    output): its latest checkpoint.
  """
  summary = layout.read_summary(policy_dir)
  if summary is not None:
    selected = summary.get("selected_dir")
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


def _context(model, task_name, feature_lengths, reward, seed, partitioner,
             validate=None) -> StepContext:
  return StepContext(model=model, partitioner=partitioner, task=task_name,
                     feature_lengths=dict(feature_lengths), reward=reward, seed=seed,
                     validate=validate)


def grow_command(*, model, policy_dir: str, output_dir: str, task_name: str,
                 feature_lengths: Mapping[str, int], reward: Reward,
                 grow: grow_lib.GrowConfig = grow_lib.GrowConfig(), grow_step: int = 1,
                 seed: int = 0,
                 partitioner: Optional[partitioning.Partitioner] = None) -> Dict[str, Any]:
  """Grow step `grow_step` from a policy checkpoint, as `rest` runs it (resumable: finished
  shards are kept)."""
  partitioner = partitioner or partitioning.Partitioner()
  trainer, params = _policy(model, policy_dir, feature_lengths, partitioner)
  return grow_lib.grow_step(
      Policy(params, None, policy_dir), grow,
      _context(model, task_name, feature_lengths, reward, seed, partitioner),
      output_dir=output_dir, grow_step=grow_step, params_sharding=trainer.params_sharding)


def improve_command(*, model, policy_dir: str, grown_dir: str, threshold: float,
                    output_dir: str, feature_lengths: Mapping[str, int],
                    improve: improve_lib.ImproveConfig = improve_lib.ImproveConfig(),
                    bc_dir: Optional[str] = None, seed: int = 0,
                    task_name: Optional[str] = None, reward: Optional[Reward] = None,
                    evaluation: Optional[policy_eval.EvalConfig] = None,
                    place: improve_lib.Place = improve_lib.Place(),
                    partitioner: Optional[partitioning.Partitioner] = None) -> Dict[str, Any]:
  """Improve step `place` (g, i of a run of G Grow steps) from a policy checkpoint,
  exactly as `rest` runs it (resumable).

  The same function as `rest`'s Improve step with the same objects: the policy's
  optimizer state is continued or started fresh as `improve.optimizer_state` says;
  the data order and dropout follow (`seed`, g, i); a loss with a KL term reads the
  frozen BC policy from `bc_dir` (default: the policy itself) with the weight `rest`
  gives this step of G x I; and with `evaluation` (and
  the task and reward) the step keeps its best checkpoint on validation, as in `rest`.
  """
  partitioner = partitioner or partitioning.Partitioner()
  loss = improve.loss
  if improve.optimizer_state == "continue":  # the policy's own optimizer state (BC's)
    _, state = _policy_state(model, policy_dir, feature_lengths, partitioner)
    start = Policy(state.params, state.opt_state, policy_dir)
  else:
    start = Policy(_policy(model, policy_dir, feature_lengths, partitioner)[1], None,
                   policy_dir)
  reference = None
  if loss.uses_reference_policy:
    reference = _policy(model, bc_dir or policy_dir, feature_lengths, partitioner)[1]
  validate = None
  if evaluation is not None and task_name and reward is not None:
    trainer = trainer_lib.Trainer(model, partitioner, trainer_lib.batch_input_shapes(
        improve.batch_size, feature_lengths))
    evaluator = policy_eval.PolicyEvaluator(model, partitioner, trainer.params_sharding,
                                            reward, evaluation, seed=seed)

    def validate(params):
      return evaluator.validation_reward(params, task_name, "validation", feature_lengths,
                                         evaluation.max_examples)

  if reward is None:  # only the scale's top matters (unscored rows carry it)
    reward = _UnitScale()
  context = _context(model, task_name, feature_lengths, reward, seed, partitioner, validate)
  result = improve_lib.improve_step(
      start, improve, context, grown_dir=grown_dir, threshold=threshold,
      output_dir=output_dir, place=place, reference_params=reference)
  return dict(result.metrics)


class _UnitScale:
  """The reward scale [0, 1] when no reward is configured."""

  range = (0.0, 1.0)


def eval_command(*, model, policy_dir: str, task_name: str, feature_lengths: Mapping[str, int],
                 reward: Reward, evaluation: policy_eval.EvalConfig = policy_eval.EvalConfig(),
                 seed: int = 0,
                 partitioner: Optional[partitioning.Partitioner] = None) -> Dict[str, float]:
  """Reward, BLEU and chrF of a policy's greedy/beam and best-of-N output (best-of-N's
  samples drawn with keys from `seed`, as in `rest`)."""
  partitioner = partitioner or partitioning.Partitioner()
  trainer, params = _policy(model, policy_dir, feature_lengths, partitioner)
  evaluator = policy_eval.PolicyEvaluator(model, partitioner, trainer.params_sharding, reward,
                                          evaluation, seed=seed)
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
