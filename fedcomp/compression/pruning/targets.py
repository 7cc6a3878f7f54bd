"""Which weights may be pruned and how a sparsity target is spread over them.

A `Targets` object turns one model-level sparsity s into per-leaf rules:
  - prunable leaves: rank >= 2 (kernels), as jaxpruner's default filter; biases and
    normalisation scales stay dense unless a policy names them;
  - policy: (regex, sparsity) pairs over leaf paths ('conv0/kernel'); the first regex that
    fully matches decides; 0 keeps a leaf dense. A policy value is reached when the model
    reaches its final target and ramps with the schedule in proportion (value · s / s_final);
  - distribution of the others: 'uniform' (every leaf at s), 'erk' (Erdős–Rényi-Kernel
    densities ε·(Σ shape)/(Π shape), capped at 1, with Σ density·size = (1 − s)·Σ size) or
    'global' (one ranking of the scores over all of them);
  - nm=(N, M): instead of a sparsity, keep the N best of every M consecutive fan-in weights
    of each output unit (2:4 for sparse tensor cores); sparsity 1 − N/M.

`masks_from_scores` turns scores (higher = keep; NaN counts as lowest) into masks that
keep exactly the number of weights the targets ask for, never reviving a pruned weight
(a new mask is always a subset of the old one).

References: Evci et al. 2020, "Rigging the Lottery" (ERK); jaxpruner (Lee et al. 2023,
arXiv 2304.14082) sparsity distributions; Mishra et al. 2021, "Accelerating Sparse Deep
Neural Networks" (2:4).
"""

import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedcomp.errors import ConfigError
from fedcomp.utils.param_paths import leaf_paths

PyTree = Any
DISTRIBUTIONS = ('uniform', 'erk', 'global')


def check_sparsity(value, key: str) -> float:
  """A float in [0, 1), or a one-line ConfigError naming `key`."""
  ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
  if not ok or not 0.0 <= value < 1.0:
    raise ConfigError(f'{key}={value!r} must be a sparsity in [0, 1)')
  return float(value)


class Targets(NamedTuple):
  """Per-leaf pruning rules for one params structure (see the module docstring).

  Attributes:
    paths: leaf paths in jax.tree.leaves order.
    shapes: leaf shapes.
    fixed: per leaf, the policy's final sparsity, or None for a leaf the distribution sets;
      0.0 for leaves that stay dense.
    distribution: 'uniform', 'erk' or 'global'.
    final: the model-level final sparsity s_final.
    nm: (N, M) or None.
    treedef: the params' tree structure.
  """

  paths: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]
  fixed: tuple[float | None, ...]
  distribution: str
  final: float
  nm: tuple[int, int] | None
  treedef: Any

  @property
  def prunable(self) -> tuple[bool, ...]:
    return tuple(f is None or f > 0 for f in self.fixed)

  def leaf_sparsities(self, sparsity) -> list:
    """Per-leaf sparsity at model-level `sparsity` (traced or not); None for 'global' leaves."""
    ramp = sparsity / self.final if self.final > 0 else 0.0
    out = [None if f is None else f * ramp for f in self.fixed]
    free = [i for i, f in enumerate(self.fixed) if f is None]
    if self.distribution == 'uniform':
      for i in free:
        out[i] = sparsity
    elif self.distribution == 'erk' and free:
      for i, d in zip(free, erk_densities([self.shapes[i] for i in free], sparsity)):
        out[i] = 1.0 - d
    return out


