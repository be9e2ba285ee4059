"""A learned reward model (Metric X-style regression), its training, and its use as a reward.

The network is a small T5 encoder over `source EOS hypothesis EOS [reference EOS]`,
mean-pooled, followed by a two-layer head with a sigmoid: a score in [0, 1].
With `use_reference=False` it is a quality-estimation (reference-free) model.

`RewardModel` offers the parts of the t5x model API that `Trainer` uses
(`get_initial_variables`, `loss_fn`), so training reuses the sharded train step,
orbax checkpoints and resume of the policy trainer. `LearnedReward` loads a
trained model directory and scores batches with a jitted, data-sharded forward.
"""

import dataclasses
import hashlib
import json
import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from absl import logging
from clu import metrics as clu_metrics
from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats
import seqio

from rest_jax import checkpoints, loop, partitioning, preemption, trainer as trainer_lib
from rest_jax.models import layers, network
from rest_jax.rewards import members as members_lib
from rest_jax.rewards.base import Reward

CONFIG_FILE = "reward_model.json"


@dataclasses.dataclass(frozen=True)
class RewardModelConfig:
  # None: the vocabulary's size rounded up to a multiple of 128 (`train_reward_model`).
  vocab_size: int | None = None
  emb_dim: int = 128
  num_heads: int = 4
  head_dim: int = 32
  mlp_dim: int = 256
  num_layers: int = 2
  dropout_rate: float = 0.0
  max_length: int = 128
  use_reference: bool = True
  eos_id: int = 1
  # Tokens per segment (source, hypothesis[, reference]). None: the task's feature
  # lengths when `train_reward_model` is given them, else an equal share of `max_length`.
  segment_lengths: Tuple[int, ...] | None = None
  # Also max-pool the hypothesis's encodings (a local error shows; a mean hides it).
  max_pool: bool = False
  # Also give the head each segment's length (log token counts) and their log ratio.
  length_features: bool = False

  def __post_init__(self):
    if self.segment_lengths is not None:
      lengths = tuple(int(n) for n in self.segment_lengths)
      if len(lengths) != (3 if self.use_reference else 2):
        raise ValueError(f"segment_lengths {lengths}: one per segment (source, hypothesis"
                         f"{', reference' if self.use_reference else ''})")
      object.__setattr__(self, "segment_lengths", lengths)
      object.__setattr__(self, "max_length", sum(lengths))

  def shares(self) -> Tuple[int, ...]:
    segments = 3 if self.use_reference else 2
    return self.segment_lengths or (self.max_length // segments,) * segments

  def encoder_config(self) -> network.T5Config:
    return network.T5Config(
        vocab_size=self.vocab_size, emb_dim=self.emb_dim, num_heads=self.num_heads,
        head_dim=self.head_dim, mlp_dim=self.mlp_dim, num_encoder_layers=self.num_layers,
        num_decoder_layers=0, dropout_rate=self.dropout_rate)


class RewardNetwork(nn.Module):
  config: RewardModelConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, enable_dropout: bool = False) -> jax.Array:
    cfg = self.config.encoder_config()
    embed = layers.Embed(cfg.vocab_size, cfg.emb_dim, name="token_embedder")
    encoded = network.Encoder(cfg, shared_embedding=embed, name="encoder")(
        tokens, deterministic=not enable_dropout)
    # Mean-pool each segment (source, hypothesis, reference: split at EOS) and
    # compare them explicitly, as siamese quality models do.
    eos = tokens == self.config.eos_id
    segment = jnp.cumsum(eos, axis=1) - eos
    pooled = []
    for k in range(3 if self.config.use_reference else 2):
      mask = ((segment == k) & (tokens > 0)).astype(encoded.dtype)[..., None]
      pooled.append(jnp.sum(encoded * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0))
    other = pooled[2] if self.config.use_reference else pooled[0]
    features = [*pooled, pooled[1] * other, jnp.abs(pooled[1] - other)]
    if self.config.length_features:
      # Under- and over-translation change a hypothesis's length against its source's
      # (quality-estimation systems have long used such counts).
      counts = [jnp.sum((segment == k) & (tokens > 0), axis=1).astype(encoded.dtype)
                for k in range(len(pooled))]
      logs = [jnp.log1p(c) for c in counts]
      features.append(jnp.stack(logs + [logs[1] - logs[0]], axis=-1))
    if self.config.max_pool:
      # A mean over a sentence drowns one wrong word; the most salient position of the
      # hypothesis (after attending to the source) does not.
      hyp = ((segment == 1) & (tokens > 0))[..., None]
      features.append(jnp.max(jnp.where(hyp, encoded, -1e4), axis=1))
    features = jnp.concatenate(features, -1)
    hidden = nn.gelu(layers.DenseGeneral(cfg.mlp_dim, ("embed", "mlp"), name="head_hidden")(
        features))
    return layers.DenseGeneral(1, ("mlp", "embed"), name="head_out")(hidden)[..., 0]


