"""The train state and the sharded train/eval steps.

`Trainer` turns a model (t5x API) and a `Partitioner` into compiled steps:
parameters and optimizer state are created directly with their shardings, the
train step is one `jax.jit` that donates the old state, and the loss is the
model's `loss_fn` unless a custom one is given (Improve's offline-RL losses).
"""

import dataclasses
import threading
import time
from typing import Any, Callable, Mapping, Tuple

from clu import metrics as clu_metrics
import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from flax.linen import partitioning as nn_partitioning

from rest_jax import optimizers, partitioning

PyTree = Any
Batch = Mapping[str, jax.Array]
# (model, params, batch, dropout_rng, **loss_args) -> (loss, metrics)
LossFn = Callable[..., Tuple[jax.Array, Mapping[str, Any]]]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  opt_state: PyTree

  def as_dict(self) -> PyTree:
    return {"step": self.step, "params": self.params, "opt_state": self.opt_state}

  @classmethod
  def from_dict(cls, tree: PyTree) -> "TrainState":
    return cls(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"])


def default_optimizer(learning_rate: float | optax.Schedule = 1e-3) -> optax.GradientTransformation:
  """Adafactor with factored second moments, as t5x trains T5."""
  return optax.adafactor(learning_rate=learning_rate)


SCHEDULES = ("constant", "linear", "cosine")


def learning_rate_schedule(base_learning_rate: float, schedule: str = "constant",
                           warmup_steps: int = 0, decay_steps: int = 0,
                           end_factor: float = 0.0) -> optax.Schedule:
  """A learning rate per step: linear warmup, then constant or decaying.

  Args:
    base_learning_rate: the rate after warmup.
    schedule: "constant", "linear" (to `end_factor * base` over `decay_steps`) or
      "cosine" (likewise, cosine-shaped).
    warmup_steps: steps of linear warmup from 0.
    decay_steps: steps of decay after warmup ("linear", "cosine").
    end_factor: the final rate as a share of `base_learning_rate`.
  """
  if schedule not in SCHEDULES:
    raise ValueError(f"learning-rate schedule {schedule!r}: use one of {SCHEDULES}")
  if schedule == "constant":
    after = optax.constant_schedule(base_learning_rate)
  else:
    if decay_steps <= 0:
      raise ValueError(f"a {schedule} learning-rate schedule needs decay_steps > 0")
    if schedule == "linear":
      after = optax.linear_schedule(base_learning_rate, end_factor * base_learning_rate,
                                    decay_steps)
    else:
      after = optax.cosine_decay_schedule(base_learning_rate, decay_steps, alpha=end_factor)
  if warmup_steps <= 0:
    return after
  warmup = optax.linear_schedule(0.0, base_learning_rate, warmup_steps)
  return optax.join_schedules([warmup, after], [warmup_steps])


@dataclasses.dataclass(frozen=True)
class LearningRateConfig:
  """A learning rate that fits the run it is used for: `schedule_for(steps)`.

  A decaying schedule decays over the optimizer steps of the run that uses it, so
  one config serves an Improve step (`IMPROVE_STEPS`) and the BC+ control (all
  Improve steps together) alike.

  Attributes:
    base_learning_rate: the rate after warmup.
    schedule: "constant", "linear" or "cosine" (see `learning_rate_schedule`).
    warmup_steps: steps of linear warmup from 0.
    end_factor: the final rate as a share of `base_learning_rate`.
  """

  base_learning_rate: float = 1e-3
  schedule: str = "constant"
  warmup_steps: int = 0
  end_factor: float = 0.0

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"learning-rate schedule {self.schedule!r}: use one of {SCHEDULES}")

  def schedule_for(self, total_steps: int) -> optax.Schedule:
    """The rate of each step of a run of `total_steps` optimizer steps."""
    return learning_rate_schedule(
        self.base_learning_rate, self.schedule, self.warmup_steps,
        decay_steps=max(total_steps - self.warmup_steps, 1), end_factor=self.end_factor)


