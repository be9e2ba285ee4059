"""Mean and spread over seeds of finished `rest` runs: the `seeds` command.

    python -m rest_jax.main seeds --runs runs/demo_seed0 runs/demo_seed1 runs/demo_seed2

Reads each run's `rest_state.json` and prints, for BC, the BC+ control and the
selected ReST policy, the mean and standard deviation over the runs of each metric
(test first, then validation), the per-run values, and the per-run difference
ReST - BC+ with its mean and spread: a margin smaller than the spread is no result.
"""

from typing import Any, Dict, List, Sequence

import numpy as np

from rest_jax import layout

ROLES = ("BC", "BC+", "ReST")
METRICS = (("reward", 4), ("held_out_reward", 4), ("bleu", 2), ("chrf", 2), ("ter", 2))


def _rows(model_dir: str) -> List[Dict[str, Any]]:
  state = layout.read_state(model_dir)
  path = layout.state_path(model_dir)
  if state is None:
    raise FileNotFoundError(f"{path} is missing: {model_dir} is not a finished rest run")
  steps = state["steps"]
  if "rows" not in steps:
    raise ValueError(f"{path} has no rows: the run has not finished")
  return steps["rows"]


def _pick(rows, role: str):
  if role == "ReST":
    return next(r for r in rows if r.get("selected"))
  return next((r for r in rows if r["role"] == role), None)


def summarize(runs: Sequence[str], splits: Sequence[str] = ("test", "validation")) -> str:
  """A markdown table per split: mean +- std over `runs` for BC, BC+ and ReST."""
  all_rows = {run: _rows(run) for run in runs}
  out = [f"{len(runs)} runs: " + ", ".join(runs), ""]
  for split in splits:
    present = [(m, d) for m, d in METRICS
               if any(f"{split}/{m}" in r["metrics"] for rows in all_rows.values()
                      for r in rows)]
    lines = [f"### {split}", "", "| policy | " + " | ".join(m for m, _ in present) + " |",
             "|---|" + "---|" * len(present)]
    values = {}
    for role in ROLES:
      picked = [_pick(rows, role) for rows in all_rows.values()]
      if any(p is None for p in picked):
        continue
      cells = []
      for metric, digits in present:
        v = np.array([p["metrics"].get(f"{split}/{metric}", np.nan) for p in picked])
        values[(role, metric)] = v
        spread = np.std(v, ddof=1) if len(v) > 1 else 0.0
        cells.append(f"{np.mean(v):.{digits}f} ± {spread:.{digits}f}")
      label = role
      if role == "ReST":
        label += " (selected: " + ", ".join(p["policy"].split(" (")[0] for p in picked) + ")"
      lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if ("ReST", "chrf") in values and ("BC+", "chrf") in values:
      cells = []
      for metric, digits in present:
        d = values[("ReST", metric)] - values[("BC+", metric)]
        spread = np.std(d, ddof=1) if len(d) > 1 else 0.0
        cells.append(f"{np.mean(d):+.{digits}f} ± {spread:.{digits}f}")
      lines.append("| ReST - BC+ (per run) | " + " | ".join(cells) + " |")
    out += lines + [""]
  out.append("± is the standard deviation over the runs (n - 1).")
  return "\n".join(out)


def seeds_command(runs: Sequence[str]) -> str:
  text = summarize(runs)
  print(text)
  return text
