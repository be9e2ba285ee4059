"""ReST against its controls over several finished `rest` runs (seeds): the `seeds` command.

    python -m rest_jax.main seeds --runs runs/demo_seed0 runs/demo_seed1 ... \
        [--runs runs/blind_seed0 ...]

For each group of runs (`--runs` may be given more than once, e.g. a reward that cannot
see the flaw beside one that can), it prints:

- every seed's row: the test BLEU, chrF and held-out reward of BC, BC+, filtered BC (the
  control's pick), the best control (chosen on validation) and the selected ReST policy,
  ReST's margin over the best control, and the learned reward's own accuracy on the
  flaw (how often it prefers the correct translation to the flawed one, on held-out
  ratings of sources it never trained on);
- the mean and standard deviation (n - 1) over the seeds of each of them, test and
  validation;
- the paired bootstrap 95% interval of ReST minus the best control in corpus BLEU and
  chrF over the test sentences of all seeds pooled (1,000 resamples of sentence indices,
  seed 0; each seed's ReST output paired with its own best control's on the same
  sentence), from the outputs `rest` keeps (`outputs/`);
- the number of seeds in which ReST beats the best control on test BLEU;
- the correlation across seeds of the reward's flaw accuracy with ReST's test margin.
"""

import json
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import sacrebleu

from rest_jax import files, layout

METRICS = (("reward", 4), ("held_out_reward", 4), ("bleu", 2), ("chrf", 2), ("ter", 2))
BOOTSTRAP_SAMPLES = 1000


def _state(model_dir: str) -> Dict[str, Any]:
  state = layout.read_state(model_dir)
  if state is None:
    raise FileNotFoundError(f"{layout.state_path(model_dir)} is missing: {model_dir} is not a"
                            " finished rest run")
  if "rows" not in state["steps"]:
    raise ValueError(f"{layout.state_path(model_dir)} has no rows: the run has not finished")
  return state["steps"]


def _pick(steps: Dict[str, Any], role: str) -> Optional[Dict[str, Any]]:
  rows = steps["rows"]
  if role == "ReST":
    return next(r for r in rows if r.get("selected"))
  if role == "best control":
    return next((r for r in rows if r["policy"] == steps.get("best_control")), None)
  if role == "filtered BC":  # the control's pick: its best step, or BC if none beat BC
    pick = steps.get("filtered_bc_selected")
    return next((r for r in rows if r["policy"] == pick), None) if pick else None
  return next((r for r in rows if r["role"] == role), None)


def flaw_accuracy(steps: Dict[str, Any], kind: str = "flawed") -> float:
  """How often the run's learned reward prefers the correct translation to `kind` (nan if
  the reward is not a learned model, or its ratings have no such kind)."""
  by_kind = steps.get("reward_quality", {}).get("by_kind", {})
  return float(by_kind.get(kind, {}).get("pairwise_vs_correct", float("nan")))


def _step_dir(model_dir: str, steps: Dict[str, Any], row: Dict[str, Any]) -> str:
  """The folder of a row's policy (from the layout; BC from another run keeps its path)."""
  if row["role"] == "BC":
    return layout.BC
  if row["role"] == "BC+":
    return layout.BC_PLUS
  if row.get("selected"):
    return steps["selected_dir"]
  label = row["policy"].split(" (")[0]  # "G1 I3" or "filtered BC G1 I3"
  g, i = (int(x[1:]) for x in label.split()[-2:])
  return layout.filtered_bc_name(g, i) if row["role"] == "filtered BC" else \
      layout.improve_name(g, i)


def _outputs(model_dir: str, steps: Dict[str, Any], row: Dict[str, Any], split: str):
  path = layout.outputs_path(model_dir, _step_dir(model_dir, steps, row), split)
  if not files.exists(path):
    raise FileNotFoundError(f"{path} is missing: {model_dir} was run before `rest` kept its"
                            " test outputs; re-run it (finished steps are reused)")
  return json.loads(files.read_text(path))


def paired_bootstrap(references: Sequence[str], ours: Sequence[str], theirs: Sequence[str],
                     tokenize: str = "13a", samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = 0) -> Dict[str, List[float]]:
  """Corpus BLEU and chrF of `ours` minus `theirs`: the difference on the sentences given,
  and its 95% percentile interval over `samples` resamples of the sentences (paired:
  both systems are scored on the same resampled sentences).

  The metrics' sufficient statistics per sentence are sacrebleu's own (what its
  `--paired-bs` resamples), summed over each resample.
  """
  rng = np.random.default_rng(seed)
  index = rng.integers(0, len(references), size=(samples, len(references)))
  out = {}
  for name, metric in (("bleu", sacrebleu.BLEU(tokenize=tokenize)), ("chrf", sacrebleu.CHRF())):
    # pylint: disable=protected-access
    stats = [np.asarray(metric._extract_corpus_statistics(list(h), [list(references)]),
                        np.float64) for h in (ours, theirs)]
    score = lambda s: metric._compute_score_from_stats(list(s)).score  # noqa: E731
    diffs = np.array([score(stats[0][ix].sum(0)) - score(stats[1][ix].sum(0))
                      for ix in index])
    # pylint: enable=protected-access
    whole = score(stats[0].sum(0)) - score(stats[1].sum(0))
    out[name] = [float(whole), float(np.percentile(diffs, 2.5)),
                 float(np.percentile(diffs, 97.5))]
  return out


def _mean_sd(values: np.ndarray, digits: int, sign: bool = False) -> str:
  spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
  return f"{np.mean(values):{'+' if sign else ''}.{digits}f} ± {spread:.{digits}f}"


