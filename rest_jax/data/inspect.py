"""`python -m rest_jax.main data show|stats`: look at a task's examples or a grown dataset."""

import itertools
import json
from typing import Dict, List, TextIO

import numpy as np
import seqio

from rest_jax.data import grown, pipeline


def _task(name: str, module: str | None) -> seqio.Task:
  return pipeline._get_task(pipeline.DatasetConfig(name, {}, "train", 1, module=module))  # pylint: disable=protected-access


def _examples(task: seqio.Task, split: str, lengths: Dict[str, int] | None):
  return task.get_dataset(lengths, split=split, shuffle=False,
                          try_in_mem_cache=False).as_numpy_iterator()


def show(task_name: str, split: str, num: int, out: TextIO,
         module: str | None = "rest_jax.data.tasks") -> None:
  """Prints `num` examples: text, token ids and any reward fields."""
  task = _task(task_name, module)
  for i, ex in enumerate(itertools.islice(_examples(task, split, None), num)):
    out.write(f"--- {task_name}/{split} example {i}\n")
    for key in sorted(ex):
      value = ex[key]
      if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
      elif isinstance(value, np.ndarray):
        value = value.tolist()
      out.write(f"  {key}: {value}\n")


def _percentiles(values: List[float]) -> str:
  if not values:
    return "-"
  qs = np.percentile(np.asarray(values, np.float64), [0, 50, 90, 99, 100])
  return " ".join(f"p{q}={v:.4g}" for q, v in zip((0, 50, 90, 99, 100), qs))


def stats(task_name: str | None, split: str, out: TextIO, grown_dir: str | None = None,
          max_examples: int | None = None,
          module: str | None = "rest_jax.data.tasks") -> dict:
  """Prints example counts and token-length percentiles; for a grown dataset, rewards too."""
  result = {}
  if grown_dir:
    manifest = grown.load_manifest(grown_dir)
    rewards = grown.sample_rewards(grown.shard_paths(grown_dir, manifest))
    result["grown"] = {"rows": manifest["num_rows"], "shards": manifest["num_shards"],
                       "samples": manifest["num_samples"],
                       "references": manifest["num_references"],
                       "reward": grown.reward_statistics(rewards),
                       "reference_reward": manifest["reference_reward"]}
    out.write(f"grown dataset {grown_dir}: {manifest['num_rows']} rows in"
              f" {manifest['num_shards']} shards ({manifest['num_samples']} samples,"
              f" {manifest['num_references']} references)\n"
              f"  sample reward: {_percentiles(rewards.tolist())}\n")
  if task_name:
    task = _task(task_name, module)
    lengths = {"inputs": [], "targets": []}
    count = 0
    for ex in itertools.islice(_examples(task, split, None), max_examples):
      count += 1
      for key in lengths:
        lengths[key].append(len(ex[key]))
    result["task"] = {"examples": count}
    out.write(f"{task_name}/{split}: {count} examples\n")
    for key, values in lengths.items():
      result["task"][f"{key}_length"] = _percentiles(values)
      out.write(f"  {key} tokens: {_percentiles(values)}\n")
  out.write(json.dumps(result) + "\n")
  return result
