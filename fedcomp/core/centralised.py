"""Centralised minibatch training: one jitted call per epoch over on-device data.

Used for the server's warm-up model on globally shared data and as the
centralised-SGD reference of the weight-divergence experiment.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def make_epoch_fn(loss_fn: Callable, tx: optax.GradientTransformation, batch_size: int):
  """A jitted function that runs one shuffled epoch of minibatch steps.

  The last partial batch is kept (masked), so every example is seen once per epoch.

  Args:
    loss_fn: loss_fn(params, batch, key) -> (mean loss, sums) with batch
      {'x', 'y', 'mask'} (fedcomp.core.classification_loss).
    tx: the optax optimizer.
    batch_size: examples per step.

  Returns:
    epoch(params, opt_state, x, y, key) -> (params, opt_state, sums) where sums are
    the epoch's {'loss', 'accuracy', 'count'} over its examples.
  """
  grad_fn = jax.grad(loss_fn, has_aux=True)

  @jax.jit
  def epoch(params, opt_state, x, y, key):
    n = x.shape[0]
    steps = -(-n // batch_size)
    k_order, k_steps = jax.random.split(key)
    order = jax.random.permutation(k_order, n)
    order = jnp.pad(order, (0, steps * batch_size - n)).reshape(steps, batch_size)
    valid = (jnp.arange(steps * batch_size) < n).reshape(steps, batch_size)

    def step(carry, inputs):
      params, opt_state = carry
      idx, mask, k = inputs
      grads, stats = grad_fn(params, {'x': x[idx], 'y': y[idx], 'mask': mask}, k)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (params := optax.apply_updates(params, updates), opt_state), stats

    keys = jax.random.split(k_steps, steps)
    (params, opt_state), stats = jax.lax.scan(step, (params, opt_state), (order, valid, keys))
    return params, opt_state, jax.tree.map(lambda s: s.sum(0), stats)

  return epoch
