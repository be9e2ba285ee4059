"""Evaluation of a policy that a reward cannot flatter.

For a split of a task, each evaluated policy reports:

- `reward`: the training reward of its greedy (or beam) translations;
- held-out metrics that are not the training reward: `bleu`, `chrf`, `ter` against
  the references, and `held_out_reward` when a second reward is configured;
- degeneracy rates (`data.corpus_metrics.degeneracy`, words split by the target language's
  tokenizer): `length_ratio`, `repeated_ngram_rate`, `empty_rate`, `copy_rate`, and the
  references' own (`reference_*`) that a report's limits start from;
- best-of-N: N samples per source (the run's sampling configuration), the one a
  *reference-free* reward prefers kept (`best_of_N_*`; the training reward when it
  reads no reference, else `EvalConfig.reranker`), and apart, labelled as such,
  the reference-based oracle (`oracle_best_of_N_*`: reranked by a reward that reads
  the test reference, which no deployed system can do);
- with a held-out reward, how well the training reward agrees with it on the
  policy's own samples (`agreement_spearman`, `agreement_pairwise`): a reward that
  drifts from the held-out one as the policy changes is being hacked;
- the task's source-aware metrics of the greedy (or beam) translations, where it
  registered any (`data.corpus_metrics.register_source_metric`; the colour demo's
  `colour_recall`);
- `examples` evaluated and `overlength` inputs or references cut to the lengths.
"""

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import scipy.stats

from rest_jax import faults, inference, partitioning, sampling as sampling_lib
from rest_jax.data import corpus_metrics as metrics_lib
from rest_jax.rewards import Reward


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """How every policy of a `rest` run is evaluated (gin: `policy_eval.EvalConfig`).

  Attributes:
    splits: evaluated after BC and after every Improve step.
    max_examples: cap per split (None: the whole split).
    beam_size: beam of the main decode (1 = greedy).
    best_of_n: N of best-of-N (samples drawn with `sampling`); 1 = off.
    sampling: how best-of-N samples (the run's SAMPLING).
    batch_size: sources per decoding batch.
    held_out_reward: a second reward, not trained on, reported beside the training
      reward (e.g. the demo's rater).
    reranker: a reference-free reward that picks best-of-N when the training reward
      reads references (None: only the oracle column then).
  """

  splits: Sequence[str] = ("validation", "test")
  max_examples: Optional[int] = None
  beam_size: int = 1
  best_of_n: int = 4
  sampling: sampling_lib.SamplingConfig = sampling_lib.SamplingConfig()
  batch_size: int = 64
  held_out_reward: Optional[Reward] = None
  reranker: Optional[Reward] = None

  @property
  def selection(self) -> "EvalConfig":
    """What selection on validation reads (the greedy or beam output's training reward,
    `PolicyEvaluator.validation_reward`): this config less what only the report shows.
    A training step's record holds it: it picks the step's checkpoint."""
    return dataclasses.replace(self, splits=(), best_of_n=1, sampling=None,
                               held_out_reward=None, reranker=None)


