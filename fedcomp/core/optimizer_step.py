"""The one optimizer step every algorithm, experiment and centralised trainer uses.

gradients -> `tx.update` with the extra arguments a transform may need (FishLeg's
`nll_fn` and `key`; transforms that take none ignore them) -> `optax.apply_updates` ->
an optional post-update hook on the new parameters (where pruning masks are applied,
as jaxpruner's `post_gradient_update`). `train_step` puts a task's loss and gradients in
front of it.

References: optax's GradientTransformationExtraArgs; jaxpruner (Lee et al. 2023,
arXiv 2304.14082), the post-gradient-update hook.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

PyTree = Any


class OptimizerStep(NamedTuple):
  """An optax transformation applied as one step, with a post-update hook.

  Attributes:
    tx: the optax transformation.
    post_update: optional (new params, new opt_state) -> params, run after every step
      (e.g. multiply by pruning masks kept in the optimizer state).
  """

  tx: optax.GradientTransformation
  post_update: Callable[[PyTree, PyTree], PyTree] | None = None

  def init(self, params: PyTree) -> PyTree:
    return self.tx.init(params)

  def __call__(self, grads, opt_state, params, *, nll_fn=None, key=None):
    """(new params, new opt_state) after one step on `grads`.

    Args:
      grads: gradients (params-shaped).
      opt_state: the transformation's state.
      params: the current params.
      nll_fn: (params, key) -> NLL of model-sampled targets, for curvature-aware
        transforms (FishLeg); passed when the transformation takes extra arguments.
      key: a PRNG key for such transforms.

    Returns:
      (params, opt_state).
    """
    extra = {}
    if isinstance(self.tx, optax.GradientTransformationExtraArgs):
      extra = {k: v for k, v in (('nll_fn', nll_fn), ('key', key)) if v is not None}
    updates, opt_state = self.tx.update(grads, opt_state, params, **extra)
    params = optax.apply_updates(params, updates)
    if self.post_update is not None:
      params = self.post_update(params, opt_state)
    return params, opt_state


def train_step(
  loss_fn: Callable,
  step: OptimizerStep,
  params: PyTree,
  model_state: PyTree,
  opt_state: PyTree,
  batch: dict,
  key: jax.Array,
  *,
  nll_of: Callable | None = None,
  extra_loss: Callable[[PyTree], jax.Array] | None = None,
  correct_grads: Callable[[PyTree], PyTree] | None = None,
  optimizer_key: jax.Array | None = None,
):
  """One minibatch step: gradients of the loss, then the optimizer step.

  Args:
    loss_fn: (params, model_state, batch, key) -> (mean loss, (sums, new model state)).
    step: the OptimizerStep.
    params: current params.
    model_state: current model state (BatchNorm statistics; {} for none).
    opt_state: current optimizer state.
    batch: the minibatch (with 'mask').
    key: this step's key (the loss's randomness; fold_in(key, 1) for the optimizer's).
    nll_of: (model_state, batch) -> nll_fn(params, key), the NLL of model-sampled
      targets on this batch, for curvature-aware optimizers; None if the task has none.
    extra_loss: params -> a term added to the loss (FedProx's proximal term).
    correct_grads: grads -> the gradients the optimizer sees (SCAFFOLD's correction).
    optimizer_key: the optimizer's key (default fold_in(key, 1)).

  Returns:
    (params, model_state, opt_state, sums, raw gradients of the loss + extra_loss).
  """

  def objective(p):
    loss, aux = loss_fn(p, model_state, batch, key)
    return (loss + extra_loss(p) if extra_loss is not None else loss), aux

  grads, (sums, new_state) = jax.grad(objective, has_aux=True)(params)
  used = correct_grads(grads) if correct_grads is not None else grads
  nll_fn = nll_of(model_state, batch) if nll_of is not None else None
  if optimizer_key is None:
    optimizer_key = jax.random.fold_in(key, 1)
  params, opt_state = step(used, opt_state, params, nll_fn=nll_fn, key=optimizer_key)
  return params, new_state, opt_state, sums, grads