def summarize_group(runs: Sequence[str], label: str = "") -> str:
  """The tables and statistics of one group of runs (see the module docstring)."""
  steps = {run: _state(run) for run in runs}
  reward_names = sorted({s.get("reward_name", "") for s in steps.values()} - {""})
  out = [f"## {label or 'runs'}: {len(runs)} seeds" + (f" (reward {', '.join(reward_names)})"
                                                        if reward_names else ""), ""]
  # Every seed's row, on test.
  header = ["run", "BC", "BC+", "filtered BC", "best control (validation)", "ReST (selected)",
            "ReST - best control", "reward's flaw accuracy"]
  out += ["Test BLEU / chrF per seed:", "", "| " + " | ".join(header) + " |",
          "|" + "---|" * len(header)]
  margins, accuracy = [], []
  for run, s in steps.items():
    cells = [run]
    for role in ("BC", "BC+", "filtered BC", "best control", "ReST"):
      row = _pick(s, role)
      m = row["metrics"] if row else {}
      cell = (f"{m['test/bleu']:.2f} / {m['test/chrf']:.2f}" if "test/bleu" in m else "-")
      if role in ("best control", "ReST") and row:
        cell += f" ({row['policy'].split(' (')[0]})"
      cells.append(cell)
    rest_m, control_m = _pick(s, "ReST")["metrics"], _pick(s, "best control")["metrics"]
    margin = rest_m["test/bleu"] - control_m["test/bleu"]
    margins.append(margin)
    accuracy.append(flaw_accuracy(s))
    cells += [f"{margin:+.2f} / {rest_m['test/chrf'] - control_m['test/chrf']:+.2f}",
              f"{accuracy[-1]:.3f}"]
    out.append("| " + " | ".join(cells) + " |")
  out.append("")
  # Mean and spread per split.
  for split in ("test", "validation"):
    present = [(m, d) for m, d in METRICS
               if all(f"{split}/{m}" in _pick(s, "ReST")["metrics"] for s in steps.values())]
    out += [f"Mean ± sd over seeds, {split}:", "",
            "| policy | " + " | ".join(m for m, _ in present) + " |",
            "|---|" + "---|" * len(present)]
    values = {}
    for role in ("BC", "BC+", "filtered BC", "best control", "ReST"):
      picked = [_pick(s, role) for s in steps.values()]
      if any(p is None or f"{split}/{present[0][0]}" not in p["metrics"] for p in picked):
        continue
      cells = []
      for metric, digits in present:
        v = np.array([p["metrics"].get(f"{split}/{metric}", np.nan) for p in picked])
        values[(role, metric)] = v
        cells.append(_mean_sd(v, digits))
      out.append(f"| {role} | " + " | ".join(cells) + " |")
    if ("ReST", present[0][0]) in values and ("best control", present[0][0]) in values:
      cells = [_mean_sd(values[("ReST", m)] - values[("best control", m)], d, sign=True)
               for m, d in present]
      out.append("| ReST - best control (per seed) | " + " | ".join(cells) + " |")
    out.append("")
  # Pooled paired bootstrap over test sentences.
  refs, ours, theirs, tokenize = [], [], [], "13a"
  try:
    for run, s in steps.items():
      a = _outputs(run, s, _pick(s, "ReST"), "test")
      b = _outputs(run, s, _pick(s, "best control"), "test")
      if a["references"] != b["references"]:
        raise ValueError(f"{run}: ReST's and the control's test outputs are of other sentences")
      refs += a["references"]
      ours += a["hypotheses"]
      theirs += b["hypotheses"]
      tokenize = a.get("bleu_tokenize", tokenize)
    boot = paired_bootstrap(refs, ours, theirs, tokenize)
    out.append(f"Paired bootstrap over the {len(refs)} test sentences of all seeds"
               f" ({BOOTSTRAP_SAMPLES} resamples): ReST - best control BLEU"
               f" {boot['bleu'][0]:+.2f} (95% interval {boot['bleu'][1]:+.2f} to"
               f" {boot['bleu'][2]:+.2f}), chrF {boot['chrf'][0]:+.2f}"
               f" ({boot['chrf'][1]:+.2f} to {boot['chrf'][2]:+.2f}).")
  except FileNotFoundError as e:
    out.append(f"Paired bootstrap: not computed ({e}).")
  wins = sum(m > 0 for m in margins)
  out.append(f"ReST beats the best control on test BLEU in {wins} of {len(margins)} seeds.")
  acc, mar = np.array(accuracy), np.array(margins)
  if len(mar) > 2 and np.all(np.isfinite(acc)) and np.std(acc) > 0 and np.std(mar) > 0:
    out.append(f"Correlation across seeds of the reward's flaw accuracy with ReST's test BLEU"
               f" margin: Pearson {np.corrcoef(acc, mar)[0, 1]:+.2f}.")
  else:
    out.append("Correlation of the reward's flaw accuracy with the margin: not defined (fewer"
               " than 3 seeds, no learned reward, or no spread).")
  return "\n".join(out + [""])


def summarize(groups: Sequence[Sequence[str]]) -> str:
  """Every group's summary; ± is the standard deviation over seeds (n - 1)."""
  parts = [summarize_group(runs, f"group {k + 1}" if len(groups) > 1 else "runs")
           for k, runs in enumerate(groups)]
  return "\n".join(parts + ["± is the standard deviation over the seeds (n - 1)."])


def seeds_command(groups: Sequence[Sequence[str]]) -> str:
  text = summarize(groups)
  print(text)
  return text