# Optimizer states that count the steps of a learning-rate schedule: a state continued
# into a new run (IMPROVE_OPTIMIZER_STATE = 'continue') starts them afresh, so that the new
# run's schedule starts at its beginning; everything else (moments, their step counts) goes on.
_SCHEDULE_STATES = (optax.ScaleByScheduleState, optax.InjectHyperparamsState)


def carry_optimizer_state(fresh: PyTree, previous: PyTree) -> PyTree:
  """`fresh` (this optimizer's new state) with the statistics of `previous` carried over.

  The two optimizers may differ: BC's constant rate and Improve's decaying schedule
  give states of different structure. Every node of `fresh` that `previous` has at
  the same place, of the same type, shape and dtype, takes `previous`'s value (e.g.
  Adafactor's factored second moments and their count); schedule counters, and
  whatever `previous` lacks, stay fresh.
  """
  if isinstance(fresh, _SCHEDULE_STATES) or type(fresh) is not type(previous):
    return fresh
  if isinstance(fresh, dict):
    return type(fresh)({k: carry_optimizer_state(v, previous[k]) if k in previous else v
                        for k, v in fresh.items()})
  if isinstance(fresh, (tuple, list)):
    if len(fresh) != len(previous):
      return fresh
    children = [carry_optimizer_state(a, b) for a, b in zip(fresh, previous)]
    return type(fresh)(*children) if hasattr(fresh, "_fields") else type(fresh)(children)
  if dataclasses.is_dataclass(fresh) or not hasattr(fresh, "shape"):
    # Another library's state node (e.g. a t5x OptimizerDef's): carried whole when its
    # structure and shapes match, else fresh.
    same = (jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(previous) and
            all(np.shape(a) == np.shape(b) for a, b in zip(jax.tree_util.tree_leaves(fresh),
                                                          jax.tree_util.tree_leaves(previous))))
    return previous if same else fresh
  if np.shape(fresh) == np.shape(previous) and fresh.dtype == previous.dtype:
    return previous
  return fresh


def model_loss(model, params, batch, dropout_rng):
  return model.loss_fn(params, batch, dropout_rng)


def batch_input_shapes(batch_size: int, feature_lengths: Mapping[str, int]) -> dict:
  return {
      "encoder_input_tokens": (batch_size, feature_lengths["inputs"]),
      "decoder_input_tokens": (batch_size, feature_lengths["targets"]),
      "decoder_target_tokens": (batch_size, feature_lengths["targets"]),
  }


