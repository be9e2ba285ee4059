"""The model's own optimizer, in the form rest_jax's trainer runs: an optax transformation.

- rest_jax's models carry an optax `GradientTransformation` (`OPTIMIZER` in gin).
- t5x models carry a t5x `OptimizerDef`: an optax transformation inside t5x's
  `OptaxWrapper` (unwrapped and run as it is), or one of t5x's own, such as its
  Adafactor (`t5x.adafactor.Adafactor`), which `from_optimizer_def` runs as t5x's
  trainer does: the learning rate of each step (t5x gets it from its
  `learning_rate_fn`) replaces the optimizer's `learning_rate` hyper-parameter,
  and Adafactor's factorisation rules are set from the parameters' logical axes.

No t5x import is needed: an `OptimizerDef` is recognised by its methods.
"""

from typing import Any, Callable, Optional, Union

import jax
import optax

PyTree = Any
LearningRate = Union[float, Callable[[Any], Any]]


def is_optimizer_def(obj) -> bool:
  """Whether `obj` is a t5x `OptimizerDef` (`init_state` + `apply_gradient`)."""
  return hasattr(obj, "init_state") and hasattr(obj, "apply_gradient")


def unwrap(optimizer):
  """An optax transformation inside t5x's `OptaxWrapper`, or `optimizer` itself."""
  inner = getattr(optimizer, "optax_optimizer", None)
  return inner if isinstance(inner, optax.GradientTransformation) else optimizer


def from_optimizer_def(optimizer_def, learning_rate: Optional[LearningRate] = None,
                       param_logical_axes: PyTree = None) -> optax.GradientTransformation:
  """A t5x `OptimizerDef` as an optax transformation.

  Args:
    optimizer_def: e.g. `t5x.adafactor.Adafactor(...)`.
    learning_rate: a float or a schedule of the step; None keeps the definition's
      own `learning_rate` hyper-parameter.
    param_logical_axes: the parameters' logical axis names (a tree of
      `PartitionSpec`s), for an optimizer that factorises by them (Adafactor's
      `logical_factor_rules`).
  """
  if param_logical_axes is not None and hasattr(optimizer_def, "set_param_axes"):
    optimizer_def.set_param_axes(param_logical_axes)

  def hyper_params(step):
    if learning_rate is None:
      return optimizer_def.hyper_params
    rate = learning_rate(step) if callable(learning_rate) else learning_rate
    return optimizer_def.update_hyper_params(learning_rate=rate)

  def init(params):
    return optimizer_def.init_state(params)

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("a t5x OptimizerDef needs the parameters to compute its update")
    new_params, new_state = optimizer_def.apply_gradient(hyper_params(state.step), params,
                                                         state, grads)
    updates = jax.tree_util.tree_map(lambda new, old: new - old, new_params, params)
    return updates, new_state

  return optax.GradientTransformation(init, update)


def model_optimizer(model, learning_rate: Optional[LearningRate] = None,
                    param_logical_axes: PyTree = None) -> Optional[optax.GradientTransformation]:
  """The optimizer the model's configuration gives, as optax; None if it has none.

  `learning_rate` reaches a t5x `OptimizerDef` (as t5x's trainer passes it); an optax
  transformation keeps the rate it was built with.
  """
  optimizer = unwrap(getattr(model, "optimizer_def", None))
  if optimizer is None or isinstance(optimizer, optax.GradientTransformation):
    return optimizer
  if is_optimizer_def(optimizer):
    return from_optimizer_def(optimizer, learning_rate, param_logical_axes)
  raise ValueError(f"model.optimizer_def {type(optimizer).__name__} is neither an optax"
                   " transformation nor a t5x OptimizerDef")
