"""The ReST report: a metrics table (printed and `report.md`) and PNG plots."""

import os
from typing import Any, Dict, List, Sequence

import numpy as np

from rest_jax.data import grown


def table(rows: List[Dict[str, Any]], splits: Sequence[str], best_of_n: int) -> str:
  """A markdown table: one row per policy, reward/BLEU/chrF per split (+ best-of-N)."""
  columns = []
  for split in splits:
    columns += [(f"{split}/reward", f"{split} reward"), (f"{split}/bleu", f"{split} BLEU"),
                (f"{split}/chrf", f"{split} chrF")]
    if best_of_n > 1:
      prefix = f"{split}/best_of_{best_of_n}_"
      columns += [(prefix + "reward", f"{split} best-of-{best_of_n} reward"),
                  (prefix + "bleu", f"{split} best-of-{best_of_n} BLEU")]
  lines = ["| policy | " + " | ".join(c[1] for c in columns) + " |",
           "|---|" + "---|" * len(columns)]
  for row in rows:
    values = [row["metrics"].get(key) for key, _ in columns]
    cells = [("-" if v is None else (f"{v:.4f}" if k.endswith("reward") else f"{v:.2f}"))
             for v, (k, _) in zip(values, columns)]
    lines.append(f"| {row['policy']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def time_shares(steps: Dict[str, Any]) -> Dict[str, float]:
  """Seconds spent sampling, scoring, writing, training (BC and Improve) and evaluating."""
  shares = {"sampling": 0.0, "scoring": 0.0, "writing": 0.0, "bc_training": 0.0,
            "improve_training": 0.0, "evaluation": 0.0}
  for name, step in steps.items():
    if not isinstance(step, dict):
      continue
    if name.startswith("grow_"):
      shares["sampling"] += step.get("sample_s", 0.0)
      shares["scoring"] += step.get("score_s", 0.0)
      shares["writing"] += step.get("write_s", 0.0)
    elif name == "bc":
      shares["bc_training"] += step.get("seconds", 0.0)
    elif name.startswith("improve_"):
      shares["improve_training"] += step.get("seconds", 0.0)
    elif name.startswith("eval_"):
      shares["evaluation"] += step.get("seconds", 0.0)
  return shares


def _plots(model_dir: str, rows, steps, splits) -> List[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  written = []
  g = 1
  while os.path.exists(os.path.join(model_dir, f"grow_{g}", grown.MANIFEST)):
    directory = os.path.join(model_dir, f"grow_{g}")
    rewards = grown.read_rewards(grown.shard_paths(directory, grown.load_manifest(
        directory, verify_counts=False)))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(rewards, bins=40, color="tab:blue", alpha=0.8)
    for tau in steps.get("thresholds", {}).get(str(g), []):
      ax.axvline(tau, color="tab:red", linestyle="--")
    ax.set_xlabel("reward")
    ax.set_ylabel("rows")
    ax.set_title(f"Grow step {g}: {rewards.size} rows, thresholds dashed")
    path = os.path.join(model_dir, f"grow_{g}_rewards.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    g += 1
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  x = np.arange(len(rows))
  for split in splits:
    axes[0].plot(x, [r["metrics"].get(f"{split}/reward", np.nan) for r in rows], "o-",
                 label=split)
    axes[1].plot(x, [r["metrics"].get(f"{split}/bleu", np.nan) for r in rows], "o-",
                 label=split)
  for ax, title in zip(axes, ("mean reward", "BLEU")):
    ax.set_xticks(x, [r["policy"].split(" (")[0] for r in rows], rotation=30)
    ax.set_title(title)
    ax.legend()
  fig.tight_layout()
  path = os.path.join(model_dir, "metrics_per_step.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  written.append(path)
  return written


def write_report(model_dir: str, rows, steps, splits, best_of_n: int) -> str:
  """Writes `report.md` and the plots; prints and returns the table."""
  text = table(rows, splits, best_of_n)
  shares = time_shares(steps)
  total = sum(shares.values()) or 1.0
  timing = "\n".join(f"| {k} | {v:.1f} s | {100 * v / total:.1f}% |" for k, v in shares.items())
  plots = _plots(model_dir, rows, steps, splits)
  body = ["# ReST report", "", text, "", "## Where the time went", "",
          "| part | time | share |", "|---|---|---|", timing, ""]
  body += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
  with open(os.path.join(model_dir, "report.md"), "w") as f:
    f.write("\n".join(body) + "\n")
  print("\n" + text + "\n")
  print("time: " + ", ".join(f"{k} {v:.0f}s ({100 * v / total:.0f}%)" for k, v in shares.items()))
  return text
