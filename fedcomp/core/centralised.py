"""Centralised minibatch training: the federated clients' step code on one "client".

Used for the server's warm-up model on globally shared data and as the centralised-SGD
reference of the weight-divergence experiment. One epoch is one jitted call of
`run_local_steps` over the whole (on-device) training set as a single client, so it
trains exactly as a federated client does: the same shuffle, masks, step keys and
optimizer step (with FishLeg's extra arguments and the post-update hook).
"""

import jax
import jax.numpy as jnp

from fedcomp.core.local_steps import run_local_steps
from fedcomp.core.optimizer_step import OptimizerStep, train_step
from fedcomp.tasks.base import bind


def make_epoch_fn(task, apply, step: OptimizerStep, batch_size: int):
  """A jitted function that runs one shuffled epoch of minibatch steps.

  The last partial batch is kept (masked), so every example is seen once per epoch.

  Args:
    task: the Task (loss and sampled NLL).
    apply: the model's apply.
    step: the OptimizerStep.
    batch_size: examples per step.

  Returns:
    epoch(params, model_state, opt_state, arrays, key) -> (params, model_state, opt_state,
    sums) where arrays are the data's per-example arrays (N, ...) and sums the epoch's
    task sums (with 'count').
  """

  loss, nll_of = bind(task, apply)

  def one_step(carry, batch, key):
    params, model_state, opt_state = carry
    params, model_state, opt_state, sums, _ = train_step(
      loss, step, params, model_state, opt_state, batch, key, nll_of=nll_of
    )
    return (params, model_state, opt_state), sums

  @jax.jit
  def epoch(params, model_state, opt_state, arrays, key):
    mask = jnp.ones(len(arrays['x']), bool)
    (params, model_state, opt_state), sums = run_local_steps(
      one_step, (params, model_state, opt_state), arrays, mask, key, epochs=1, batch_size=batch_size
    )
    return params, model_state, opt_state, sums

  return epoch