class PolicyEvaluator:
  """Compiled decoders for one model, mesh and batch size, reused across evaluations."""

  def __init__(self, model, partitioner: partitioning.Partitioner, params_sharding: Any,
               reward: Reward, config: EvalConfig = EvalConfig(), seed: int = 0):
    self.model = model
    self.reward = reward
    self.config = config
    self.seed = seed
    self._bleu = metrics_lib.bleu
    self.last_outputs: Dict[str, Any] = {}
    self.reranker = reward if not reward.needs_reference else config.reranker
    if self.reranker is not None and self.reranker.needs_reference:
      raise ValueError(f"EvalConfig.reranker '{self.reranker.name}' reads references; best-of-N"
                       " must be picked without them (the oracle column does that)")
    # The oracle reranks with a reward that reads the reference.
    self.oracle = reward if reward.needs_reference else (
        config.held_out_reward if config.held_out_reward is not None
        and config.held_out_reward.needs_reference else None)
    self.beam = inference.PolicyDecoder(model, partitioner, params_sharding, config.beam_size)
    self._source_batches: Dict[Any, List[Dict[str, Any]]] = {}
    self.sampler = None
    if config.best_of_n > 1:
      self.sampler = inference.PolicyDecoder(model, partitioner, params_sharding,
                                             config.best_of_n, config.sampling)

  def _decode(self, params, batch, length) -> List[str]:
    dummy = np.zeros((len(batch["valid"]), self.beam.num_decodes, 2), np.uint32)
    out = self.beam.decode_global(params, batch["encoder_input_tokens"], length, dummy)
    texts = inference.decode_texts(self.model.output_vocabulary, out["tokens"][:, -1:])
    return [t[0] for t in texts[: int(batch["valid"].sum())]]

  def _batches(self, task_name: str, split: str, feature_lengths: Mapping[str, int],
                max_examples: Optional[int]) -> List[Dict[str, Any]]:
    """A split's source batches, read once per evaluator: selection evaluates the same
    split every few steps, and reading it through seqio took 0.5 s of each 2 s."""
    key = (task_name, split, tuple(sorted(feature_lengths.items())), max_examples)
    if key not in self._source_batches:
      self._source_batches[key] = list(inference.source_batches(
          task_name, split, feature_lengths, self.config.batch_size, 0, max_examples))
    return self._source_batches[key]

  def validation_reward(self, params, task_name: str, split: str,
                        feature_lengths: Mapping[str, int],
                        max_examples: Optional[int] = None) -> float:
    """The mean training reward of the greedy (beam) output: what selection maximises."""
    sources, hyps, refs = [], [], []
    for batch in self._batches(task_name, split, feature_lengths, max_examples):
      faults.point("eval.batch")
      hyps += self._decode(params, batch, feature_lengths["targets"])
      sources += batch["inputs"]
      refs += batch["targets"]
    return float(np.mean(self.reward(sources, hyps, refs)))

  def __call__(self, params, task_name: str, split: str, feature_lengths: Mapping[str, int],
               max_examples: Optional[int] = None) -> Dict[str, float]:
    n = self.config.best_of_n
    length = feature_lengths["targets"]
    sources, references, hyps, samples, overlength = [], [], [], [], 0
    for batch in self._batches(task_name, split, feature_lengths, max_examples):
      faults.point("eval.batch")
      valid = int(batch["valid"].sum())
      overlength += batch["overlength"]
      hyps += self._decode(params, batch, length)
      sources += batch["inputs"]
      references += batch["targets"]
      if self.sampler is not None:
        keys = inference.sample_keys(self.seed, 10**6, batch["source_id"], n)
        out = self.sampler.decode_global(params, batch["encoder_input_tokens"], length, keys)
        samples += inference.decode_texts(self.model.output_vocabulary, out["tokens"])[:valid]
    self._bleu = metrics_lib.task_bleu(task_name)  # the target language's tokenizer
    # The greedy (or beam) outputs themselves, for paired tests over sentences (`seeds`).
    self.last_outputs = {"sources": sources, "references": references, "hypotheses": hyps,
                         "bleu_tokenize": getattr(self._bleu, "keywords", {}).get(
                             "tokenize", "13a")}
    results = self._scores(sources, hyps, references, "")
    results.update(metrics_lib.degeneracy(  # words split as the target language needs
        sources, references, hyps, tokenize=metrics_lib.task_word_tokenizer(task_name)))
    results.update(metrics_lib.source_metrics(task_name, sources, references, hyps))
    if samples:
      # Each reward scores the N samples once; reranking, the picked samples' rewards and
      # the agreement all read these scores (a learned or MetricX reward is the expensive
      # part of an evaluation).
      flat = [s for row in samples for s in row]
      flat_sources = inference.repeat_for(sources, n)
      flat_refs = inference.repeat_for(references, n)
      held_out = self.config.held_out_reward
      scored: Dict[int, np.ndarray] = {}

      def sample_scores(reward: Reward) -> np.ndarray:
        if id(reward) not in scored:
          scored[id(reward)] = reward(flat_sources, flat, flat_refs).reshape(len(sources), n)
        return scored[id(reward)]

      rows = np.arange(len(sources))
      for prefix, ranker in ((f"best_of_{n}_", self.reranker),
                             (f"oracle_best_of_{n}_", self.oracle)):
        if ranker is None:
          continue
        picked = np.argmax(sample_scores(ranker), axis=1)
        best = [row[i] for row, i in zip(samples, picked)]
        results.update(self._scores(
            sources, best, references, prefix,
            reward=sample_scores(self.reward)[rows, picked],
            held_out_reward=None if held_out is None else sample_scores(held_out)[rows, picked]))
      if held_out is not None:
        results.update(reward_agreement(sample_scores(self.reward).ravel(),
                                        sample_scores(held_out).ravel(),
                                        np.repeat(rows, n)))
    results["examples"] = float(len(references))
    results["overlength"] = float(overlength)
    return results

  def _scores(self, sources, hyps, refs, prefix: str, reward: Optional[np.ndarray] = None,
              held_out_reward: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Reward, BLEU, chrF (and TER, held-out reward) of `hyps`; `reward` and
    `held_out_reward` are their scores when already computed."""
    if reward is None:
      reward = self.reward(sources, hyps, refs)
    out = {f"{prefix}reward": float(np.mean(reward))}
    out.update({f"{prefix}{k}": v for k, v in self._bleu(refs, hyps).items()})
    out.update({f"{prefix}{k}": v for k, v in metrics_lib.chrf(refs, hyps).items()})
    if not prefix:
      out.update(metrics_lib.ter(refs, hyps))
    if self.config.held_out_reward is not None:
      if held_out_reward is None:
        held_out_reward = self.config.held_out_reward(sources, hyps, refs)
      out[f"{prefix}held_out_reward"] = float(np.mean(held_out_reward))
    return out


def reward_agreement(reward: np.ndarray, held_out: np.ndarray,
                     groups: np.ndarray) -> Dict[str, float]:
  """Spearman correlation of two rewards, and how often they order a source's samples alike.

  `agreement_pairwise` is over pairs of samples of one source that the held-out
  reward tells apart.
  """
  right = total = 0
  for g in np.unique(groups):
    idx = np.flatnonzero(groups == g)
    for a in idx:
      for b in idx:
        if held_out[a] > held_out[b]:
          total += 1
          right += reward[a] > reward[b]
  spearman = scipy.stats.spearmanr(reward, held_out).statistic if np.std(held_out) > 0 and \
      np.std(reward) > 0 else float("nan")
  return {"agreement_spearman": float(spearman),
          "agreement_pairwise": float(right / total) if total else float("nan")}
