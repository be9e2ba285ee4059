"""A `rest` run's folder, named in one place.

    MODEL_DIR/
      bc/                  the behaviour-cloning policy: checkpoints/ to resume, best/ (its
                           best validation checkpoint), selection.json
      bc_plus/             the BC+ control (BC continued on the original pairs), likewise
      grow_<g>/            the grown dataset of Grow step g (shards + manifest.json)
      improve_<g>_<i>/     Improve step i of Grow step g, likewise a training step
      filtered_bc_<g>_<i>/ the filtered-BC control's step of the same place, likewise
      samples_only_1_<i>/  the ablation ReST on the samples alone, likewise (Grow 1's rows)
      random_1_<i>/        the random-selection control, likewise (Grow 1's rows)
      grow_<g>_rated_rows.npy  the held-out rater's score of every row of grow_<g>
      rest_state.json      what is done: every step's record, result and evaluation; the
                           run summary (rows, picks, thresholds)
      outputs/<step>.<split>.json   the selected policies' outputs on test (for `seeds`)
      report.md, grow_<g>_rewards.png, ...   the report and its plots
      rest/                TensorBoard summaries
      config.gin           the configuration the run was started with

`rest` writes it; the single-step commands, `report` and `seeds` read it through
the names below.
"""

import json
import os
from typing import Any, Dict, Optional

from rest_jax import files

STATE_FILE = "rest_state.json"
REPORT_FILE = "report.md"
SUMMARIES = "rest"
BC = "bc"
BC_PLUS = "bc_plus"
# The run summary in the state file (beside the stages' results): the report's rows, the
# picks on validation (`PolicyRow.id`s), thresholds, coverage, empty arm steps, the reward;
# "filtered_bc_selected" only in files from before "arm_selected" (read, never written).
SUMMARY_KEYS = ("rows", "selected", "selected_dir", "best_control", "arm_selected",
                "filtered_bc_selected", "thresholds", "coverage", "empty_steps",
                "reward_quality", "reward_reads_references", "reward_name")


def grow_name(g: int) -> str:
  """The step (and folder) name of Grow step g."""
  return f"grow_{g}"


def improve_name(g: int, i: int) -> str:
  """The step (and folder) name of Improve step i of Grow step g."""
  return f"improve_{g}_{i}"


def arm_step_name(prefix: str, g: int, i: int) -> str:
  """Step i (of Grow step g's place) of a chain beside ReST's (`controls.Arm.prefix`)."""
  return f"{prefix}_{g}_{i}"


def filtered_bc_name(g: int, i: int) -> str:
  """The filtered-BC control's step i of Grow step g (`controls.py`)."""
  return arm_step_name("filtered_bc", g, i)


def rated_rows_path(model_dir: str, g: int) -> str:
  """The rows rater's score of every row of Grow step g, in shard order (`.npy`)."""
  return files.join(model_dir, f"{grow_name(g)}_rated_rows.npy")


def grow_index(name: str) -> Optional[int]:
  """g of a Grow step's name ('grow_3' -> 3), None for any other name."""
  prefix = "grow_"
  tail = name[len(prefix):] if name.startswith(prefix) else ""
  return int(tail) if tail.isdigit() else None


def is_improve(name: str) -> bool:
  return name.startswith("improve_")


def rewards_plot(g: int) -> str:
  return f"{grow_name(g)}_rewards.png"


def outputs_path(model_dir: str, step_dir: str, split: str) -> str:
  """The greedy outputs of the policy selected in `step_dir` on `split` (test: `seeds`)."""
  return files.join(model_dir, "outputs", f"{os.path.basename(step_dir)}.{split}.json")


def state_path(model_dir: str) -> str:
  return files.join(model_dir, STATE_FILE)


def read_state(model_dir: str) -> Optional[Dict[str, Any]]:
  """The run's state file as written (None when the run has none)."""
  path = state_path(model_dir)
  if not files.exists(path):
    return None
  return json.loads(files.read_text(path))


def read_summary(model_dir: str) -> Optional[Dict[str, Any]]:
  """The run summary of a run's state file (in files from before it had its own place,
  its keys among the steps); None when the run has no state file."""
  state = read_state(model_dir)
  if state is None:
    return None
  if "summary" in state:
    return state["summary"]
  return {k: v for k, v in state.get("steps", {}).items() if k in SUMMARY_KEYS}


def relative(model_dir: str, path: str) -> str:
  """`path` relative to the run when inside it (a moved run is the same run), else absolute."""
  inside = os.path.relpath(os.path.abspath(path), os.path.abspath(model_dir))
  return os.path.abspath(path) if inside.startswith("..") else inside
