"""ReST against its controls over several finished `rest` runs (seeds): the `seeds` command.

    python -m rest_jax.main seeds --runs runs/demo_seed0 runs/demo_seed1 ... \
        [--runs runs/blind_seed0 ...]

For each group of runs (`--runs` may be given more than once, e.g. a reward that cannot
see the flaw beside one that can), it prints:

- every seed's row: the test BLEU and chrF of BC, BC+, filtered BC (the control's pick),
  random selection (its pick: a control that keeps as many samples as each ReST step
  keeps, drawn without the reward), the best control (chosen on validation), ReST on the
  policy's samples only (the ablation's pick) and the selected ReST policy, ReST's margin
  over the best control, and the learned reward's own accuracy on the flaw (how often it
  prefers the correct translation to the flawed one, on held-out ratings of sources it
  never trained on); "-" where a run has no such rows;
- the mean and standard deviation (n - 1) over the seeds of each of them, test and
  validation;
- the mean per-seed test margin of ReST over the best control (BLEU and chrF) with its 95%
  Student t-interval over the seeds (n - 1 degrees of freedom). It resamples nothing: each
  seed's margin is one draw, so the interval counts the variance between training seeds
  (and, inside each margin, the test set's), from the few seeds there are;
- when every run has a samples-only pick, the same for ReST minus ReST (samples only);
- the two-level bootstrap 95% percentile interval of ReST minus the best control in corpus
  BLEU and chrF (1,000 resamples, seed 0), from the test outputs `rest` keeps
  (`outputs/`). Each resample draws the seeds with replacement, then the sentence ids of
  the one test set the runs share, with replacement and once for all drawn seeds and both
  arms (the seeds' outputs are of the same sentences, so they are not independent rows);
  its statistic is the mean over the drawn seeds of ReST's corpus score on those sentences
  minus that seed's best control's. It resamples both the training seeds and the test
  sentences;
- the number of seeds in which ReST beats the best control on test BLEU;
- the correlation across seeds of the reward's flaw accuracy with ReST's test margin.
"""

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import sacrebleu
from scipy import stats as scipy_stats

from rest_jax import files, layout, rows as rows_lib
from rest_jax.roles import Role
from rest_jax.rows import PolicyRow

METRICS = (("reward", 4), ("held_out_reward", 4), ("bleu", 2), ("chrf", 2), ("ter", 2),
           ("colour_recall", 3))
BOOTSTRAP_SAMPLES = 1000
SAMPLES_ONLY = Role.SAMPLES_ONLY
RANDOM = Role.RANDOM_SELECTION
# Chains whose pick (their best step on validation, or BC) `rest` names in "arm_selected".
CHAINS = (Role.FILTERED_BC, SAMPLES_ONLY, RANDOM)
# The table's columns, controls first; every one but BC and BC+ is a pick among steps.
# Not a role: the run's best control on validation (BC, BC+, or a control arm's pick).
BEST_CONTROL = "best control"
ROLES = (Role.BC, Role.BC_PLUS, Role.FILTERED_BC, RANDOM, BEST_CONTROL, SAMPLES_ONLY, Role.REST)


def _summary(model_dir: str) -> Dict[str, Any]:
  summary = layout.read_summary(model_dir)
  if summary is None:
    raise FileNotFoundError(f"{layout.state_path(model_dir)} is missing: {model_dir} is not a"
                            " finished rest run")
  if "rows" not in summary:
    raise ValueError(f"{layout.state_path(model_dir)} has no rows: the run has not finished")
  return {**summary, "rows": [PolicyRow.from_json(r) for r in summary["rows"]]}


def _pick(summary: Dict[str, Any], role: str) -> Optional[PolicyRow]:
  """The row that stands for `role` in a run (None if the run has none)."""
  rows = summary["rows"]
  if role == Role.REST:
    return next(r for r in rows if r.selected)
  if role == BEST_CONTROL:
    return rows_lib.find(rows, summary.get("best_control"))
  if role in CHAINS:  # the chain's own pick: its best step, or BC if none beat BC
    pick = summary.get("arm_selected", {}).get(role)
    if pick is None and role == Role.FILTERED_BC:  # runs from before "arm_selected"
      pick = summary.get("filtered_bc_selected")
    return rows_lib.find(rows, pick, role) if pick else None
  return next((r for r in rows if r.role == role), None)