class Trainer:
  """Compiled, sharded train and eval steps for one model and mesh."""

  def __init__(
      self,
      model,
      partitioner: partitioning.Partitioner,
      input_shapes: Mapping[str, Tuple[int, ...]],
      optimizer: optax.GradientTransformation | None = None,
      loss_fn: LossFn = model_loss,
      learning_rate: optimizers.LearningRate | None = None,
  ):
    """Builds the compiled steps.

    Args:
      model: a t5x-API model.
      partitioner: the mesh.
      input_shapes: the batch's shapes.
      optimizer: an optax optimizer for a model that carries an optax one (rest_jax's),
        e.g. Improve's; None: the model's own.
      loss_fn: default the model's `loss_fn`.
      learning_rate: the rate (or schedule) for a model that carries a t5x
        `OptimizerDef` (t5x's Adafactor), which then trains with it as t5x's trainer
        would; such a model always trains with its own optimizer.
    """
    self.model = model
    self.partitioner = partitioner
    self.input_shapes = dict(input_shapes)
    self.loss_fn = loss_fn

    abstract = jax.eval_shape(
        lambda rng: model.get_initial_variables(rng, self.input_shapes), jax.random.PRNGKey(0)
    )
    self.params_axes = abstract.get("params_axes", {})
    params_shapes = abstract["params"]
    logical_axes = (nn_partitioning.get_axis_names(self.params_axes) if self.params_axes
                    else None)
    own = optimizers.model_optimizer(model, learning_rate, logical_axes)
    if optimizers.is_optimizer_def(optimizers.unwrap(getattr(model, "optimizer_def", None))):
      self.optimizer = own  # a t5x OptimizerDef: the model's own, at `learning_rate`
    else:
      self.optimizer = optimizer or own or default_optimizer()
    self.params_sharding = partitioner.params_shardings(self.params_axes, params_shapes)
    opt_shapes = jax.eval_shape(self.optimizer.init, params_shapes)
    opt_sharding = partitioner.state_shardings(opt_shapes, params_shapes, self.params_sharding)
    self.state_sharding = TrainState(
        step=partitioner.replicated, params=self.params_sharding, opt_state=opt_sharding
    )
    self.abstract_state = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params_shapes,
                   opt_state=opt_shapes),
        self.state_sharding,
    )
    self._init = partitioner.partition(
        self._init_fn, in_shardings=(partitioner.replicated,), out_shardings=self.state_sharding
    )
    self._batch_sharding = None
    self._opt_init = None
    self._train_step = None
    self._compile_lock = threading.Lock()
    self._eval_step = None

  # --- state ---------------------------------------------------------------

  def _init_fn(self, rng):
    params = self.model.get_initial_variables(rng, self.input_shapes)["params"]
    return TrainState(step=jnp.array(0, jnp.int32), params=params,
                      opt_state=self.optimizer.init(params))

  def init_state(self, rng: jax.Array) -> TrainState:
    """Fresh parameters and optimizer state, created already sharded."""
    return self._init(rng)

  def state_from_params(self, params: PyTree, opt_state: PyTree = None) -> TrainState:
    """A step-0 state around existing parameters (e.g. a policy checkpoint).

    Args:
      params: the parameters.
      opt_state: an optimizer state to continue from (e.g. the previous Improve
        step's, or BC's of another optimizer): `carry_optimizer_state` says what
        carries over; None starts a fresh one.
    """
    # A copy: the train step donates its state, and the caller keeps its parameters
    # (e.g. the BC policy that a KL term reads in every Improve step).
    params = jax.tree_util.tree_map(jnp.copy, jax.device_put(params, self.params_sharding))
    if self._opt_init is None:
      self._opt_init = self.partitioner.partition(
          self.optimizer.init, in_shardings=(self.params_sharding,),
          out_shardings=self.state_sharding.opt_state,
      )
    fresh = self._opt_init(params)
    if opt_state is not None:  # another optimizer's state (BC's) fits as far as it goes
      opt_state = jax.tree_util.tree_map(
          jnp.copy, jax.device_put(carry_optimizer_state(fresh, opt_state),
                                   self.state_sharding.opt_state))
    else:
      opt_state = fresh
    step = jax.device_put(jnp.array(0, jnp.int32), self.partitioner.replicated)
    return TrainState(step=step, params=params, opt_state=opt_state)

  # --- steps ---------------------------------------------------------------

  def _train_step_fn(self, state: TrainState, batch: Batch, base_rng: jax.Array,
                     loss_args: Mapping[str, Any]):
    dropout_rng = jax.random.fold_in(base_rng, state.step)
    grad_fn = jax.value_and_grad(
        lambda p: self.loss_fn(self.model, p, batch, dropout_rng, **loss_args), has_aux=True
    )
    (_, metrics), grads = grad_fn(state.params)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics)
    metrics["grad_norm"] = clu_metrics.Average(
        total=optax.global_norm(grads), count=jnp.array(1, jnp.int32)
    )
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def _eval_step_fn(self, params: PyTree, batch: Batch):
    return self.loss_fn(self.model, params, batch, None)[1]

  def _batch_shardings(self, batch: Batch):
    return {k: self.partitioner.data_sharding(np.ndim(v)) for k, v in batch.items()}

  def _loss_args_shardings(self, loss_args: Mapping[str, Any]):
    """Parameter trees (e.g. the frozen BC policy) are sharded as the parameters; scalars replicated."""
    return {k: self.params_sharding if k.endswith("params") else self.partitioner.replicated
            for k in loss_args}

  def _compiled_train_step(self, batch: Batch, loss_args: Mapping[str, Any]):
    key = tuple(sorted(loss_args))
    with self._compile_lock:  # an ensemble's members train in threads with one trainer
      return self._train_step_for(key, batch, loss_args)

  def _train_step_for(self, key, batch: Batch, loss_args: Mapping[str, Any]):
    if self._train_step is None or self._train_step[0] != key:
      self._train_step = (key, self.partitioner.partition(
          self._train_step_fn,
          in_shardings=(self.state_sharding, self._batch_shardings(batch),
                        self.partitioner.replicated, self._loss_args_shardings(loss_args)),
          out_shardings=(self.state_sharding, self.partitioner.replicated),
          donate_argnums=(0,),
      ))
    return self._train_step[1]

  def train_step(self, state: TrainState, batch: Batch, base_rng: jax.Array,
                 loss_args: Mapping[str, Any] | None = None):
    """One optimizer step; the old `state` is donated (do not reuse it).

    `loss_args` are passed to the loss function as keyword arguments (traced, so
    changing their values does not recompile): e.g. BVMPO's `reference_params`
    (the frozen BC policy) and `kl_weight`.
    """
    loss_args = dict(loss_args or {})
    return self._compiled_train_step(batch, loss_args)(state, batch, base_rng, loss_args)

  def lower_train_step(self, batch: Batch, base_rng: jax.Array):
    """The train step lowered for (abstract) inputs, to inspect its memory and collectives."""
    return self._compiled_train_step(batch, {}).lower(self.abstract_state, batch, base_rng, {})

  def eval_step(self, params: PyTree, batch: Batch):
    if self._eval_step is None:
      self._eval_step = self.partitioner.partition(
          self._eval_step_fn,
          in_shardings=(self.params_sharding, self._batch_shardings(batch)),
          out_shardings=self.partitioner.replicated,
      )
    return self._eval_step(params, batch)


