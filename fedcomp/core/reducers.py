"""Reducers: how the client-map primitive turns a cohort's per-client values into one result.

A Reducer has three pure functions. `summand(value)` is what each client contributes to
a canonical sum over the cohort (fedcomp.core.client_map fixes its order); `stack(value)`
(optional) is what is kept per client and gathered, cohort-sized, in slot order; and
`finish(total, stacked, valid)` makes the result from the sum, the stack and the (size,)
mask of real clients. Values of padded slots are zeros in both.

Aggregators are reducers of `ClientOutput`s (`update`, `weight`, `group`) that the FedAvg
family applies to the clients' updates, registered by name (`config.aggregator_name`):
'mean' (weighted mean, the default), 'median' (coordinate-wise median) and
'trimmed_mean' (coordinate-wise β-trimmed mean).

References: Yin, Chen, Ramchandran, Bartlett 2018, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates" (ICML): coordinate-wise median and trimmed mean.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedcomp.errors import ConfigError

PyTree = Any
TINY = 1e-12


class Reducer(NamedTuple):
  """See the module docstring."""

  summand: Callable[[Any], PyTree]
  finish: Callable[[PyTree, PyTree, jax.Array], Any]
  stack: Callable[[Any], PyTree] | None = None


def _scale(tree, w):
  return jax.tree.map(lambda u: w.astype(u.dtype) * u, tree)


def total() -> Reducer:
  """The sum of the values over the cohort (any pytree of arrays)."""
  return Reducer(summand=lambda v: v, finish=lambda t, s, valid: t)


def stacked() -> Reducer:
  """The values themselves: finish returns (values (size, ...), valid (size,))."""
  return Reducer(summand=lambda v: (), finish=lambda t, s, valid: (s, valid), stack=lambda v: v)


def weighted_mean() -> Reducer:
  """Σ_i w_i u_i / Σ_i w_i of the clients' updates u (ClientOutput.update, .weight)."""

  def finish(t, s, valid):
    sums, weight = t
    # An explicit reciprocal: XLA may rewrite x / broadcast(w) as x * (1 / w) in one program
    # and not in another, which would make results depend on the surrounding program.
    inverse = 1.0 / jnp.maximum(weight, TINY)
    return jax.tree.map(lambda x: x * inverse.astype(x.dtype), sums)

  return Reducer(summand=lambda v: (_scale(v.update, v.weight), v.weight), finish=finish)


def _group_summand(num_groups: int):
  def summand(v):
    one_hot = jax.nn.one_hot(v.group, num_groups, dtype=jnp.float32) * v.weight
    per_group = jax.tree.map(
      lambda u: jnp.einsum('g,...->g...', one_hot.astype(u.dtype), u), v.update
    )
    return per_group, one_hot

  return summand


def grouped_sums(num_groups: int) -> Reducer:
  """Per-group weighted sums: finish returns (Σ_{i∈g} w_i u_i stacked (G, ...), W_g (G,)),
  for servers that combine the groups themselves (HoVeFL's never-cleared running means).

  Args:
    num_groups: number of groups; client i's group is ClientOutput.group in [0, num_groups).
  """
  return Reducer(summand=_group_summand(num_groups), finish=lambda t, s, valid: t)


def combine_groups(sums, weights, gamma) -> PyTree:
  """Σ_g γ_g · (sums_g / W_g) / Σ_{g present} γ_g over the groups with weight W_g > 0.

  With one group present the result is sums_g · (1 / W_g) exactly, as `weighted_mean`.
  """
  present = (weights > 0).astype(jnp.float32) * gamma
  coef = present / jnp.maximum(present.sum(), TINY)
  per_weight = coef * (1.0 / jnp.maximum(weights, TINY))  # γ_g / (Σγ · W_g): mean, combine

  def combine(x):
    out = jnp.zeros(x.shape[1:], x.dtype)
    for g in range(x.shape[0]):  # fixed order
      out = out + x[g] * per_weight[g].astype(x.dtype)
    return out

  return jax.tree.map(combine, sums)