def flaw_accuracy(summary: Dict[str, Any], kind: str = "flawed") -> float:
  """How often the run's learned reward prefers the correct translation to `kind` (nan if
  the reward is not a learned model, or its ratings have no such kind)."""
  by_kind = summary.get("reward_quality", {}).get("by_kind", {})
  return float(by_kind.get(kind, {}).get("pairwise_vs_correct", float("nan")))


def _step_dir(summary: Dict[str, Any], row: PolicyRow) -> str:
  """The folder of a row's policy: the row's "dir", or for older runs from its role and
  label (BC from another run keeps its path)."""
  if row.directory:
    return row.directory
  if row.role == Role.BC:
    return layout.BC
  if row.role == Role.BC_PLUS:
    return layout.BC_PLUS
  if row.selected:
    return summary["selected_dir"]
  if row.role not in (Role.REST, Role.FILTERED_BC):
    raise ValueError(f"the state row of {row.policy!r} ({row.role}) names no folder"
                     " (\"dir\"); re-run `rest` to record it (finished steps are reused)")
  label = row.policy.split(" (")[0]  # "G1 I3" or "filtered BC G1 I3"
  g, i = (int(x[1:]) for x in label.split()[-2:])
  return layout.filtered_bc_name(g, i) if row.role == Role.FILTERED_BC else \
      layout.improve_name(g, i)


def _outputs(model_dir: str, summary: Dict[str, Any], row: PolicyRow, split: str):
  path = layout.outputs_path(model_dir, _step_dir(summary, row), split)
  if not files.exists(path):
    raise FileNotFoundError(f"{path} is missing: {model_dir} was run before `rest` kept its"
                            " test outputs; re-run it (finished steps are reused)")
  return json.loads(files.read_text(path))


def _metrics(tokenize: str):
  return (("bleu", sacrebleu.BLEU(tokenize=tokenize)), ("chrf", sacrebleu.CHRF()))


def sentence_stats(references: Sequence[str], hypotheses: Sequence[str],
                   tokenize: str = "13a") -> Dict[str, np.ndarray]:
  """sacrebleu's sufficient statistics of BLEU and chrF per sentence (what its
  `--paired-bs` resamples): {metric: [sentences, statistics]}; a corpus score is the
  score of their sum over the sentences."""
  # pylint: disable=protected-access
  return {name: np.asarray(metric._extract_corpus_statistics(list(hypotheses),
                                                             [list(references)]), np.float64)
          for name, metric in _metrics(tokenize)}


def _score(metric, summed: np.ndarray) -> float:
  return metric._compute_score_from_stats(list(summed)).score  # pylint: disable=protected-access


def two_level_bootstrap(references: Sequence[str], ours: Sequence[Sequence[str]],
                        theirs: Sequence[Sequence[str]], tokenize: str = "13a",
                        samples: int = BOOTSTRAP_SAMPLES,
                        seed: int = 0) -> Dict[str, List[float]]:
  """Corpus BLEU and chrF of `ours` minus `theirs`, averaged over the seeds, with its 95%
  percentile interval over a two-level bootstrap.

  Each resample draws the seeds with replacement, then the sentence ids with replacement
  once for all of them (the seeds share one test set); its statistic is the mean over the
  drawn seeds of the seed's corpus score of `ours` minus its `theirs` on those sentences.

  Args:
    references: the shared test set's references.
    ours: per seed, the hypotheses (of `references`) of the system measured.
    theirs: per seed, the hypotheses of the system it is measured against.
    tokenize: sacrebleu's BLEU tokenizer.
    samples: the number of resamples.
    seed: the seed of numpy's `default_rng` that draws them.

  Returns:
    {"bleu": [difference, low, high], "chrf": [...]}: the difference over all seeds and
    sentences, and the 2.5th and 97.5th percentiles over the resamples.

  Raises:
    ValueError: if `ours` and `theirs` are not of the same number (> 0) of seeds.
  """
  if not ours or len(ours) != len(theirs):
    raise ValueError(f"{len(ours)} seeds of ours and {len(theirs)} of theirs: give each"
                     " seed's pair of systems (at least one)")
  per_seed = [(sentence_stats(references, a, tokenize), sentence_stats(references, b, tokenize))
              for a, b in zip(ours, theirs)]
  n_seeds, n = len(ours), len(references)
  rng = np.random.default_rng(seed)
  draws = []
  for _ in range(samples):  # seeds first, then the sentences (counts of each id)
    drawn = rng.integers(0, n_seeds, size=n_seeds)
    draws.append((drawn, np.bincount(rng.integers(0, n, size=n), minlength=n)))
  out = {}
  for name, metric in _metrics(tokenize):
    a = np.stack([s[0][name] for s in per_seed])  # [seeds, sentences, statistics]
    b = np.stack([s[1][name] for s in per_seed])

    def margins(weights, a=a, b=b, metric=metric):
      return np.array([_score(metric, weights @ a[k]) - _score(metric, weights @ b[k])
                       for k in range(n_seeds)])

    diffs = [margins(weights)[drawn].mean() for drawn, weights in draws]
    out[name] = [float(margins(np.ones(n)).mean()), float(np.percentile(diffs, 2.5)),
                 float(np.percentile(diffs, 97.5))]
  return out


