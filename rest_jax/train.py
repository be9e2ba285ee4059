"""Supervised training (behaviour cloning), the starting policy of ReST.

`train` is configured by gin (`gin/runs/train.gin`) and run by
`python -m rest_jax.main train`. It resumes from the latest checkpoint in
`model_dir`, at the same step and data position.
"""

import dataclasses
import time
from typing import Any, Callable, Dict, List, Optional

from absl import logging
import jax
import seqio
import tqdm

from rest_jax import checkpoints, convert, files, inference, loop, partitioning
from rest_jax import selection as selection_lib, train_eval
from rest_jax import trainer as trainer_lib
from rest_jax.data import pipeline


@dataclasses.dataclass(frozen=True)
class BCConfig:
  """BC, the run's first policy (gin: `train.BCConfig`, bound from rest.gin's macros).

  Attributes:
    steps: its most training steps (BC_STEPS); it stops earlier once its validation
      reward has not improved for `selection.patience` evaluations, and keeps its best
      checkpoint: the BC policy.
    selection: its validation period and patience.
    learning_rate: its rate or schedule for a model that carries a t5x `OptimizerDef`
      (rest_jax's models carry an optax optimizer with its rate).
    initial_checkpoint_path: a t5x checkpoint (t5x's INITIAL_CHECKPOINT_PATH; Orbax or
      legacy) that BC starts from instead of a random initialisation; with `steps=0`
      it is the BC policy.
    from_dir: the `bc/` directory of another run (finished, BC_FROM): its selected
      checkpoint is this run's BC policy, read where it is (nothing is copied or
      written there).
  """

  steps: int
  selection: selection_lib.SelectionConfig = selection_lib.SelectionConfig(
      eval_period=100, patience=5)
  learning_rate: Any = None
  initial_checkpoint_path: Optional[str] = None
  from_dir: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """Where `train` saves (in the manner of t5x's `checkpoint_cfg`, which it is not: a
  t5x gin file's `utils.CheckpointConfig` does not bind it).

  Attributes:
    period: steps between checkpoints (the last step is always saved).
    keep: checkpoints kept.
  """

  period: int = 500
  keep: int = 3


@dataclasses.dataclass(frozen=True)
class SummaryConfig:
  """What `train` writes to TensorBoard: its training metrics (`train/`) every
  `log_period` steps, and every `eval_period` steps (and at the end) the evaluation of
  `eval_dataset_cfg` (`eval/`): loss, accuracy, and BLEU/chrF of decodes.

  Attributes:
    log_period: steps between train-metric summaries.
    eval_period: steps between evaluations.
    eval_batches: batches per evaluation (0 = the whole split).
    eval_beam_size: beam size of the decodes scored by BLEU/chrF (1 = greedy).
  """

  log_period: int = 50
  eval_period: int = 500
  eval_batches: int = 8
  eval_beam_size: int = 1


def _converter(model, pack: bool = False) -> seqio.FeatureConverter:
  return model.FEATURE_CONVERTER_CLS(pack=pack)


class _Summaries:
  """`train`'s TensorBoard summaries and evaluations, and its history of evaluations."""

  def __init__(self, model, trainer: trainer_lib.Trainer, model_dir: str,
               eval_dataset_cfg: Optional[pipeline.DatasetConfig], config: SummaryConfig,
               total_steps: int):
    self.model, self.trainer, self.config = model, trainer, config
    self.eval_dataset_cfg, self.total_steps = eval_dataset_cfg, total_steps
    is_chief = jax.process_index() == 0
    self.train_writer = files.summary_writer(files.join(model_dir, "train"), is_chief)
    self.eval_writer = files.summary_writer(files.join(model_dir, "eval"), is_chief)
    self.decoder = None
    if eval_dataset_cfg is not None:
      self.decoder = inference.PolicyDecoder(model, trainer.partitioner,
                                             trainer.params_sharding,
                                             num_decodes=config.eval_beam_size)
    self.history: List[Dict[str, Any]] = []
    self._restart()

  def _restart(self) -> None:
    self.accumulator, self.tokens = trainer_lib.MetricsAccumulator(), 0
    self.tick = time.perf_counter()

  def evaluate(self, step: int, params) -> None:
    cfg = self.eval_dataset_cfg
    if cfg is None:
      return
    batches = pipeline.batch_iterator(cfg, _converter(self.model), num_epochs=1,
                                      rows=self.trainer.partitioner.process_rows(cfg.batch_size))
    if self.config.eval_batches:
      batches = (b for i, b in zip(range(self.config.eval_batches), batches))
    results = train_eval.evaluate(self.trainer, params, batches, self.decoder)
    examples = results.pop("examples", [])
    self.eval_writer.write_scalars(step, results)
    for ref, hyp in examples[:2]:
      logging.info("  reference: %s\n  decoded:   %s", ref, hyp)
    self.history.append({"step": step, **results})
    tqdm.tqdm.write(f"step {step:6d} eval " +
                    " ".join(f"{k}={v:.4g}" for k, v in sorted(results.items())))

  def after_step(self, done: int, new_state, metrics, batch) -> None:
    self.accumulator.add(metrics)
    self.tokens += int(batch["decoder_loss_weights"].sum()) * jax.process_count()
    if done % self.config.log_period == 0 or done == self.total_steps:
      elapsed = time.perf_counter() - self.tick
      scalars = self.accumulator.compute()
      scalars["target_tokens_per_s"] = self.tokens / max(elapsed, 1e-9)
      self.train_writer.write_scalars(done, scalars)
      self._restart()
    if done % self.config.eval_period == 0 or done == self.total_steps:
      self.evaluate(done, new_state.params)

  def flush(self) -> None:
    self.train_writer.flush()
    self.eval_writer.flush()