class MetricsAccumulator:
  """Merges per-step metrics (clu metrics or plain scalars) on the host.

  t5x's models also return timing metrics (`timing/*`: `Time`, `TimeRate`,
  `StepsPerTime`) whose duration, and step metrics whose step count, only the
  trainer knows: as t5x's trainer does, `compute` sets them from the wall time and
  the number of steps accumulated.
  """

  def __init__(self):
    self._metrics: dict = {}
    self._steps = 0
    self._start = time.perf_counter()

  def add(self, metrics: Mapping[str, Any]) -> None:
    metrics = jax.device_get(metrics)
    self._steps += 1
    for name, value in metrics.items():
      if not isinstance(value, clu_metrics.Metric):
        value = clu_metrics.Average(total=np.asarray(value, np.float64), count=np.array(1))
      previous = self._metrics.get(name)
      self._metrics[name] = value if previous is None else previous.merge(value)

  def compute(self) -> dict:
    elapsed = max(time.perf_counter() - self._start, 1e-9)
    out = {}
    for name, metric in self._metrics.items():
      if hasattr(metric, "replace_steps"):  # t5x's Step metrics
        metric = metric.replace_steps(self._steps)
      if hasattr(metric, "replace_duration"):  # t5x's Time metrics
        metric = metric.replace_duration(elapsed)
      out[name] = float(np.asarray(metric.compute()))
    return out

  def state_dict(self) -> dict:
    """The merged metrics as JSON-able data; `from_state_dict` restores them bit for bit.

    Timing metrics are left out: they measure the process that ran them.
    """
    out = {}
    for name, metric in self._metrics.items():
      if hasattr(metric, "replace_duration") or hasattr(metric, "replace_steps"):
        continue
      fields = {f.name: np.asarray(getattr(metric, f.name)) for f in dataclasses.fields(metric)}
      out[name] = {"type": type(metric).__name__,
                   "fields": {k: [str(v.dtype), v.tolist()] for k, v in fields.items()}}
    return out

  @classmethod
  def from_state_dict(cls, state: Mapping[str, Any]) -> "MetricsAccumulator":
    accumulator = cls()
    for name, entry in state.items():
      fields = {k: np.asarray(value, dtype) for k, (dtype, value) in entry["fields"].items()}
      accumulator._metrics[name] = getattr(clu_metrics, entry["type"])(**fields)
    return accumulator

  def __bool__(self) -> bool:
    return bool(self._metrics)


def to_host(tree: PyTree) -> PyTree:
  """Fully replicated host copies (works for arrays sharded across processes)."""
  return jax.tree_util.tree_map(
      lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
      if isinstance(x, jax.Array) and not x.is_fully_addressable else np.asarray(x),
      tree,
  )
