"""Masked classification loss and batched evaluation."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def classification_loss(apply: Callable) -> Callable:
  """Masked softmax cross-entropy for `apply(params, x, *, train, key)`.

  Args:
    apply: the model's pure apply function.

  Returns:
    loss_fn(params, batch, key) -> (mean loss over the batch's valid examples,
    sums {'loss', 'accuracy', 'count'}). A batch with no valid example has loss 0.
  """

  def loss_fn(params, batch, key):
    logits = apply(params, batch['x'], train=True, key=key)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['y'])
    mask = batch['mask'].astype(jnp.float32)
    count = mask.sum()
    loss_sum = (ce * mask).sum()
    correct = ((jnp.argmax(logits, -1) == batch['y']) * mask).sum()
    stats = {'loss': loss_sum, 'accuracy': correct, 'count': count}
    return loss_sum / jnp.maximum(count, 1.0), stats

  return loss_fn


def classification_sampled_nll(apply: Callable) -> Callable:
  """(params, batch, key) -> mean cross-entropy of labels sampled from the model.

  The samples carry no gradient, so Hessian-vector products of this function are
  unbiased Fisher-vector products (what FishLeg's auxiliary loss needs).
  Padded rows (batch['mask'] False) do not count.
  """

  def nll(params, batch, key):
    k_model, k_label = jax.random.split(key)
    # The training-mode forward (dropout, and on CPU im2col convolutions, whose
    # second derivatives stay fast inside loops).
    logits = apply(params, batch['x'], train=True, key=k_model)
    y = jax.lax.stop_gradient(jax.random.categorical(k_label, logits))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    m = batch['mask'].astype(ce.dtype)
    return (ce * m).sum() / jnp.maximum(m.sum(), 1.0)

  return nll


def _masked_sums(apply, params, x, y, mask):
  """(cross-entropy sum, correct count) over the rows of (x, y) where mask is True."""
  logits = apply(params, x, train=False)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  m = mask.astype(jnp.float32)
  return (ce * m).sum(), ((jnp.argmax(logits, -1) == y) * m).sum()


def evaluate_fn(apply: Callable, batch_size: int = 1024, mesh=None) -> Callable:
  """A jitted evaluator of `params` on (x, y) in chunks of `batch_size`.

  Args:
    apply: the model's pure apply function.
    batch_size: examples per chunk (the data is padded to a multiple of it).
    mesh: optional 1-D mesh: each chunk's examples are split over its devices (data
      parallel) instead of every device evaluating everything.

  Returns:
    evaluate(params, x, y) -> {'loss', 'accuracy'} as Python floats; x and y are
    numpy arrays, padded and masked here so any length works.
  """

  @jax.jit
  def _sums(params, x, y, mask):
    loss, correct = jax.lax.map(lambda b: _masked_sums(apply, params, *b), (x, y, mask))
    return loss.sum(), correct.sum()

  def evaluate(params, x, y):
    import numpy as np

    n = len(y)
    size = batch_size if mesh is None else -(-batch_size // mesh.size) * mesh.size
    chunks = max(1, -(-n // size))
    pad = chunks * size - n
    xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    yp = np.concatenate([y, np.zeros((pad,), y.dtype)])
    mp = np.arange(chunks * size) < n
    shape = (chunks, size)
    data = (xp.reshape(shape + x.shape[1:]), yp.reshape(shape), mp.reshape(shape))
    if mesh is not None:
      split = NamedSharding(mesh, P(None, mesh.axis_names[0]))
      data = jax.device_put(data, split)
    loss, correct = _sums(params, *data)
    return {'loss': float(loss) / max(n, 1), 'accuracy': float(correct) / max(n, 1)}

  return evaluate


def evaluate_clients_fn(apply: Callable, client_params: Callable, mesh=None) -> Callable:
  """A jitted evaluator of each client's own model on that client's own data.

  Clients run one after another (`lax.map`), each as a plain batch through its
  own params, so convolutions stay ordinary convolutions; with a mesh, the clients
  are split over its devices (shard_map) and the sums are psum-ed.

  Args:
    apply: the model's pure apply function.
    client_params: (server_state, client_row) -> that client's params
      (FederatedAlgorithm.personal_params).
    mesh: optional 1-D mesh; the client axis must be a multiple of its size.

  Returns:
    evaluate(server_state, rows, x, y, mask) -> (loss sum, correct count, example
    count) as arrays, for rows (K, ...) and padded client data x (K, P, ...),
    y (K, P), mask (K, P).
  """

  def sums(server_state, rows, x, y, mask):
    def one(args):
      row, xc, yc, mc = args
      return _masked_sums(apply, client_params(server_state, row), xc, yc, mc)

    loss, correct = jax.lax.map(one, (rows, x, y, mask))
    out = jnp.stack([loss.sum(), correct.sum(), mask.sum().astype(jnp.float32)])
    return out if mesh is None else jax.lax.psum(out, mesh.axis_names[0])

  if mesh is None:
    return jax.jit(sums)
  axis = P(mesh.axis_names[0])
  return jax.jit(
    jax.shard_map(sums, mesh=mesh, in_specs=(P(), axis, axis, axis, axis), out_specs=P())
  )