def erk_densities(shapes: Sequence[tuple[int, ...]], sparsity):
  """ERK densities d_i = min(1, ε·p_i), p_i = Σ shape_i / Π shape_i, with
  Σ d_i·N_i = (1 − s)·Σ N_i (leaves that would exceed density 1 are capped and ε re-solved).

  Args:
    shapes: the leaves' shapes.
    sparsity: the overall sparsity s (may be traced).

  Returns:
    A list of densities (jnp scalars).
  """
  sizes = jnp.array([math.prod(s) for s in shapes], jnp.float32)
  p = jnp.array([sum(s) / math.prod(s) for s in shapes], jnp.float32)
  budget = (1.0 - sparsity) * sizes.sum()
  capped = jnp.zeros(len(shapes), bool)
  for _ in range(len(shapes)):  # each pass caps at least one more leaf or changes nothing
    eps = (budget - jnp.where(capped, sizes, 0).sum()) / jnp.where(capped, 0, p * sizes).sum()
    capped = capped | (eps * p > 1.0)
  eps = (budget - jnp.where(capped, sizes, 0).sum()) / jnp.maximum(
    jnp.where(capped, 0, p * sizes).sum(), 1e-30
  )
  d = jnp.where(capped, 1.0, eps * p)
  return [d[i] for i in range(len(shapes))]


def make_targets(
  params: PyTree,
  sparsity: float,
  distribution: str = 'uniform',
  policy: Sequence[tuple[str, float]] = (),
  nm: Sequence[int] | None = None,
) -> Targets:
  """The pruning rules for `params` (see the module docstring).

  Args:
    params: the params pytree (arrays or ShapeDtypeStructs).
    sparsity: the final model-level sparsity in [0, 1).
    distribution: 'uniform', 'erk' or 'global'.
    policy: (regex, sparsity) pairs over leaf paths.
    nm: (N, M) for N:M sparsity, or None.

  Returns:
    The Targets.
  """
  check_target_options(sparsity, distribution, policy, nm)
  paths = leaf_paths(params)
  shapes = tuple(tuple(jnp.shape(x)) for x in jax.tree.leaves(params))
  compiled = [(re.compile(rx), float(v)) for rx, v in policy]
  unused = [rx.pattern for rx, _ in compiled if not any(rx.fullmatch(p) for p in paths)]
  if unused:
    raise ConfigError(
      f'pruning.policy regex {unused[0]!r} matches no parameter; paths: {", ".join(paths[:8])}'
      + (', ...' if len(paths) > 8 else '')
    )
  fixed = []
  for path, shape in zip(paths, shapes):
    value = next((v for rx, v in compiled if rx.fullmatch(path)), None)
    if value is None and len(shape) < 2:
      value = 0.0
    fixed.append(value)
  if not any(f is None or f > 0 for f in fixed):
    raise ConfigError('pruning: no leaf is prunable (policy keeps every kernel dense)')
  nm_t = None if nm is None else (int(nm[0]), int(nm[1]))
  return Targets(
    tuple(paths), shapes, tuple(fixed), distribution, float(sparsity), nm_t,
    jax.tree.structure(params),
  )  # fmt: skip


def check_target_options(sparsity, distribution, policy, nm) -> None:
  """One-line ConfigErrors for bad target options (before anything is traced)."""
  check_sparsity(sparsity, 'pruning.sparsity')
  if distribution not in DISTRIBUTIONS:
    raise ConfigError(
      f'pruning.distribution={distribution!r} is unknown; known: {", ".join(DISTRIBUTIONS)}'
    )
  for item in policy:
    if len(item) != 2 or not isinstance(item[0], str):
      raise ConfigError(f'pruning.policy entry {item!r} must be a (regex, sparsity) pair')
    check_sparsity(item[1], f'pruning.policy[{item[0]!r}]')
    try:
      re.compile(item[0])
    except re.error as e:
      raise ConfigError(f'pruning.policy regex {item[0]!r} is invalid: {e}') from None
  if nm is not None:
    ok = len(nm) == 2 and all(isinstance(v, int) and v > 0 for v in nm) and nm[0] < nm[1]
    if not ok:
      raise ConfigError(f'pruning.nm={nm!r} must be (N, M) integers with 0 < N < M')


def _keep_top(flat_scores: jax.Array, keep: jax.Array) -> jax.Array:
  """Boolean mask of the `keep` highest scores (ties broken by position)."""
  n = flat_scores.shape[0]
  order = jnp.argsort(-flat_scores, stable=True)
  rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
  return rank < keep


