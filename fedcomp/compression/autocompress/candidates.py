"""A batch of candidate students distilled and evaluated in one compiled program, as masks
over their teacher.

Each candidate starts from the teacher's weights; its loss is knowledge distillation
against the teacher's logits through `space.masked_forward`, so the gradients of dropped
channels and removed convs are exactly zero and Adam leaves them unchanged: materialising a
trained candidate (`space.materialize` of its params) gives the same function. Candidates
are vmapped; steps are a `lax.scan`; every candidate sees the same minibatches. BatchNorm
runs in inference mode with the teacher's statistics (its scale and shift train).

References: Ashok et al. 2018, "N2N Learning" (ICLR): candidates distilled from the
teacher for a short budget; Hinton et al. 2015 (knowledge distillation).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from fedcomp.compression.autocompress.space import SearchSpace, masked_forward
from fedcomp.compression.distillation.kd import distillation_loss


def distill_masked(
  space: SearchSpace, params, state, keep, ratio, x, teacher_logits, *, steps: int,
  batch_size: int, learning_rate: float, temperature: float, key,
  classes: Sequence[int] | None = None,
):  # fmt: skip
  """Distils K candidates (the leading axis of keep (K, L) and ratio (K, L)).

  Args:
    space: the SearchSpace; params, state: the teacher's.
    keep, ratio: the candidates.
    x: (N, ...) transfer inputs; teacher_logits: (N, C') the teacher's logits on them
      (restricted to `classes`).
    steps, batch_size, learning_rate, temperature: the KD budget (Adam).
    key: minibatch sampling (shared by all candidates).
    classes: the deployment's classes (the candidates' heads), or None.

  Returns:
    (params stacked over K, losses (K, steps)).
  """
  tx = optax.adam(learning_rate)
  x, teacher_logits = jnp.asarray(x), jnp.asarray(teacher_logits)
  n = x.shape[0]

  def train_one(keep_k, ratio_k):
    def loss_fn(p, xb, tb):
      logits = masked_forward(space, p, state, xb, keep_k, ratio_k, classes)
      return distillation_loss(logits, tb, None, temperature, 0.0).mean()

    def step(carry, i):
      p, opt = carry
      rows = jax.random.randint(jax.random.fold_in(key, i), (batch_size,), 0, n)
      loss, grads = jax.value_and_grad(loss_fn)(p, x[rows], teacher_logits[rows])
      updates, opt = tx.update(grads, opt, p)
      return (optax.apply_updates(p, updates), opt), loss

    (p, _), losses = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(steps))
    return p, losses

  return jax.vmap(train_one)(keep, ratio)


def evaluate_masked(space: SearchSpace, params, state, keep, ratio, x, y, *,
                    batch_size: int = 500, classes: Sequence[int] | None = None):  # fmt: skip
  """Accuracy (K,) of K candidates (params stacked over K) on (x, y), in batches."""

  def correct(p, k, r, xb, yb):
    return (masked_forward(space, p, state, xb, k, r, classes).argmax(-1) == yb).sum()

  per_candidate = jax.jit(jax.vmap(correct, in_axes=(0, 0, 0, None, None)))
  total = jnp.zeros(keep.shape[0], jnp.int32)
  for i in range(0, x.shape[0], batch_size):
    total = total + per_candidate(params, keep, ratio, x[i : i + batch_size], y[i : i + batch_size])
  return total / x.shape[0]


def distill_materialized(
  space: SearchSpace, params, state, keep, ratio, x, teacher_logits, heldout_x, heldout_y, *,
  steps: int, batch_size: int, learning_rate: float, temperature: float, key,
  classes: Sequence[int] | None = None, eval_batch_size: int = 500, seed: int = 0,
):  # fmt: skip
  """The other way to score K candidates: each materialised as a real (smaller) vgg and
  distilled in its own compiled program (same loss, budget and minibatches as
  `distill_masked`), then evaluated on (heldout_x, heldout_y).

  Returns:
    accuracy (K,) numpy; NaN for a candidate whose weights became non-finite.
  """
  import numpy as np

  from fedcomp import models
  from fedcomp.compression.autocompress.space import materialize

  tx = optax.adam(learning_rate)
  x, teacher_logits = jnp.asarray(x), jnp.asarray(teacher_logits)
  n = x.shape[0]
  num = teacher_logits.shape[1]
  accuracy = []
  for k in range(keep.shape[0]):
    kk, rk = np.asarray(keep[k]), np.asarray(ratio[k])
    plan, p0, st = materialize(space, params, state, kk, rk, classes)
    model = models.build_model('vgg', {'plan': list(plan)}, x.shape[1:], num, seed)

    def train(p, st, xs, ts, model=model):  # data as arguments, not constants
      def loss_fn(p, xb, tb):
        logits = model.apply(p, st, xb)[0]
        return distillation_loss(logits, tb, None, temperature, 0.0).mean()

      def step(carry, index):
        p, opt = carry
        rows = jax.random.randint(jax.random.fold_in(key, index), (batch_size,), 0, n)
        grads = jax.grad(loss_fn)(p, xs[rows], ts[rows])
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt), None

      return jax.lax.scan(step, (p, tx.init(p)), jnp.arange(steps))

    (trained, _), _ = jax.jit(train)(p0, st, x, teacher_logits)
    if not all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(trained)):
      accuracy.append(float('nan'))  # diverged: no accuracy
      continue
    apply = jax.jit(lambda p, st, xb, model=model: model.apply(p, st, xb)[0])
    forward = lambda xb, p=trained, st=st, apply=apply: apply(p, st, xb)  # noqa: E731
    correct = sum(
      int((np.asarray(forward(heldout_x[i : i + eval_batch_size])).argmax(-1)
           == heldout_y[i : i + eval_batch_size]).sum())
      for i in range(0, len(heldout_x), eval_batch_size)
    )  # fmt: skip
    accuracy.append(correct / len(heldout_x))
  return np.asarray(accuracy)


def magnitude_masks(params, nonzeros: int):
  """Global magnitude pruning of the conv and head kernels: masks (1 keep, 0 pruned) that
  keep the `nonzeros` largest |w| over all of them; biases and BatchNorm stay dense.

  Args:
    params: a vgg's params ({'convs', 'norms', 'head'}).
    nonzeros: how many kernel weights to keep.

  Returns:
    A pytree like params of float32 masks.
  """
  import numpy as np

  kernels = [np.abs(np.asarray(params['convs'][i]['kernel'])).ravel() for i in params['convs']]
  kernels.append(np.abs(np.asarray(params['head']['kernel'])).ravel())
  flat = np.concatenate(kernels)
  nonzeros = int(min(max(nonzeros, 1), flat.size))
  threshold = np.partition(flat, flat.size - nonzeros)[flat.size - nonzeros]

  def mask(path, a):
    is_kernel = path[-1].key == 'kernel'
    return (np.abs(np.asarray(a)) >= threshold).astype(np.float32) if is_kernel else (
      np.ones(np.shape(a), np.float32))  # fmt: skip

  return jax.tree_util.tree_map_with_path(mask, params)


def distill_pruned(apply, params, state, masks, x, teacher_logits, *, steps: int,
                   batch_size: int, learning_rate: float, temperature: float, key,
                   classes: Sequence[int] | None = None):  # fmt: skip
  """KD fine-tuning of the teacher with fixed magnitude masks (the pruning baseline at equal
  bytes): the same loss, budget and minibatches as the candidates; pruned weights stay 0.

  Args:
    apply: the teacher's apply(params, state, x) -> (logits, state).
    masks: magnitude_masks(...).
    Others as distill_masked.

  Returns:
    The trained, masked params.
  """
  tx = optax.adam(learning_rate)
  x, teacher_logits = jnp.asarray(x), jnp.asarray(teacher_logits)
  n = x.shape[0]
  cls = None if classes is None else jnp.asarray(classes)

  def loss_fn(p, xb, tb):
    logits = apply(jax.tree.map(jnp.multiply, p, masks), state, xb)[0]
    if cls is not None:
      logits = logits[:, cls]
    return distillation_loss(logits, tb, None, temperature, 0.0).mean()

  def step(carry, i):
    p, opt = carry
    rows = jax.random.randint(jax.random.fold_in(key, i), (batch_size,), 0, n)
    grads = jax.grad(loss_fn)(p, x[rows], teacher_logits[rows])
    updates, opt = tx.update(grads, opt, p)
    return (optax.apply_updates(p, updates), opt), None

  start = jax.tree.map(jnp.multiply, params, masks)
  (trained, _), _ = jax.lax.scan(step, (start, tx.init(start)), jnp.arange(steps))
  return jax.tree.map(jnp.multiply, trained, masks)
