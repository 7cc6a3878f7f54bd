"""Centralised minibatch training: the federated clients' step code on one "client".

Used for the server's warm-up model on globally shared data and as the centralised-SGD
reference of the weight-divergence experiment, and for models trained centrally by the
pruning and distillation experiments (`train_epochs`, `make_step_chunk`). One epoch is
one jitted call of `run_local_steps` over the whole (on-device) training set as a single
client, so it
trains exactly as a federated client does: the same shuffle, masks, step keys and
optimizer step (with FishLeg's extra arguments and the post-update hook).
"""

import time

import jax
import jax.numpy as jnp
from absl import logging

from fedcomp.core.local_steps import run_local_steps
from fedcomp.core.optimizer_step import OptimizerStep, train_step
from fedcomp.tasks.base import bind, mean_of


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


def train_epochs(task, apply, params, model_state, arrays, *, epochs: int, batch_size: int,
                 tx, key, name: str = 'train'):  # fmt: skip
  """Trains a model centrally for `epochs` shuffled epochs (logged); returns (params, state).

  Args:
    task: the Task; apply: the model's apply; params, model_state: where training starts.
    arrays: the training arrays on device ('x', 'y', ...).
    epochs, batch_size: the schedule.
    tx: an optax transform (wrapped in an OptimizerStep).
    key: epoch e uses fold_in(key, e).
    name: the log lines' prefix.
  """
  step = OptimizerStep(tx)
  epoch = make_epoch_fn(task, apply, step, batch_size)
  opt_state = step.init(params)
  for e in range(epochs):
    t = time.perf_counter()
    params, model_state, opt_state, sums = epoch(
      params, model_state, opt_state, arrays, jax.random.fold_in(key, e)
    )
    logging.info('%s epoch %d: train loss %.4f (%.1f s)', name, e + 1,
                 float(mean_of(sums)), time.perf_counter() - t)  # fmt: skip
  return params, model_state


def make_step_chunk(task, apply, step: OptimizerStep, batch_size: int):
  """A jitted function that runs `steps` minibatch steps on uniformly drawn examples.

  Returns:
    chunk(params, model_state, opt_state, arrays, key, steps) -> (params, model_state,
    opt_state, mean loss of the chunk); `steps` is static, arrays are (N, ...) on device
    (jit arguments, never constants of the program).
  """
  loss, nll_of = bind(task, apply)

  def chunk(params, model_state, opt_state, arrays, key, steps):
    n = arrays['x'].shape[0]

    def one(carry, k):
      params, model_state, opt_state = carry
      k_b, k_s = jax.random.split(k)
      idx = jax.random.randint(k_b, (batch_size,), 0, n)
      batch = {name: v[idx] for name, v in arrays.items()}
      batch['mask'] = jnp.ones(batch_size, bool)
      params, model_state, opt_state, sums, _ = train_step(
        loss, step, params, model_state, opt_state, batch, k_s, nll_of=nll_of
      )
      return (params, model_state, opt_state), mean_of(sums)

    carry, losses = jax.lax.scan(
      one, (params, model_state, opt_state), jax.random.split(key, steps)
    )
    return (*carry, losses.mean())

  return jax.jit(chunk, static_argnums=5)
