"""The ReST report: what was run, every policy on validation, the selected ones on test.

`report.md` (and the printed summary) says what was run, gives every policy's
validation metrics with the selected ReST policy marked, the test metrics of the
selected policies only (BC, the BC+ control and ReST: test never chooses), the
degeneracy rates, the reward-hacking watch (steps where the training reward rose
while a held-out metric fell; agreement of the training reward with a held-out
reward on the policy's own samples) and where the time went, with PNG plots.
"""

import io
import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from rest_jax import files, layout, rows as rows_lib
from rest_jax.data import grown
from rest_jax.roles import Role
from rest_jax.rows import PolicyRow

# Held-out metrics watched for a fall while the training reward rises (name, higher is better).
HELD_OUT = (("bleu", True), ("chrf", True), ("ter", False), ("held_out_reward", True))


def _cell(value, digits=2) -> str:
  if value is None or (isinstance(value, float) and np.isnan(value)):
    return "-"
  return f"{value:.{digits}f}"


def _name(row) -> str:
  same = " (its start, BC: no step beat it on validation)" if row.role == Role.BC_PLUS and (
      row.optimizer_steps is not None and row.bc_steps == row.optimizer_steps) else ""
  return row.policy + same + (" **(selected)**" if row.selected else
                              " (the arm's pick)" if row.arm_selected else "")