def t_interval(values: Sequence[float],
               confidence: float = 0.95) -> Optional[Tuple[float, float, float]]:
  """The mean of `values` and its Student t-interval (n - 1 degrees of freedom).

  Args:
    values: one value per seed.
    confidence: the interval's coverage.

  Returns:
    (mean, low, high), or None for fewer than 2 values (the interval is not defined).
  """
  v = np.asarray(values, np.float64)
  if len(v) < 2:
    return None
  half = (scipy_stats.t.ppf((1 + confidence) / 2, len(v) - 1) * np.std(v, ddof=1)
          / np.sqrt(len(v)))
  return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def _mean_sd(values: np.ndarray, digits: int, sign: bool = False) -> str:
  spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
  return f"{np.mean(values):{'+' if sign else ''}.{digits}f} ± {spread:.{digits}f}"


def _margins(summaries: Dict[str, Dict[str, Any]], other: str,
             required: bool = False) -> Optional[Dict[str, np.ndarray]]:
  """Per seed, ReST's test BLEU and chrF minus `other`'s.

  Returns None if a run has no `other` with test metrics, or raises a ValueError naming
  the run if `required`.
  """
  picks = []
  for run, s in summaries.items():
    theirs = _pick(s, other)
    if theirs is None or "test/bleu" not in theirs.metrics:
      if required:
        raise ValueError(f"{layout.state_path(run)} has no test metrics of the {other}")
      return None
    picks.append((_pick(s, Role.REST).metrics, theirs.metrics))
  return {m: np.array([r[f"test/{m}"] - o[f"test/{m}"] for r, o in picks])
          for m in ("bleu", "chrf")}


def _step_label(row: PolicyRow) -> str:
  """A row's step: "G1 I3" (ReST's), "ReST (samples only) G1 I2", "BC"."""
  if not row.grow_step:  # BC, BC+, or a run from before rows held their steps
    return row.policy.split(" (tau=")[0]
  prefix = "" if row.role == Role.REST else f"{row.role} "
  return f"{prefix}G{row.grow_step} I{row.improve_step}"


def _seed_table(summaries: Dict[str, Dict[str, Any]]) -> List[str]:
  """Every seed's row, on test."""
  header = ["run", Role.BC, Role.BC_PLUS, Role.FILTERED_BC, RANDOM, "best control (validation)",
            SAMPLES_ONLY, "ReST (selected)", "ReST - best control", "reward's flaw accuracy"]
  out = ["Test BLEU / chrF per seed:", "", "| " + " | ".join(header) + " |",
         "|" + "---|" * len(header)]
  margins = _margins(summaries, BEST_CONTROL, required=True)
  for k, (run, s) in enumerate(summaries.items()):
    cells = [run]
    for role in ROLES:
      row = _pick(s, role)
      m = row.metrics if row else {}
      cell = (f"{m['test/bleu']:.2f} / {m['test/chrf']:.2f}" if "test/bleu" in m else "-")
      if role not in (Role.BC, Role.BC_PLUS) and row:  # which step was picked
        cell += f" ({_step_label(row)})"
      cells.append(cell)
    cells += [f"{margins['bleu'][k]:+.2f} / {margins['chrf'][k]:+.2f}",
              f"{flaw_accuracy(s):.3f}"]
    out.append("| " + " | ".join(cells) + " |")
  return out + [""]