def _start_state(trainer: trainer_lib.Trainer, ckpt: checkpoints.Checkpointer,
                 init_rng: jax.Array, initial_checkpoint_path: Optional[str]):
  """The latest checkpoint's state, else the t5x checkpoint's parameters, else an init."""
  if ckpt.latest_step() is not None:
    state = ckpt.restore(trainer.abstract_state)
    logging.info("Resumed from step %d", int(state.step))
    return state
  if initial_checkpoint_path:
    logging.info("Starting from %s", initial_checkpoint_path)
    return trainer.state_from_params(convert.read_params(trainer, initial_checkpoint_path))
  return trainer.init_state(init_rng)


def _close(train_dataset_cfg: pipeline.DatasetConfig, summary: _Summaries) -> None:
  """Reports what the input pipeline cut and flushes the summaries (normally seconds;
  when not, a warning says so)."""
  tick = time.perf_counter()
  cut = pipeline.overlength_count(train_dataset_cfg)
  if cut:
    logging.warning("train: %d examples of %s were longer than %s and were cut", cut,
                    train_dataset_cfg.mixture_or_task_name,
                    dict(train_dataset_cfg.task_feature_lengths))
  summary.flush()
  if time.perf_counter() - tick > 10:
    logging.warning("train: closing took %.1f s", time.perf_counter() - tick)


def train(
    *,
    model,
    train_dataset_cfg: pipeline.DatasetConfig,
    model_dir: str,
    total_steps: int,
    eval_dataset_cfg: pipeline.DatasetConfig | None = None,
    partitioner: partitioning.Partitioner | None = None,
    checkpoint_cfg: CheckpointConfig = CheckpointConfig(),
    summaries: SummaryConfig = SummaryConfig(),
    seed: int = 0,
    progress_bar: bool = True,
    selection: Optional[selection_lib.Selection] = None,
    validate: Optional[Callable[[Any], float]] = None,
    learning_rate: Any = None,
    initial_checkpoint_path: Optional[str] = None,
) -> List[Dict[str, Any]]:
  """Trains `model` on `train_dataset_cfg` for `total_steps` steps.

  Args:
    model: a model with the t5x API (e.g. `%MODEL`).
    train_dataset_cfg: the training task, split, lengths and batch size.
    model_dir: checkpoints (`checkpoints/`), TensorBoard summaries (`train/`,
      `eval/`) and the config go here.
    total_steps: train until the state's step reaches this.
    eval_dataset_cfg: evaluated every `summaries.eval_period` steps and at the end.
    partitioner: the mesh and rules (default: data parallel over all devices).
    checkpoint_cfg: how often checkpoints are saved and how many are kept.
    summaries: how often train metrics are written and the evaluation runs.
    seed: parameter-init and dropout seed.
    progress_bar: show a tqdm bar with tokens/s.
    selection: keeps the best checkpoint by `validate(params)` (evaluated every
      `selection.config.eval_period` steps) and stops early after `patience`
      evaluations without improvement (ReST's BC).
    validate: the validation score of parameters (higher is better).
    learning_rate: the rate or schedule of a model that carries a t5x
      `OptimizerDef` (t5x's Adafactor); rest_jax's models carry an optax optimizer
      with its rate.
    initial_checkpoint_path: a t5x checkpoint (t5x's INITIAL_CHECKPOINT_PATH, Orbax
      or legacy) to start from instead of a random initialisation, when `model_dir`
      has no checkpoint yet.

  Returns:
    The history of evaluations: one dict per evaluation with `step` and metrics.
  """
  partitioner = partitioner or partitioning.Partitioner()
  trainer = trainer_lib.Trainer(
      model, partitioner, trainer_lib.batch_input_shapes(
          train_dataset_cfg.batch_size, train_dataset_cfg.task_feature_lengths),
      learning_rate=learning_rate)
  ckpt = checkpoints.Checkpointer(model_dir, save_every=checkpoint_cfg.period,
                                  keep=checkpoint_cfg.keep)
  init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed))
  state = _start_state(trainer, ckpt, init_rng, initial_checkpoint_path)
  start = int(jax.device_get(state.step))
  if selection is not None:
    if validate is None:
      raise ValueError("train: a selection needs a validate function")
    if selection.finished:  # reached its steps or stopped early: nothing left to do
      ckpt.close()
      return []
  summary = _Summaries(model, trainer, model_dir, eval_dataset_cfg, summaries, total_steps)
  batches = pipeline.batch_iterator(train_dataset_cfg, _converter(model, train_dataset_cfg.pack),
                                    start_step=start,
                                    rows=partitioner.process_rows(train_dataset_cfg.batch_size))
  if start == 0:
    summary.evaluate(0, state.params)
  result = loop.run(
      loop.Job("train", trainer, state, batches, total_steps, ckpt, dropout_rng, "train.step",
               selection=selection, validate=validate),
      loop.Hooks(after_step=summary.after_step, progress_bar=progress_bar))
  if result.stopped_early:
    logging.info("train: stopped early at step %d; best validation score %.4f at step %d",
                 int(jax.device_get(result.state.step)), selection.best[1], selection.best[0])
  del batches, result  # the input pipeline's threads stop here rather than later
  _close(train_dataset_cfg, summary)
  return summary.history