def metrics_table(rows, split: str, best_of_n: int, columns=None) -> str:
  """A markdown table of `split`'s metrics, one row per policy that has them."""
  n = best_of_n
  columns = columns or [
      ("reward", "reward", 4), ("held_out_reward", "held-out reward", 4), ("bleu", "BLEU", 2),
      ("chrf", "chrF", 2), ("ter", "TER", 2), ("colour_recall", "colour recall", 3),
      (f"best_of_{n}_chrf", f"best-of-{n} chrF", 2),
      (f"oracle_best_of_{n}_chrf", f"oracle best-of-{n} chrF", 2)]
  present = [c for c in columns if any(f"{split}/{c[0]}" in r.metrics for r in rows)]
  lines = ["| policy | optimizer steps | kept samples / references | "
           + " | ".join(c[1] for c in present) + " |",
           "|---|---|---|" + "---|" * len(present)]
  for row in rows:
    if f"{split}/reward" not in row.metrics:
      continue
    kept = (f"{row.kept_samples} / {row.kept_references}" if row.kept_samples is not None
            else "-")
    cells = [_cell(row.metrics.get(f"{split}/{key}"), digits) for key, _, digits in present]
    steps = "-" if row.optimizer_steps is None else row.optimizer_steps
    lines.append(f"| {_name(row)} | {steps} | {kept} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def trains_on_table(rows) -> str:
  """Per training step, the rows it trains on: their number, mean training reward and mean
  score by the rows rater, for the policy's samples and the original pairs apart."""
  lines = ["| policy | samples | their reward | their rated quality | original pairs |"
           " their reward | their rated quality |", "|---|---|---|---|---|---|---|"]
  for row in rows:
    q = row.trains_on
    if not q:
      continue
    cells = [f"{q[k]['rows']} | {_cell(q[k]['reward'], 4)} | {_cell(q[k]['held_out'], 4)}"
             for k in ("samples", "references")]
    lines.append(f"| {row.policy} | " + " | ".join(cells) + " |")
  return "\n".join(lines) if len(lines) > 2 else ""


def degeneracy_table(rows, split: str) -> str:
  cols = [("length_ratio", "length ratio"), ("repeated_ngram_rate", "repeated 3-gram"),
          ("empty_rate", "empty"), ("copy_rate", "copy of source")]
  lines = ["| policy | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---|" * len(cols)]
  for row in rows:
    if f"{split}/length_ratio" in row.metrics:
      lines.append(f"| {row.policy} | " + " | ".join(
          _cell(row.metrics.get(f"{split}/{k}"), 3) for k, _ in cols) + " |")
  ref = next((r.metrics for r in rows
              if f"{split}/reference_repeated_ngram_rate" in r.metrics), None)
  if ref is not None:  # the references' own level, where every limit starts
    lines.append("| references (their own rates) | 1.000 | " + " | ".join(
        _cell(ref.get(f"{split}/reference_{k}"), 3) for k, _ in cols[1:]) + " |")
    lines.append(f"\nWords are split by the target language's tokenizer. BC is flagged"
                 f" degenerate at a length ratio outside {list(DEGENERATE_LENGTH)} or a rate"
                 " above " + ", ".join(
                     f"{label} max({factor:g} x the references', theirs + {margin:g})"
                     for label, factor, margin in DEGENERATE.values()) + ".")
  return "\n".join(lines)


def divergence_flags(rows: Sequence[PolicyRow], split: str = "validation",
                     tolerance: float = 0.0) -> List[Tuple[str, str, List[str]]]:
  """Steps whose training reward rose while a held-out metric fell, against the policy before.

  Each ReST (and filtered-BC) row is compared with the row it was trained from (the
  previous row of its chain, or BC), and BC+ with BC.

  Returns:
    `(policy, previous policy, ["bleu 41.2 -> 40.1", ...])` for every flagged step.
  """
  flags = []
  base = None
  previous: Dict[str, Any] = {}  # per chain (ReST, filtered BC): its last row
  for row in rows:
    role = row.role
    if role == Role.BC:
      base = row
      continue
    before = base if role == Role.BC_PLUS else previous.get(role, base)
    if role != Role.BC_PLUS:
      previous[role] = row
    if before is None:
      continue
    now, then = row.metrics, before.metrics
    key = f"{split}/reward"
    if key not in now or key not in then or now[key] <= then[key] + tolerance:
      continue
    fell = []
    for name, higher_better in HELD_OUT:
      k = f"{split}/{name}"
      if k in now and k in then:
        worse = now[k] < then[k] - tolerance if higher_better else now[k] > then[k] + tolerance
        if worse:
          fell.append(f"{name} {then[k]:.4g} -> {now[k]:.4g}")
    if fell:
      flags.append((row.policy, before.policy, fell))
  return flags


# Degenerate output, every limit relative to the references' own level: a baseline this
# broken makes any comparison with it meaningless (the report opens with a warning). The
# length ratio is already the outputs' words over the references'; a rate is degenerate
# above max(factor x the references' rate, theirs + margin) (`reference_<rate>`, taken as 0
# in metrics recorded before it was).
DEGENERATE_LENGTH = (0.7, 1.3)
DEGENERATE = {"repeated_ngram_rate": ("repeated 3-gram rate", 2.0, 0.05),
              "empty_rate": ("empty rate", 1.0, 0.05),
              "copy_rate": ("copy-of-source rate", 1.0, 0.1)}


def _bc_not_converged(selection: Mapping[str, Any]) -> str:
  """Why BC may not have converged, from its selection summary ('' when it did, or when it
  did not train here: BC_STEPS = 0 from a checkpoint)."""
  best, last = selection.get("best_step"), selection.get("last_step")
  if best is None or not last:
    return ""
  if best == last:
    return (f"BC's validation reward was still rising at its last step (best at step {best}"
            f" of {last}): BC has not converged")
  patience, since = selection.get("patience"), selection.get("since_best")
  if patience is None or since is None or since >= patience:
    return ""  # patience ran out (at or before BC_STEPS), or BC has none to run out
  return (f"BC ran all its BC_STEPS (to step {last}) without its patience running out: its"
          f" best validation reward was at step {best}, {since} evaluation"
          f"{'s' if since != 1 else ''} before the end, fewer than its patience of"
          f" {patience}, so it may still have been improving: BC has not converged")


def warnings(rows, steps, split: str = "validation") -> List[str]:
  """Why the comparison may not be meaningful: a BC that has not converged, or degenerate."""
  out = []
  bc = steps.get("bc", {})
  selection = bc.get("selection", {}) if isinstance(bc, dict) else {}
  why = _bc_not_converged(selection or {})
  if why:
    out.append(f"{why}, and any gain of ReST or a control may be more training. Raise"
               " BC_STEPS (its patience stops it when it has converged).")
  base = next((r for r in rows if r.role == Role.BC), None)
  metrics = base.metrics if base else {}
  broken = []
  ratio = metrics.get(f"{split}/length_ratio")
  low, high = DEGENERATE_LENGTH
  if ratio is not None and not low <= ratio <= high:
    broken.append(f"length ratio {ratio:.3f} (its words over the references')")
  for key, (label, factor, margin) in DEGENERATE.items():
    value = metrics.get(f"{split}/{key}")
    ref = metrics.get(f"{split}/reference_{key}") or 0.0
    if value is not None and value > max(factor * ref, ref + margin):
      broken.append(f"{label} {value:.3f} against the references' {ref:.3f}")
  if broken:
    out.append(
        f"BC's {split} outputs are degenerate ({'; '.join(broken)}; BLEU"
        f" {metrics.get(f'{split}/bleu', float('nan')):.1f}): the baseline itself is broken,"
        " so ReST against it says little. Train BC longer (BC_STEPS) or use a bigger model"
        " (the README's 'Your own corpus' gives the budget a real corpus needs).")
  return out


def headline(rows, summary, splits: Sequence[str], selection_split: str = "validation"
             ) -> List[str]:
  """ReST's margin over the best control chosen on validation (the run summary's
  `best_control`), on every split."""
  chosen = next((r for r in rows if r.selected), None)
  control = rows_lib.find(rows, summary.get("best_control"))
  if chosen is None or control is None:
    return []
  lines = []
  for split in splits:
    parts = []
    for key, name, digits in (("bleu", "BLEU", 2), ("chrf", "chrF", 2),
                              ("held_out_reward", "held-out reward", 4),
                              ("reward", "reward", 4)):
      a, b = chosen.metrics.get(f"{split}/{key}"), control.metrics.get(f"{split}/{key}")
      if a is not None and b is not None:
        parts.append(f"{name} {a - b:+.{digits}f}")
    if parts:
      lines.append(f"- {split}: " + ", ".join(parts))
  out = [f"**ReST ({chosen.policy}) minus the best control on {selection_split}"
         f" ({control.policy}), one seed** (`seeds` gives the spread over seeds):", ""]
  out += lines
  key = f"{selection_split}/reward"
  for role, says in ((Role.FILTERED_BC, "the policy's samples add nothing over filtering the"
                      " data"),
                     (Role.RANDOM_SELECTION, "the reward's choice adds nothing over training on"
                      " the policy's own samples"),
                     (Role.SAMPLES_ONLY, "keeping the original pairs in the grown set"
                      " (the paper's ReST) does not help here")):
    pick = next((r for r in rows if r.arm_selected and r.role == role), None)
    if pick is not None and pick.metrics[key] >= chosen.metrics[key]:
      out += ["", f"{role} ({pick.policy}) matches or beats ReST on {selection_split}:"
              f" {says}."]
  ablation = next((r for r in rows if r.arm_selected
                   and r.role == Role.SAMPLES_ONLY), None)
  if ablation is not None:
    a, b = ablation.metrics, control.metrics
    out += ["", f"The ablation ReST on the samples alone ({ablation.policy}) minus the"
            " best control: " + ", ".join(
                f"{split} BLEU {a[f'{split}/bleu'] - b[f'{split}/bleu']:+.2f}"
                for split in splits if f"{split}/bleu" in a and f"{split}/bleu" in b) + "."]
  if chosen.role == Role.BC:
    out += ["", "ReST selected BC itself: no Improve step beat BC on validation."]
  if not any(r.role == Role.FILTERED_BC for r in rows) and summary.get(
      "reward_reads_references"):
    out += ["", "Filtered BC was not run: the reward reads references, so a reference would"
            " score itself and filtering the original pairs is BC+."]
  return out + [""]


def reward_lines(quality: Mapping[str, Any]) -> List[str]:
  """The learned reward's own held-out agreement with its ratings, flaw by flaw."""
  if not quality:
    return []
  kinds = quality.get("by_kind", {})
  versus = ", ".join(f"{kind} {100 * v['pairwise_vs_correct']:.0f}%"
                     for kind, v in sorted(kinds.items())
                     if kind != "correct" and v.get("pairwise_vs_correct") == v.get(
                         "pairwise_vs_correct"))
  line = (f"- Reward model, on held-out ratings of sources it never trained on: Spearman"
          f" {quality.get('spearman', float('nan')):.3f}, pairwise"
          f" {quality.get('pairwise_accuracy', float('nan')):.3f}")
  if versus:
    line += f"; prefers the correct translation to each kind of candidate: {versus}"
  return [line + "."]


def time_shares(steps: Dict[str, Any]) -> Dict[str, float]:
  """Seconds spent sampling, scoring, writing, training (BC, BC+, Improve) and evaluating."""
  shares = {"sampling": 0.0, "scoring": 0.0, "writing": 0.0, "bc_training": 0.0,
            "controls_training": 0.0, "improve_training": 0.0, "evaluation": 0.0}
  for name, step in steps.items():
    if not isinstance(step, dict):
      continue
    if layout.grow_index(name) is not None:
      shares["sampling"] += step.get("sample_s", 0.0)
      shares["scoring"] += step.get("score_s", 0.0)
      shares["writing"] += step.get("write_s", 0.0)
    elif name == "bc":
      shares["bc_training"] += step.get("seconds", 0.0)
    elif name == layout.BC_PLUS or name.startswith(("filtered_bc_", "samples_only_",
                                                     "random_")):
      shares["controls_training"] += step.get("seconds", 0.0)
    elif layout.is_improve(name):
      shares["improve_training"] += step.get("seconds", 0.0)
    elif name.startswith(("eval_", "test_")):
      shares["evaluation"] += step.get("seconds", 0.0)
  return shares


def _save_figure(fig, path: str) -> None:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  files.atomic_write_bytes(path, buffer.getvalue())


def _plots(model_dir: str, rows, summary, split: str) -> List[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  written = []
  g = 1
  while files.exists(files.join(model_dir, layout.grow_name(g), grown.MANIFEST)):
    directory = files.join(model_dir, layout.grow_name(g))
    rewards = grown.sample_rewards(grown.shard_paths(directory, grown.load_manifest(
        directory, verify_counts=False)))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(rewards, bins=40, color="tab:blue", alpha=0.8)
    for tau in summary.get("thresholds", {}).get(str(g), []):
      ax.axvline(tau, color="tab:red", linestyle="--")
    ax.set_xlabel("reward of a sample")
    ax.set_ylabel("samples")
    ax.set_title(f"Grow step {g}: {rewards.size} samples; Improve thresholds dashed")
    path = files.join(model_dir, layout.rewards_plot(g))
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    written.append(path)
    g += 1
  chain = [r for r in rows if r.role in (Role.BC, Role.REST)]
  if not chain:
    return written
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  x = np.arange(len(chain))
  for ax, (key, title) in zip(axes, (("reward", "training reward"), ("bleu", "BLEU"))):
    values = [r.metrics.get(f"{split}/{key}", np.nan) for r in chain]
    ax.plot(x, values, "o-", label="BC then ReST")
    ax.axhline(values[0], color="grey", linestyle=":", label=Role.BC)
    plus = next((r for r in rows if r.role == Role.BC_PLUS), None)
    if plus is not None:
      ax.axhline(plus.metrics.get(f"{split}/{key}", np.nan), color="tab:orange",
                 linestyle="--", label="BC+ (equal compute)")
    ax.set_ylim(bottom=0)  # from zero: noise must not look like progress
    ax.set_xticks(x, [r.policy.split(" (")[0] for r in chain], rotation=30)
    ax.set_xlabel("policy")
    ax.set_ylabel(f"{title} on {split}")
    ax.legend(fontsize=8)
  fig.tight_layout()
  path = files.join(model_dir, "metrics_per_step.png")
  _save_figure(fig, path)
  plt.close(fig)
  written.append(path)
  return written


def _guard_lines(steps) -> List[str]:
  """Per Grow step, the rows each reward guard fired on (rewards/guards.py)."""
  lines = []
  for name, step in sorted(steps.items()):
    if layout.grow_index(name) is None or not isinstance(step, dict):
      continue
    fired = {k[len("guard_"):]: v for k, v in step.get("counts", {}).items()
             if k.startswith("guard_")}
    if fired:
      lines.append(f"- Grow step {layout.grow_index(name)}: reward guards fired on "
                   + ", ".join(f"{guard} {n}" for guard, n in fired.items())
                   + f" of {step.get('samples', 0)} samples.")
  return lines


def coverage_lines(summary: Mapping[str, Any]) -> List[str]:
  """Per Grow step, the share of the sources the task's coverage check applies to that have
  a sample it finds right (the run summary's "coverage")."""
  return [f"- Grow step {g}: of its sources that the task's coverage check applies to (the"
          f" colour demo: those with a colour before a noun), {100 * share:.1f}% have a sample"
          " it finds right (the colour demo: a sample with the source's colour)."
          for g, share in sorted(summary.get("coverage", {}).items()) if share is not None]


def _ran(rows, role: str) -> str:
  return "run" if any(r.role == role for r in rows) else "not run"


def what_was_run(model, n_params: int, task, lengths, reward, grow, improve, evaluation, rows,
                 steps, summary) -> List[str]:
  """'What was run': the lines a reader needs before the tables (from the stages' results
  `steps` and the run summary)."""
  counts = {split: int(r.metrics.get(f"{split}/examples", 0))
            for r in rows for split in evaluation.splits if f"{split}/examples" in r.metrics}
  cut = {split: int(r.metrics.get(f"{split}/overlength", 0))
         for r in rows for split in evaluation.splits if f"{split}/overlength" in r.metrics}
  sampling = grow.sampling
  bc = steps.get("bc", {})
  bc_sel = bc.get("selection", {}) if isinstance(bc, dict) else {}
  grow_cut = sum(s.get("overlength_sources", 0) for k, s in steps.items()
                 if layout.grow_index(k) is not None and isinstance(s, dict))
  held_out = evaluation.held_out_reward
  lines = [
      "## What was run", "",
      f"- Task `{task}`, feature lengths {dict(lengths)}; evaluated sentences per split:"
      f" {counts}.",
      f"- Model `{type(model).__module__}.{type(model).__name__}`, {n_params:,} parameters.",
      f"- Metrics decode {'greedily' if evaluation.beam_size == 1 else f'with beam {evaluation.beam_size}'};"
      f" best-of-{evaluation.best_of_n} samples at temperature {evaluation.sampling.temperature}.",
      f"- Training reward `{reward.name}` on {list(reward.range)},"
      f" {'reads references' if reward.needs_reference else 'reference-free'};"
      f" held-out reward: {f'`{held_out.name}`' if held_out else 'none'}.",
      *reward_lines(summary.get("reward_quality", {})),
      f"- Grow: G = {grow.steps}, N = {grow.num_samples} samples per source at temperature"
      f" {sampling.temperature}, top-k {sampling.topk or 'off'}, top-p {sampling.topp or 'off'}.",
      f"- Improve: loss `{improve.loss.name}`, {improve.steps} steps of {improve.batch_size}"
      f" per Improve step, optimizer state {improve.optimizer_state}, references"
      f" {improve.references}; thresholds per Grow step"
      f" { {g: [round(t, 3) for t in taus] for g, taus in summary.get('thresholds', {}).items()} }.",
      f"- Selection on validation reward: BC evaluated every few steps, best at step"
      f" {bc_sel.get('best_step')} of {bc_sel.get('last_step')}"
      f"{' (stopped early)' if bc_sel.get('stopped_early') else ''}; each Improve step and"
      f" each control's step keep their best checkpoint; test is evaluated for the selected"
      f" policies only.",
      "- Controls, each with Improve's optimizer steps, learning rate and selection: BC+ (BC"
      " continued on the original pairs, its start a candidate), filtered BC (BC continued"
      " on the original pairs the reward keeps, thresholds"
      f" {[round(t, 3) for t in summary.get('thresholds', {}).get('filtered_bc', [])] or 'not run'})"
      f" and random selection ({_ran(rows, Role.RANDOM_SELECTION)}:"
      " as many of Grow 1's samples as each Improve step keeps, drawn without the reward,"
      " BC's loss). The ablation ReST on the samples alone"
      f" ({_ran(rows, Role.SAMPLES_ONLY)})"
      " is ReST without the original pairs in the grown set. These arms start from BC and"
      " train on Grow 1's rows only: filtered BC and random selection for G x I steps, the"
      " samples-only ablation for Grow 1's I steps (with G > 1, ReST alone samples again).",
      *_guard_lines(steps),
      *[f"- `{name}` was not run: it keeps no rows ({why}); its arm stops there."
        for name, why in sorted(summary.get("empty_steps", {}).items())],
      *coverage_lines(summary),
      f"- Over-long examples cut to the feature lengths: BC training"
      f" {bc.get('overlength_examples', 0) if isinstance(bc, dict) else 0}, Grow sources or"
      f" references {grow_cut}, evaluation {cut}.", ""]
  return lines



def write_report(model_dir: str, rows, steps, summary, evaluation, header: Sequence[str] = (),
                 selection_split: str = "validation") -> str:
  """Writes `report.md` and the plots (from the rows, the stages' results `steps` and
  the run summary); prints and returns the report's summary."""
  n = evaluation.best_of_n
  other = [s for s in evaluation.splits if s != selection_split]
  body = ["# ReST report", ""]
  cautions = warnings(rows, steps, selection_split)
  body += [f"> **Warning:** {w}" for w in cautions] + ([""] if cautions else [])
  top = headline(rows, summary, [selection_split] + other, selection_split)
  body += top + list(header)
  body += [f"## Every policy on {selection_split} (the ReST policy is selected here)", "",
           metrics_table(rows, selection_split, n), ""]
  printed = [f"WARNING: {w}" for w in cautions] + [line for line in top if line]
  for split in other:
    table = metrics_table([r for r in rows if f"{split}/reward" in r.metrics], split, n)
    body += [f"## The selected policies on {split} (never used to choose)", "", table, ""]
    printed.append(f"{split}:\n{table}")
  trains_on = trains_on_table(rows)
  if trains_on:
    body += ["## What each step trains on", "", "The kept rows of its grown dataset: the"
             " training reward's mean and the rows rater's (`ROWS_RATER`; the demo's: the"
             " generator's rater) over them.", "", trains_on, ""]
  body += [f"## Degeneracy ({selection_split})", "", degeneracy_table(rows, selection_split), ""]
  flags = divergence_flags(rows, selection_split)
  body += ["## Reward-hacking watch", ""]
  if flags:
    body += [f"- **{p}** (from {q}): the training reward rose while " + "; ".join(f)
             + " fell" for p, q, f in flags]
  else:
    body.append("- No step raised the training reward while a held-out metric fell.")
  agreement = [(r.policy, r.metrics.get(f"{selection_split}/agreement_spearman"),
                r.metrics.get(f"{selection_split}/agreement_pairwise")) for r in rows
               if f"{selection_split}/agreement_spearman" in r.metrics]
  if agreement:
    body += ["", "Agreement of the training reward with the held-out reward on each policy's"
             f" best-of-{n} samples ({selection_split}):", "",
             "| policy | Spearman | pairwise |", "|---|---|---|"]
    body += [f"| {p} | {_cell(s, 3)} | {_cell(a, 3)} |" for p, s, a in agreement]
  shares = time_shares(steps)
  total = sum(shares.values()) or 1.0
  body += ["", "## Where the time went", "", "| part | time | share |", "|---|---|---|"]
  body += [f"| {k} | {v:.1f} s | {100 * v / total:.1f}% |" for k, v in shares.items()]
  body.append("")
  body += [f"![{os.path.basename(p)}]({os.path.basename(p)})"
           for p in _plots(model_dir, rows, summary, selection_split)]
  files.atomic_write_text(files.join(model_dir, layout.REPORT_FILE), "\n".join(body) + "\n")
  text = "\n".join([f"{selection_split}:\n" + metrics_table(rows, selection_split, n)] + printed)
  print("\n" + text + "\n")
  print("time: " + ", ".join(f"{k} {v:.0f}s ({100 * v / total:.0f}%)" for k, v in shares.items()))
  for p, q, f in flags:
    print(f"WARNING: {p} (from {q}): training reward rose while " + "; ".join(f) + " fell")
  return text