def _quality(row: Optional[PolicyRow], kind: str) -> str:
  q = ((row.trains_on if row else None) or {}).get(kind)
  if not q or not q["rows"]:
    return "-"
  return f"{q['held_out']:.3f} / {q['reward']:.3f} ({q['rows']})"


def _trains_on_table(summaries: Dict[str, Dict[str, Any]]) -> List[str]:
  """Per seed, what each arm's picked step trained on: the rows rater's mean / the training
  reward's mean (rows) over its kept samples and kept original pairs; and per Grow step the
  share of sources with a sample the task's coverage check finds right."""
  if not any(r.trains_on for s in summaries.values() for r in s["rows"]):
    return []
  roles = (Role.FILTERED_BC, RANDOM, SAMPLES_ONLY, Role.REST)
  header = ["run"] + [f"{role}: {kind}" for role in roles for kind in ("samples", "pairs")
                      if not (role == Role.FILTERED_BC and kind == "samples")
                      and not (role in (RANDOM, SAMPLES_ONLY) and kind == "pairs")]
  cover = any(s.get("coverage") for s in summaries.values())
  header += ["Grow coverage"] if cover else []
  out = ["What each arm's picked step trained on, per seed: rated quality / training reward"
         " (rows):", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for run, s in summaries.items():
    cells = [run, _quality(_pick(s, Role.FILTERED_BC), "references"),
             _quality(_pick(s, RANDOM), "samples"), _quality(_pick(s, SAMPLES_ONLY), "samples"),
             _quality(_pick(s, Role.REST), "samples"), _quality(_pick(s, Role.REST), "references")]
    if cover:
      cells.append(", ".join(f"G{g} {share:.3f}" for g, share in sorted(
          s.get("coverage", {}).items()) if share is not None) or "-")
    out.append("| " + " | ".join(cells) + " |")
  return out + [""]


def _mean_table(summaries: Dict[str, Dict[str, Any]], split: str) -> List[str]:
  """The mean and spread over the seeds of every role every run has, on `split`."""
  present = [(m, d) for m, d in METRICS
             if all(f"{split}/{m}" in _pick(s, Role.REST).metrics for s in summaries.values())]
  out = [f"Mean ± sd over seeds, {split}:", "",
         "| policy | " + " | ".join(m for m, _ in present) + " |", "|---|" + "---|" * len(present)]
  values = {}
  for role in ROLES:
    picked = [_pick(s, role) for s in summaries.values()]
    if any(p is None or f"{split}/{present[0][0]}" not in p.metrics for p in picked):
      continue
    cells = []
    for metric, digits in present:
      v = np.array([p.metrics.get(f"{split}/{metric}", np.nan) for p in picked])
      values[(role, metric)] = v
      cells.append(_mean_sd(v, digits))
    out.append(f"| {role} | " + " | ".join(cells) + " |")
  if (Role.REST, present[0][0]) in values and (BEST_CONTROL, present[0][0]) in values:
    cells = [_mean_sd(values[(Role.REST, m)] - values[(BEST_CONTROL, m)], d, sign=True)
             for m, d in present]
    out.append("| ReST - best control (per seed) | " + " | ".join(cells) + " |")
  return out + [""]


def _t_line(what: str, margins: Dict[str, np.ndarray]) -> str:
  """One line: the mean per-seed margin `what` with its t-interval over the seeds."""
  n = len(margins["bleu"])
  bleu, chrf = t_interval(margins["bleu"]), t_interval(margins["chrf"])
  if bleu is None:
    return (f"Mean per-seed test margin, {what}: BLEU {margins['bleu'].mean():+.2f}, chrF"
            f" {margins['chrf'].mean():+.2f}; t-interval not defined (fewer than 2 seeds).")
  return (f"Mean per-seed test margin, {what} (95% Student t-interval over the {n} seeds,"
          f" {n - 1} dof): BLEU {bleu[0]:+.2f} (95% interval {bleu[1]:+.2f} to"
          f" {bleu[2]:+.2f}), chrF {chrf[0]:+.2f} ({chrf[1]:+.2f} to {chrf[2]:+.2f}).")


def _test_outputs(summaries: Dict[str, Dict[str, Any]]):
  """The shared test references, and per seed ReST's and its best control's hypotheses.

  Raises:
    ValueError: naming the run whose test sentences are not the first run's, or whose
      ReST and best control are of different sentences.
  """
  refs, first, ours, theirs, tokenize = None, None, [], [], "13a"
  for run, s in summaries.items():
    a = _outputs(run, s, _pick(s, Role.REST), "test")
    b = _outputs(run, s, _pick(s, BEST_CONTROL), "test")
    if a["references"] != b["references"]:
      raise ValueError(f"{run}: ReST's and the control's test outputs are of other sentences")
    if refs is None:
      refs, first = a["references"], run
    elif a["references"] != refs:
      raise ValueError(f"{run}: its test references are not those of {first} (the same"
                       " sentences in the same order); the two-level bootstrap draws"
                       " sentence ids once for all seeds, so the runs must share one test set")
    ours.append(a["hypotheses"])
    theirs.append(b["hypotheses"])
    tokenize = a.get("bleu_tokenize", tokenize)
  return refs, ours, theirs, tokenize


def _bootstrap_line(summaries: Dict[str, Dict[str, Any]]) -> str:
  try:
    refs, ours, theirs, tokenize = _test_outputs(summaries)
  except FileNotFoundError as e:
    return f"Two-level bootstrap: not computed ({e})."
  boot = two_level_bootstrap(refs, ours, theirs, tokenize)
  return (f"Two-level bootstrap (seeds, then the {len(refs)} shared test sentences;"
          f" {BOOTSTRAP_SAMPLES} resamples): ReST - best control BLEU {boot['bleu'][0]:+.2f}"
          f" (95% interval {boot['bleu'][1]:+.2f} to {boot['bleu'][2]:+.2f}), chrF"
          f" {boot['chrf'][0]:+.2f} ({boot['chrf'][1]:+.2f} to {boot['chrf'][2]:+.2f}).")


def _wins_and_correlation(summaries: Dict[str, Dict[str, Any]]) -> List[str]:
  margins = _margins(summaries, BEST_CONTROL, required=True)["bleu"]
  out = [f"ReST beats the best control on test BLEU in {sum(margins > 0)} of {len(margins)}"
         " seeds."]
  acc = np.array([flaw_accuracy(s) for s in summaries.values()])
  if len(margins) > 2 and np.all(np.isfinite(acc)) and np.std(acc) > 0 and np.std(margins) > 0:
    out.append(f"Correlation across seeds of the reward's flaw accuracy with ReST's test BLEU"
               f" margin: Pearson {np.corrcoef(acc, margins)[0, 1]:+.2f}.")
  else:
    out.append("Correlation of the reward's flaw accuracy with the margin: not defined (fewer"
               " than 3 seeds, no learned reward, or no spread).")
  return out


def summarize_group(runs: Sequence[str], label: str = "") -> str:
  """The tables and statistics of one group of runs (see the module docstring)."""
  summaries = {run: _summary(run) for run in runs}
  reward_names = sorted({s.get("reward_name", "") for s in summaries.values()} - {""})
  out = [f"## {label or 'runs'}: {len(runs)} seeds" + (f" (reward {', '.join(reward_names)})"
                                                        if reward_names else ""), ""]
  out += _seed_table(summaries) + _trains_on_table(summaries)
  out += _mean_table(summaries, "test") + _mean_table(summaries, "validation")
  out.append(_t_line("ReST - best control", _margins(summaries, BEST_CONTROL, required=True)))
  samples_only = _margins(summaries, SAMPLES_ONLY)
  if samples_only is not None:
    out.append(_t_line(f"ReST - {SAMPLES_ONLY}", samples_only))
  out.append(_bootstrap_line(summaries))
  out += _wins_and_correlation(summaries)
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
