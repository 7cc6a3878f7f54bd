"""Masked classification loss and batched evaluation."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


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


def evaluate_fn(apply: Callable, batch_size: int = 1024) -> Callable:
  """A jitted evaluator of `params` on (x, y) in chunks of `batch_size`.

  Args:
    apply: the model's pure apply function.
    batch_size: examples per chunk (the data is padded to a multiple of it).

  Returns:
    evaluate(params, x, y) -> {'loss', 'accuracy'} as Python floats; x and y are
    numpy arrays, padded and masked here so any length works.
  """

  @jax.jit
  def _sums(params, x, y, mask):
    def chunk(args):
      xb, yb, mb = args
      logits = apply(params, xb, train=False)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
      m = mb.astype(jnp.float32)
      return (ce * m).sum(), ((jnp.argmax(logits, -1) == yb) * m).sum()

    loss, correct = jax.lax.map(chunk, (x, y, mask))
    return loss.sum(), correct.sum()

  def evaluate(params, x, y):
    import numpy as np

    n = len(y)
    chunks = max(1, -(-n // batch_size))
    pad = chunks * batch_size - n
    xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    yp = np.concatenate([y, np.zeros((pad,), y.dtype)])
    mp = np.arange(chunks * batch_size) < n
    shape = (chunks, batch_size)
    loss, correct = _sums(
      params,
      xp.reshape(shape + x.shape[1:]),
      yp.reshape(shape),
      mp.reshape(shape),
    )
    return {'loss': float(loss) / max(n, 1), 'accuracy': float(correct) / max(n, 1)}

  return evaluate
