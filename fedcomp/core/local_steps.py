"""A client's local training: shuffled minibatches over its padded data, one step each.

`run_local_steps` scans a step function over a client's minibatches for some epochs, with
per-example and per-step masks: padded examples are never in a batch's real rows, and a
step with no real rows changes nothing. A client's result therefore does not depend on how
far its data was padded, also for stochastic models: the shuffle and the step keys of its
own steps are the same at any padding. Federated clients and centralised training (one
"client" holding the whole training set) both train through it.

References: FedJAX's padded client batches and masks (Ro et al. 2021, arXiv 2108.02117).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def local_batches(key: jax.Array, mask: jax.Array, epochs: int, batch_size: int):
  """Per-epoch shuffled minibatch indices over one client's padded examples.

  Each epoch visits the client's valid examples once in a fresh random order, in
  ceil(pad/batch_size) steps; the last valid step may be partial and later steps are empty
  (fully masked).

  Args:
    key: the client's key for this round.
    mask: (pad,) bool, True for the client's own examples.
    epochs: local epochs.
    batch_size: examples per step.

  Returns:
    (idx, valid): int32 and bool arrays of shape (epochs * steps, batch_size).
  """
  pad = mask.shape[0]
  steps = -(-pad // batch_size)
  count = mask.sum()

  def one_epoch(k):
    # Partitionable threefry (JAX's default) makes these draws prefix-stable in `pad`, so
    # the order of a client's own examples does not depend on padding.
    u = jax.random.uniform(k, (pad,))
    order = jnp.argsort(jnp.where(mask, u, 2.0)).astype(jnp.int32)  # valid first
    order = jnp.pad(order, (0, steps * batch_size - pad))
    valid = jnp.arange(steps * batch_size) < count
    return order.reshape(steps, batch_size), valid.reshape(steps, batch_size)

  idx, valid = jax.vmap(one_epoch)(jax.random.split(key, epochs))
  return idx.reshape(epochs * steps, batch_size), valid.reshape(epochs * steps, batch_size)


def step_keys(key: jax.Array, epochs: int, steps_per_epoch: int) -> jax.Array:
  """(epochs * steps_per_epoch,) keys: step j of epoch e gets fold_in(fold_in(key, e), j).

  A step's key depends on its epoch and position only, not on how many (padded) steps an
  epoch has, so padding a client does not change the keys of its own steps.
  """
  per_epoch = jax.vmap(
    lambda e: jax.vmap(lambda j: jax.random.fold_in(jax.random.fold_in(key, e), j))(
      jnp.arange(steps_per_epoch)
    )
  )(jnp.arange(epochs))
  return per_epoch.reshape(epochs * steps_per_epoch)


def _select(pred, new, old):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def run_local_steps(
  step: Callable[[PyTree, dict, jax.Array], tuple[PyTree, dict]],
  local: PyTree,
  data: dict,
  mask: jax.Array,
  key: jax.Array,
  *,
  epochs: int,
  batch_size: int,
  unroll: int = 1,
  dynamic: bool = False,
) -> tuple[PyTree, dict]:
  """Runs `epochs` shuffled passes of minibatch steps over one client's padded data.

  Args:
    step: step(local, batch, key) -> (local, stats); batch holds data's arrays gathered
      at the step's indices and 'mask'; stats are sums over the batch's real rows.
    local: the initial local state (carried from step to step).
    data: name -> (pad, ...) arrays of the client.
    mask: (pad,) bool, True on the client's own rows.
    key: the client's key for its local work (order and step keys are derived from it).
    epochs: local epochs.
    batch_size: examples per step.
    unroll: `lax.scan` unroll of the steps; 0 unrolls them fully.
    dynamic: run only the client's own (non-empty) steps in a while_loop instead of a
      fixed-length scan over the padded steps (ragged clients; dense models, as loops
      over convolutions are slow on XLA:CPU).

  Returns:
    (local after the steps, stats summed over the steps).
  """
  k_order, k_steps = jax.random.split(key)
  idx, valid = local_batches(k_order, mask, epochs, batch_size)
  per_epoch = idx.shape[0] // epochs
  keys = step_keys(k_steps, epochs, per_epoch)

  def one(local, inputs):
    b_idx, b_valid, k = inputs
    batch = {name: a[b_idx] for name, a in data.items()}
    batch['mask'] = b_valid
    new_local, stats = step(local, batch, k)
    active = b_valid.any()
    stats = jax.tree.map(lambda s: jnp.where(active, s, jnp.zeros((), s.dtype)), stats)
    return _select(active, new_local, local), stats

  if not dynamic:
    length = idx.shape[0]
    local, stats = jax.lax.scan(
      one, local, (idx, valid, keys), unroll=unroll if unroll > 0 else length
    )
    return local, jax.tree.map(lambda s: s.sum(0), stats)

  count = mask.sum()
  own = jnp.maximum((count + batch_size - 1) // batch_size, 1)
  total = jnp.where(count > 0, epochs * own, 0)
  like = (count * 0).astype(jnp.float32)  # zeros typed like the client's data (shard_map)
  shapes = jax.eval_shape(lambda: one(local, (idx[0], valid[0], keys[0]))[1])
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype) + like.astype(s.dtype), shapes)

  def body(carry):
    t, local, acc = carry
    j = (t // own) * per_epoch + t % own  # the t-th non-empty step
    local, stats = one(local, (idx[j], valid[j], keys[j]))
    return t + 1, local, jax.tree.map(jnp.add, acc, stats)

  _, local, stats = jax.lax.while_loop(lambda c: c[0] < total, body, (count * 0, local, zeros))
  return local, stats