class RewardModel:
  """Regression model with the parts of the t5x model API the `Trainer` uses.

  The loss is the squared error of the predicted score (a sigmoid of the network's
  logit), plus, with `ranking_weight`, a pairwise logistic loss between the
  candidates of one source in a batch (`group`) that the ratings order: it puts the
  model's capacity on the differences raters see between translations of one
  source (one wrong article), which a regression over all sources dilutes.
  """

  def __init__(self, config: RewardModelConfig, vocabulary: seqio.Vocabulary,
               optimizer_def: optax.GradientTransformation | None = None,
               ranking_weight: float = 0.0):
    self.config = config
    self.vocabulary = vocabulary
    self.module = RewardNetwork(config)
    self.optimizer_def = optimizer_def or optax.adamw(1e-3)
    self.ranking_weight = float(ranking_weight)
    self.overlength = 0  # segments `tokenize` had to cut

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    del input_types
    tokens = jnp.ones(input_shapes["tokens"], jnp.int32)
    return dict(self.module.init({"params": rng, "dropout": rng}, tokens))

  def predict(self, params, tokens: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(self.module.apply({"params": params}, tokens))

  def loss_fn(self, params, batch, dropout_rng):
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    logits = self.module.apply({"params": params}, batch["tokens"],
                               enable_dropout=rngs is not None, rngs=rngs)
    scores = jax.nn.sigmoid(logits)
    target = batch["target_score"]
    weights = batch.get("weights", jnp.ones_like(scores))
    error = (scores - target) * weights
    count = jnp.maximum(jnp.sum(weights), 1.0)
    loss = jnp.sum(error * error) / count
    metrics = {"mae": clu_metrics.Average(total=jnp.sum(jnp.abs(error)), count=count)}
    if self.ranking_weight and "group" in batch:
      same = batch["group"][:, None] == batch["group"][None, :]
      ordered = same & (target[:, None] > target[None, :]) & (weights[:, None] > 0) & (
          weights[None, :] > 0)
      pair_loss = jax.nn.softplus(-(logits[:, None] - logits[None, :]))
      pairs = jnp.maximum(jnp.sum(ordered), 1.0)
      ranking = jnp.sum(jnp.where(ordered, pair_loss, 0.0)) / pairs
      loss = loss + self.ranking_weight * ranking
      metrics["ranking_loss"] = clu_metrics.Average(total=ranking, count=jnp.array(1, jnp.int32))
    metrics["loss"] = clu_metrics.Average(total=loss, count=jnp.array(1, jnp.int32))
    return loss, metrics

  def tokenize(self, sources: Sequence[str], hypotheses: Sequence[str],
               references: Sequence[str]) -> np.ndarray:
    """`[batch, max_length]` ids of `source EOS hypothesis EOS [reference EOS]`.

    Each segment gets its `segment_lengths` (or an equal share of the length); a
    longer one is cut, and counted in `self.overlength` (what a reward cannot see
    it cannot score).
    """
    shares = self.config.shares()
    eos = self.vocabulary.eos_id
    out = np.zeros((len(hypotheses), self.config.max_length), np.int32)
    for i, (s, h, r) in enumerate(zip(sources, hypotheses, references)):
      ids: List[int] = []
      for part, share in zip([s, h, r], shares):
        piece = list(self.vocabulary.encode(part))
        self.overlength += int(len(piece) > share - 1)
        ids += piece[: share - 1] + [eos]
      out[i, : len(ids)] = ids
    return out


def _vocabulary_spec(vocabulary: seqio.Vocabulary) -> Dict[str, Any]:
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    vocabulary.encode("")  # make sure the model file exists (lazy vocabularies train it)
    return {"kind": "sentencepiece", "path": os.path.abspath(vocabulary.sentencepiece_model_file)}
  if isinstance(vocabulary, seqio.ByteVocabulary):
    return {"kind": "byte"}
  raise ValueError(f"the reward model cannot record vocabulary {type(vocabulary).__name__}")


def _vocabulary_from_spec(spec: Dict[str, Any]) -> seqio.Vocabulary:
  if spec["kind"] == "sentencepiece":
    return seqio.SentencePieceVocabulary(spec["path"])
  return seqio.ByteVocabulary()


class RatingsError(ValueError):
  """A malformed ratings file line."""


def read_ratings(path: str, with_kinds: bool = False):
  """Reads a ratings TSV: source, hypothesis, reference, score[, kind] (one per line).

  Returns:
    `(sources, hypotheses, references, scores)`, and the kinds ("" where a line
    has none) with `with_kinds`.
  """
  sources, hypotheses, references, scores, kinds = [], [], [], [], []
  with open(path, encoding="utf-8", errors="strict") as f:
    for number, line in enumerate(f, start=1):
      fields = line.rstrip("\n").split("\t")
      if len(fields) not in (4, 5):
        raise RatingsError(f"{path}:{number}: expected 4 tab-separated columns (source,"
                           f" hypothesis, reference, score) and maybe a kind, found"
                           f" {len(fields)}")
      try:
        score = float(fields[3])
      except ValueError:
        raise RatingsError(f"{path}:{number}: score {fields[3]!r} is not a number") from None
      if not np.isfinite(score):
        raise RatingsError(f"{path}:{number}: score {score} is not finite")
      sources.append(fields[0])
      hypotheses.append(fields[1])
      references.append(fields[2])
      scores.append(score)
      kinds.append(fields[4] if len(fields) == 5 else "")
  if not scores:
    raise RatingsError(f"{path}: no ratings")
  out = (sources, hypotheses, references, np.asarray(scores, np.float32))
  return out + (kinds,) if with_kinds else out


def _held_out(sources: Sequence[str], fraction: float) -> np.ndarray:
  """Held-out mask by source text, so one source's ratings stay on one side."""
  import zlib  # pylint: disable=g-import-not-at-top

  return np.array([zlib.crc32(s.encode()) % 1000 < fraction * 1000 for s in sources])


def train_reward_model(
    *,
    ratings_file: str,
    model_dir: str,
    vocabulary: seqio.Vocabulary,
    config: RewardModelConfig | None = None,
    train_steps: int = 2000,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    eval_fraction: float = 0.1,
    checkpoint_period: int = 500,
    partitioner: partitioning.Partitioner | None = None,
    seed: int = 0,
    ranking_weight: float = 0.0,
    vocabulary_file: str | None = None,
    task_feature_lengths: Mapping[str, int] | None = None,
    policy_ratings_file: str | None = None,
    progress_bar: bool = True,
    ensemble_size: int = 1,
) -> Dict[str, Any]:
  """Trains a reward model on a ratings file; resumes from `model_dir` if present.

  It trains in the same loop as BC and Improve (`rest_jax.loop`): a SIGTERM saves the
  step and stops, and the same command continues bit for bit. With `ensemble_size` K > 1
  it trains K models on the same ratings (in `model_dir/member_<k>`, seeds `seed * K + k`:
  their own initialisation and data order) and the reward is their mean; the held-out
  metrics are the ensemble's.

  `ranking_weight` adds a pairwise loss between the candidates of one source (see
  `RewardModel`). `vocabulary_file`, a SentencePiece model (the task's), replaces
  `vocabulary`; with `config.vocab_size` None the embedding follows its size. With
  `config.segment_lengths` None, `task_feature_lengths` (the policy's
  TASK_FEATURE_LENGTHS) give them: inputs for the source, targets for the hypothesis
  and the reference, so the reward sees what the policy can write.

  Returns:
    Held-out metrics (also in `model_dir/reward_model.json` and the log): `spearman`
    (rank correlation with the ratings), `pearson`, `mae`, `pairwise_accuracy` (share
    of same-source pairs ranked rightly), `overlength_segments` (segments cut), `by_kind`
    (per kind of candidate, when the ratings name kinds), `degenerate` (per kind of
    `ratings.degenerate_variants` of the held-out correct translations: how often it
    scores below the correct one) and, with `policy_ratings_file` (ratings of a
    policy's samples, `ratings.build_policy_ratings_file`; never trained on),
    `policy_samples`: the same agreement figures on them.
  """
  if vocabulary_file:
    vocabulary = seqio.SentencePieceVocabulary(vocabulary_file)
  config = config or RewardModelConfig()
  if config.segment_lengths is None and task_feature_lengths:
    lengths = (task_feature_lengths["inputs"], task_feature_lengths["targets"])
    config = dataclasses.replace(
        config, segment_lengths=lengths + lengths[1:] * config.use_reference)
  if config.vocab_size is None:  # the reward model reads the task's vocabulary as it is
    config = dataclasses.replace(config, vocab_size=-(-vocabulary.vocab_size // 128) * 128)
  if config.vocab_size < vocabulary.vocab_size:
    raise ValueError(f"RewardModelConfig.vocab_size {config.vocab_size} is smaller than the"
                     f" vocabulary ({vocabulary.vocab_size})")
  sources, hypotheses, references, scores, kinds = read_ratings(ratings_file, with_kinds=True)
  model = RewardModel(config, vocabulary, optax.adamw(learning_rate), ranking_weight)
  tokens = model.tokenize(sources, hypotheses, references)
  if model.overlength:
    logging.warning("%s: %d segments were longer than RewardModelConfig.segment_lengths %s"
                    " and were cut", ratings_file, model.overlength, config.shares())
  held = _held_out(sources, eval_fraction)
  if held.all() or not held.any():
    raise ValueError(f"{ratings_file}: eval_fraction {eval_fraction} leaves no train or eval rows")
  train_idx, eval_idx = np.flatnonzero(~held), np.flatnonzero(held)

  partitioner = partitioner or partitioning.Partitioner()
  trainer = trainer_lib.Trainer(model, partitioner, {"tokens": (batch_size, config.max_length)})
  source_ids = {s: i for i, s in enumerate(dict.fromkeys(sources))}
  group = np.array([source_ids[s] for s in sources], np.int32)

  # One model, or an ensemble of `ensemble_size` trained on the same ratings from other
  # initialisations and data orders (seeds `seed * ensemble_size + k`), averaged. On a
  # one-device mesh the members train concurrently (as they score: `members.map_members`), each
  # bit for bit as it would alone, their checkpoints written one at a time.
  threaded = ensemble_size > 1 and partitioner.mesh.devices.size == 1

  def train_member(k: int):
    member_dir = _member_dir(model_dir, k, ensemble_size)
    member_seed = seed * ensemble_size + k if ensemble_size > 1 else seed
    ckpt = (members_lib.TakingTurns if threaded else checkpoints.Checkpointer)(
        member_dir, save_every=checkpoint_period, keep=2)
    if ckpt.latest_step() is not None:
      state = ckpt.restore(trainer.abstract_state)
    else:
      state = trainer.init_state(jax.random.PRNGKey(member_seed))
    start = int(jax.device_get(state.step))

    def batches():
      """The batches from the state's step on: each epoch's order depends only on (seed,
      epoch), so a resumed run sees the same batches. A source's candidates stay together
      (one after the other) so the ranking loss sees them in one batch."""
      per_epoch = max(1, len(train_idx) // batch_size)
      order_epoch, order = None, None  # built once per epoch (per step: 19 s of 800)
      for step in range(start, train_steps):
        epoch, offset = divmod(step, per_epoch)
        if epoch != order_epoch:
          order_epoch = epoch
          order = _epoch_order(train_idx, group,
                               np.random.RandomState(member_seed * 100003 + epoch))
        rows = order[offset * batch_size:(offset + 1) * batch_size]
        yield {"tokens": tokens[rows], "target_score": scores[rows], "group": group[rows]}

    name = "reward model" if ensemble_size == 1 else (
        f"reward model ({ensemble_size} members)" if threaded
        else f"reward model {k + 1}/{ensemble_size}")
    job = loop.Job(name, trainer, state, batches(), train_steps, ckpt,
                   jax.random.PRNGKey(member_seed + 1), "reward_model.step")
    bar = progress_bar and not (threaded and k > 0)  # threaded: the first member's bar
    return loop.run(job, loop.Hooks(progress_bar=bar)).state.params

  # A member that fails or is preempted, or Ctrl-C, stops the others at their next step
  # (each saves it first, as a preempted loop does).
  members = members_lib.map_members(train_member, ensemble_size, partitioner,
                         on_failure=preemption.request)
  scorer = Scorer(model, partitioner, trainer.params_sharding, batch_size)

  def predictor(token_rows):
    return np.mean(members_lib.map_members(lambda k: scorer(members[k], token_rows), len(members),
                                partitioner), axis=0)

  predicted = predictor(tokens[eval_idx])
  metrics = evaluate_ranking(predicted, scores[eval_idx], [sources[i] for i in eval_idx])
  metrics["overlength_segments"] = int(model.overlength)
  if any(kinds):
    metrics["by_kind"] = agreement_by_kind(predicted, scores[eval_idx],
                                           [sources[i] for i in eval_idx],
                                           [kinds[i] for i in eval_idx])
  metrics["degenerate"] = degenerate_agreement(
      lambda s, h, r: predictor(model.tokenize(s, h, r)),
      [sources[i] for i in eval_idx], [hypotheses[i] for i in eval_idx],
      [references[i] for i in eval_idx], scores[eval_idx], seed)
  if policy_ratings_file:
    p_sources, p_hypotheses, p_references, p_scores = read_ratings(policy_ratings_file)
    p_predicted = predictor(model.tokenize(p_sources, p_hypotheses, p_references))
    metrics["policy_samples"] = evaluate_ranking(p_predicted, p_scores, p_sources)
    metrics["policy_samples"]["ratings_file"] = os.path.abspath(policy_ratings_file)
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, CONFIG_FILE), "w") as f:
      json.dump({"config": dataclasses.asdict(config),
                 "vocabulary": _vocabulary_spec(vocabulary),
                 "ratings_file": os.path.abspath(ratings_file),
                 "held_out": metrics, "train_steps": train_steps,
                 "ensemble_size": ensemble_size}, f, indent=2)
  logging.info("reward model held-out metrics: %s", metrics)
  return metrics


def _epoch_order(indices: np.ndarray, group: np.ndarray, rng: np.random.RandomState):
  """`indices` shuffled by source group, each group's rows kept together."""
  by_group: Dict[int, List[int]] = {}
  for i in indices:
    by_group.setdefault(int(group[i]), []).append(int(i))
  keys = list(by_group)
  rng.shuffle(keys)
  return np.array([i for k in keys for i in by_group[k]], np.int64)


def evaluate_ranking(predicted: np.ndarray, target: np.ndarray,
                     groups: Sequence[str]) -> Dict[str, float]:
  """Correlations with the ratings and pairwise ranking accuracy within each group."""
  correct = total = 0
  by_group: Dict[str, List[int]] = {}
  for i, g in enumerate(groups):
    by_group.setdefault(g, []).append(i)
  for idx in by_group.values():
    for a in idx:
      for b in idx:
        if target[a] > target[b]:
          total += 1
          correct += predicted[a] > predicted[b]
  return {
      "spearman": float(scipy.stats.spearmanr(predicted, target).statistic),
      "pearson": float(np.corrcoef(predicted, target)[0, 1]),
      "mae": float(np.mean(np.abs(predicted - target))),
      "pairwise_accuracy": float(correct / total) if total else float("nan"),
      "examples": int(len(target)),
  }


def agreement_by_kind(predicted: np.ndarray, target: np.ndarray, groups: Sequence[str],
                      kinds: Sequence[str], reference_kind: str = "correct") -> Dict[str, Any]:
  """Per kind of candidate: mean rating and prediction, and how often it is ranked right.

  `pairwise_vs_correct` is the share of a source's (correct, this kind) pairs, among
  those the ratings tell apart, that the model orders as the ratings do.
  """
  best: Dict[str, int] = {}
  for i, (g, k) in enumerate(zip(groups, kinds)):
    if k == reference_kind:
      best[g] = i
  out = {}
  for kind in sorted(set(kinds)):
    idx = [i for i, k in enumerate(kinds) if k == kind]
    right = total = 0
    for i in idx:
      j = best.get(groups[i])
      if j is None or j == i or target[j] == target[i]:
        continue
      total += 1
      right += (predicted[j] > predicted[i]) == (target[j] > target[i])
    out[kind] = {"count": len(idx), "mean_rating": float(np.mean(target[idx])),
                 "mean_predicted": float(np.mean(predicted[idx])),
                 "pairwise_vs_correct": float(right / total) if total else float("nan")}
  return out


def degenerate_agreement(predict, sources: Sequence[str], hypotheses: Sequence[str],
                         references: Sequence[str], scores: np.ndarray,
                         seed: int = 0) -> Dict[str, Any]:
  """How a reward model scores hand-made failures of correct translations.

  For every source whose best-rated candidate is rated the maximum (a correct
  translation), each `ratings.degenerate_variants` kind is scored beside it:
  `below_correct` is the share scored lower than the correct translation (1.0 is
  right for every kind), `mean_predicted` the mean score. `predict(sources,
  hypotheses, references)` returns scores.
  """
  import random  # pylint: disable=g-import-not-at-top

  from rest_jax.rewards import ratings  # pylint: disable=g-import-not-at-top

  best: Dict[str, int] = {}
  top = scores.max()
  for i, source in enumerate(sources):
    if scores[i] >= top and source not in best:
      best[source] = i
  if len(best) < 2:
    return {}
  rng = random.Random(seed)
  correct = [hypotheses[i] for i in best.values()]
  rows = []  # (pair index, kind, source, hypothesis, reference)
  for n, (source, i) in enumerate(best.items()):
    other = correct[(n + 1) % len(correct)]
    for kind, text in ratings.degenerate_variants(source, hypotheses[i], other, rng).items():
      rows.append((n, kind, source, text, references[i]))
  predicted = predict([s for s in best] + [r[2] for r in rows],
                      correct + [r[3] for r in rows],
                      [references[i] for i in best.values()] + [r[4] for r in rows])
  base, variant = predicted[:len(best)], predicted[len(best):]
  below = variant < base[[r[0] for r in rows]]
  kinds = np.array([r[1] for r in rows])
  out: Dict[str, Any] = {"correct_mean_predicted": float(np.mean(base))}
  for kind in ratings.DEGENERATE_KINDS:
    idx = kinds == kind
    if idx.any():
      out[kind] = {"count": int(idx.sum()), "below_correct": float(below[idx].mean()),
                   "mean_predicted": float(variant[idx].mean())}
  out["below_correct"] = float(below.mean())
  return out


class Scorer:
  """Jitted, data-sharded reward-model forward over fixed-size batches."""

  def __init__(self, model: RewardModel, partitioner: partitioning.Partitioner,
               params_sharding, batch_size: int):
    self.partitioner = partitioner
    self.batch_size = -(-batch_size // partitioner.data_parallel_size) * (
        partitioner.data_parallel_size)
    self._predict = partitioner.partition(
        model.predict, in_shardings=(params_sharding, partitioner.data_sharding()),
        out_shardings=partitioner.data_sharding())

  def __call__(self, params, tokens: np.ndarray) -> np.ndarray:
    # Every batch is dispatched before any is read back, so that the device never waits
    # for the host between batches.
    out = []
    for i in range(0, len(tokens), self.batch_size):
      chunk = tokens[i:i + self.batch_size]
      padded = np.zeros((self.batch_size, tokens.shape[1]), np.int32)
      padded[: len(chunk)] = chunk
      out.append((self._predict(params, self.partitioner.shard_batch(padded)), len(chunk)))
    return (np.concatenate([trainer_lib.to_host(scores)[:n] for scores, n in out]) if out
            else np.zeros((0,), np.float32))


class LearnedReward(Reward):
  """A trained reward model (from `train_reward_model`) as a reward on [0, 1]."""

  range = (0.0, 1.0)

  def __init__(self, model_dir: str, batch_size: int = 256,
               partitioner: partitioning.Partitioner | None = None):
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{model_dir} has no {CONFIG_FILE}: not a trained reward model")
    with open(path) as f:
      saved = json.load(f)
    config = RewardModelConfig(**saved["config"])
    # Its agreement with held-out ratings (`train_reward_model`'s metrics), for reports.
    self.held_out = saved.get("held_out", {})
    self.name = "learned" if config.use_reference else "learned-qe"
    self.needs_reference = config.use_reference
    self.model = RewardModel(config, _vocabulary_from_spec(saved["vocabulary"]))
    partitioner = partitioner or partitioning.Partitioner()
    trainer = trainer_lib.Trainer(self.model, partitioner,
                                  {"tokens": (batch_size, config.max_length)})
    size = int(saved.get("ensemble_size", 1))
    self.members = []
    for k in range(size):  # one model, or an ensemble averaged (`train_reward_model`)
      ckpt = checkpoints.Checkpointer(_member_dir(model_dir, k, size))
      self.members.append(ckpt.restore(trainer.abstract_state).params)
      ckpt.close()
    # A model retrained in the same directory is another reward: its scores (cached, or
    # in a grown dataset that `rest` would reuse) are not this one's.
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(trainer_lib.to_host(self.members)):
      digest.update(np.ascontiguousarray(leaf).tobytes())
    self._identity = f"{self.name}:{os.path.abspath(model_dir)}:{digest.hexdigest()[:16]}"
    self._scorer = Scorer(self.model, partitioner, trainer.params_sharding, batch_size)

  @property
  def identity(self) -> str:
    return self._identity

  @property
  def params(self):
    """The (first) model's parameters."""
    return self.members[0]

  def score(self, sources, hypotheses, references):
    tokens = self.model.tokenize(sources, hypotheses, references)
    if len(self.members) == 1:
      return self._scorer(self.members[0], tokens)
    return np.mean(members_lib.map_members(lambda k: self._scorer(self.members[k], tokens),
                                len(self.members), self._scorer.partitioner), axis=0)


def _member_dir(model_dir: str, k: int, size: int) -> str:
  """Where member k of an ensemble of `size` lives (the model dir itself for one model)."""
  return model_dir if size == 1 else os.path.join(model_dir, f"member_{k}")
