"""The Task interface: what a batch holds, the loss, the metrics and the evaluation.

A batch is a dict of arrays with a leading batch axis: the data's per-example arrays
('x', and 'y' or any other key the task needs) plus 'mask', True on the batch's real
rows. Padded rows must change nothing, so every sum a task returns is masked.
"""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


class Task(NamedTuple):
  """One kind of learning as pure functions of a model's apply.

  Attributes:
    name: the registry name.
    batch_keys: the per-example arrays a batch must hold besides 'mask'.
    loss: (apply, params, state, batch, key) -> (mean loss over the real rows,
      (sums, new model state)); `sums` are sums over the real rows with 'count' (their
      number) among them, e.g. {'loss', 'accuracy', 'count'}. Training mode (dropout,
      batch statistics).
    per_example: (apply, params, state, batch) -> {metric: (B,) values} in inference
      mode; evaluation averages each over the real examples.
    sampled_nll: (apply, params, state, batch, key) -> mean negative log-likelihood of
      targets sampled from the model's own predictive distribution (no gradient through
      the samples): its Hessian-vector products are Fisher-vector products (FishLeg).
      None when the task has no likelihood.
    check: (output shape of one example, {key: shape of one example of the data}) ->
      None, or a one-line ConfigError when the model cannot serve the task.
  """

  name: str
  batch_keys: tuple[str, ...]
  loss: Callable
  per_example: Callable
  sampled_nll: Callable | None = None
  check: Callable | None = None


def masked_sums(values: Mapping[str, jax.Array], mask: jax.Array) -> dict[str, jax.Array]:
  """{name: Σ value·mask} plus 'count' = Σ mask, all float32."""
  m = mask.astype(jnp.float32)
  out = {k: (v.astype(jnp.float32) * m).sum() for k, v in values.items()}
  out['count'] = m.sum()
  return out


def mean_of(sums: Mapping[str, jax.Array], key: str = 'loss') -> jax.Array:
  """sums[key] / count, 0 for a batch without real rows."""
  return sums[key] / jnp.maximum(sums['count'], 1.0)


def metrics_from_sums(sums: Mapping[str, Any], prefix: str) -> dict[str, Any]:
  """{prefix/name: sum / count} for every sum but 'count', and {prefix/examples: count}."""
  count = sums['count']
  out = {f'{prefix}/{k}': v / jnp.maximum(count, 1.0) for k, v in sums.items() if k != 'count'}
  out[f'{prefix}/examples'] = count
  return out


def bind(task: Task, apply: Callable) -> tuple[Callable, Callable | None]:
  """The task's functions for one model.

  Returns:
    (loss_fn(params, state, batch, key) -> (mean loss, (sums, new state)),
     nll_of(state, batch) -> nll_fn(params, key), or None when the task has no likelihood).
  """

  def loss_fn(params, state, batch, key):
    return task.loss(apply, params, state, batch, key)

  if task.sampled_nll is None:
    return loss_fn, None

  def nll_of(state, batch):
    return lambda params, key: task.sampled_nll(apply, params, state, batch, key)

  return loss_fn, nll_of