def _nm_mask(scores: jax.Array, n: int, m: int) -> jax.Array:
  """N:M over the fan-in: groups of M consecutive weights along the flattened input axes
  of each output unit (the last axis); a partial last group is padded with −inf."""
  out_dim = scores.shape[-1]
  fan_in = scores.size // out_dim
  s = scores.reshape(fan_in, out_dim).T  # (out, fan_in)
  pad = (-fan_in) % m
  s = jnp.pad(s, ((0, 0), (0, pad)), constant_values=-jnp.inf).reshape(out_dim, -1, m)
  rank = jnp.argsort(jnp.argsort(-s, axis=-1, stable=True), axis=-1)
  keep = (rank < n).reshape(out_dim, -1)[:, :fan_in]
  return keep.T.reshape(scores.shape)


def masks_from_scores(targets: Targets, scores: PyTree, masks: PyTree, sparsity) -> PyTree:
  """New masks: the best-scoring weights kept at `sparsity`, pruned weights stay pruned.

  Args:
    targets: the rules.
    scores: params-shaped scores (higher = more important).
    masks: the current masks (bool, params-shaped; scalar True for dense leaves).
    sparsity: the model-level sparsity to reach now (may be traced).

  Returns:
    The new masks, with the same structure (dense leaves keep their scalar True).
  """
  score_leaves = jax.tree.leaves(scores)
  mask_leaves = jax.tree.leaves(masks)
  per_leaf = targets.leaf_sparsities(sparsity)
  # Pruned weights can never come back: they rank below every live weight.
  alive = [jnp.broadcast_to(mk, s.shape) for s, mk in zip(score_leaves, mask_leaves)]
  ranked = [
    jnp.where(a & ~jnp.isnan(s), s.astype(jnp.float32), -jnp.inf)
    for s, a in zip(score_leaves, alive)
  ]
  out = list(mask_leaves)
  if targets.nm is not None:
    n, m = targets.nm
    for i, prunable in enumerate(targets.prunable):
      if prunable:
        out[i] = _nm_mask(ranked[i], n, m) & alive[i]
    return jax.tree.unflatten(targets.treedef, out)
  global_idx = []
  for i, (prunable, s) in enumerate(zip(targets.prunable, per_leaf)):
    if not prunable:
      continue
    if s is None:
      global_idx.append(i)
      continue
    size = ranked[i].size
    keep = jnp.round((1.0 - s) * size).astype(jnp.int32)
    out[i] = _keep_top(ranked[i].ravel(), keep).reshape(ranked[i].shape) & alive[i]
  if global_idx:
    flat = jnp.concatenate([ranked[i].ravel() for i in global_idx])
    keep = jnp.round((1.0 - sparsity) * flat.shape[0]).astype(jnp.int32)
    kept = _keep_top(flat, keep)
    start = 0
    for i in global_idx:
      size = ranked[i].size
      out[i] = kept[start : start + size].reshape(ranked[i].shape) & alive[i]
      start += size
  return jax.tree.unflatten(targets.treedef, out)


def dense_masks(targets: Targets) -> PyTree:
  """All-True masks: full arrays for prunable leaves, a scalar True for the others."""
  leaves = [
    jnp.ones(shape, bool) if p else jnp.ones((), bool)
    for shape, p in zip(targets.shapes, targets.prunable)
  ]
  return jax.tree.unflatten(targets.treedef, leaves)


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
  """params with masked-out weights set to exactly zero."""
  return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def sparsity_report(targets: Targets, masks: PyTree) -> dict[str, float]:
  """{'sparsity': zeros / prunable size, 'sparsity_all': zeros / all params, per-leaf ...}."""
  out, zeros, prunable_size = {}, 0, 0
  total = sum(math.prod(s) for s in targets.shapes)
  for path, shape, p, m in zip(
    targets.paths, targets.shapes, targets.prunable, jax.tree.leaves(masks)
  ):
    if not p:
      continue
    z = int(math.prod(shape) - int(jnp.sum(m)))
    zeros += z
    prunable_size += math.prod(shape)
    out[f'sparsity/{path}'] = z / math.prod(shape)
  out['sparsity'] = zeros / max(prunable_size, 1)
  out['sparsity_all'] = zeros / max(total, 1)
  return out