def grouped_mean(num_groups: int, group_weights: Sequence[float] | None = None) -> Reducer:
  """Weighted means within groups, then a weighted combination of the groups' means.

  Client i belongs to group g_i = ClientOutput.group in [0, num_groups). Groups without
  clients (weight 0) are left out and the others' weights renormalised, so
  result = Σ_g γ_g · mean_g / Σ_{g present} γ_g (HoVeFL: horizontal and vertical means,
  then 50/50).

  Args:
    num_groups: number of groups.
    group_weights: γ_g >= 0 (default: equal).

  Returns:
    The Reducer.
  """
  gamma = jnp.ones(num_groups) if group_weights is None else jnp.asarray(group_weights, jnp.float32)
  if gamma.shape != (num_groups,) or bool((gamma < 0).any()):
    raise ConfigError(f'group_weights={group_weights} must be {num_groups} numbers >= 0')

  def finish(t, s, valid):
    sums, weights = t
    return combine_groups(sums, weights, gamma)

  return Reducer(summand=_group_summand(num_groups), finish=finish)


def _robust(finish):
  """A robust rule over the clients' updates: unweighted, but a client of weight 0 (and a
  spare slot) is left out."""

  def wrapped(t, s, valid):
    updates, weights = s
    return finish(updates, valid & (weights > 0))

  return Reducer(summand=lambda v: (), finish=wrapped, stack=lambda v: (v.update, v.weight))


def _sorted_valid(values, valid):
  """Values sorted along the client axis with left-out slots last (+inf), and the count."""
  n = valid.sum()

  def sort(a):
    mask = jnp.reshape(valid, valid.shape + (1,) * (a.ndim - 1))
    return jnp.sort(jnp.where(mask, a, jnp.inf), axis=0)

  return jax.tree.map(sort, values), n


def coordinate_median() -> Reducer:
  """The coordinate-wise median of the clients' updates (unweighted, clients of weight 0
  left out; Yin et al. 2018)."""

  def finish(updates, valid):
    ordered, n = _sorted_valid(updates, valid)
    lo, hi = (n - 1) // 2, n // 2

    def median(a):
      return 0.5 * (jnp.take(a, lo, axis=0) + jnp.take(a, hi, axis=0))

    return jax.tree.map(median, ordered)

  return _robust(finish)


def trimmed_mean(beta: float = 0.1) -> Reducer:
  """The coordinate-wise β-trimmed mean: per coordinate, drop the floor(β·n) smallest and
  largest of the n clients' values and average the rest (unweighted, clients of weight 0
  left out; Yin et al. 2018).

  Args:
    beta: the share trimmed at each end, in [0, 0.5).

  Returns:
    The Reducer.
  """
  if not 0.0 <= beta < 0.5:
    raise ConfigError(f'config.aggregator.beta={beta} must be in [0, 0.5)')

  def finish(updates, valid):
    ordered, n = _sorted_valid(updates, valid)
    k = jnp.floor(beta * n).astype(jnp.int32)

    def mean(a):
      rank = jnp.arange(a.shape[0])
      keep = (rank >= k) & (rank < n - k)
      keep = jnp.reshape(keep, keep.shape + (1,) * (a.ndim - 1))
      kept = jnp.where(keep, a, jnp.zeros((), a.dtype)).sum(0)
      return kept / jnp.maximum(n - 2 * k, 1).astype(a.dtype)

    return jax.tree.map(mean, ordered)

  return _robust(finish)


AGGREGATORS = {
  'mean': weighted_mean,
  'median': coordinate_median,
  'trimmed_mean': trimmed_mean,
}


def combine(*reducers: Reducer) -> Reducer:
  """One reducer of a tuple of values: reducers[i] reduces values[i]."""

  def stack(v):
    return tuple(r.stack(x) if r.stack is not None else () for r, x in zip(reducers, v))

  def finish(t, s, valid):
    s = s if s != () else ((),) * len(reducers)  # no reducer stacks anything
    return tuple(r.finish(ti, si, valid) for r, ti, si in zip(reducers, t, s))

  return Reducer(
    summand=lambda v: tuple(r.summand(x) for r, x in zip(reducers, v)),
    finish=finish,
    stack=stack if any(r.stack is not None for r in reducers) else None,
  )
