"""Optimal Brain Surgeon with a block-diagonal empirical-Fisher inverse (oBERT/SparseML).

Each prunable leaf is flattened and cut into blocks of B weights; in every block
F = λI + (1/m) Σ_k g_k g_kᵀ from m minibatch gradients (pruned coordinates masked) is
inverted by m Woodbury updates from λ⁻¹I (fedcomp.compression.pruning.obs_algebra). Scores
ρ = θ²/(2 diag F⁻¹); at a mask change the newly pruned weights are removed with the
independent OBS update δθ = −F⁻¹(θ ⊙ 1_P / diag F⁻¹). By default the inverse is rebuilt at
every pruning step from fresh gradients (SparseML's OBSPruningModifier discards it) and kept
nowhere between steps; with `recompute=False` the first estimate is kept in the scorer's
state and reused at every later increment. Memory: d·B floats for d prunable weights.

References: Kurtic et al. 2022, "The Optimal BERT Surgeon" (arXiv 2203.07259); SparseML
OBSPruningModifier (num_grads=1024, fisher_block_size=50, damp=1e-7 there);
Singh & Alistarh 2020, "WoodFisher".
"""

import math

import jax
import jax.numpy as jnp

from fedcomp.compression.pruning import obs_algebra
from fedcomp.errors import ConfigError


def check_estimate_options(num_grads, damping, block_size: int = 1) -> None:
  if not isinstance(num_grads, int) or isinstance(num_grads, bool) or num_grads < 1:
    raise ConfigError(f'pruning.scorer_kwargs.num_grads={num_grads!r} must be an integer >= 1')
  if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
    raise ConfigError(f'pruning.scorer_kwargs.block_size={block_size!r} must be an integer >= 1')
  if not isinstance(damping, int | float) or not damping > 0 or not math.isfinite(damping):
    raise ConfigError(f'pruning.scorer_kwargs.damping={damping!r} must be a finite number > 0')


def make(
  targets, num_grads: int = 256, block_size: int = 50, damping: float = 1e-5, recompute: bool = True
):
  """The block-OBS scorer.

  Args:
    targets: the pruning targets (which leaves get blocks).
    num_grads: m, minibatch gradients per estimate.
    block_size: B.
    damping: λ.
    recompute: rebuild the inverse at every pruning step (False: keep the first one).

  Returns:
    The Scorer; needs `grad_fn` in the extras. Its curvature is a list with the (k, B, B)
    inverse blocks of each prunable leaf (None for the others).
  """
  from fedcomp.compression.pruning.scorers import Scorer, no_observe, require

  check_estimate_options(num_grads, damping, block_size)

  def curvature(state, params, masks, extras, key):
    require(extras, ('grad_fn',), 'obs')
    prunable = targets.prunable
    leaves = jax.tree.leaves(params)
    mask_leaves = jax.tree.leaves(masks)
    sizes = [x.size for x in leaves]

    def blocks_of(tree):
      flat = jax.tree.leaves(tree)
      return [
        obs_algebra.to_blocks(jnp.where(m, g, 0.0).ravel(), block_size)
        for g, m, p in zip(flat, mask_leaves, prunable)
        if p
      ]

    finv0 = [
      obs_algebra.woodbury_init(-(-n // block_size), block_size, damping)
      for n, p in zip(sizes, prunable)
      if p
    ]

    def add(i, finv):
      g = blocks_of(extras['grad_fn'](params, jax.random.fold_in(key, i)))
      return [obs_algebra.woodbury_add(f, b, num_grads) for f, b in zip(finv, g)]

    if recompute:
      finv = jax.lax.fori_loop(0, num_grads, add, finv0)
    else:  # the first estimate, kept in the state
      built, kept = state
      finv = jax.lax.cond(built, lambda: kept, lambda: jax.lax.fori_loop(0, num_grads, add, finv0))
      state = (jnp.ones((), bool), finv)
    it = iter(finv)
    return state, [next(it) if p else None for p in prunable]

  def init(params):
    if recompute:
      return ()
    sizes = [x.size for x in jax.tree.leaves(params)]
    blocks = [
      jnp.zeros((-(-n // block_size), block_size, block_size), jnp.float32)
      for n, p in zip(sizes, targets.prunable)
      if p
    ]
    return (jnp.zeros((), bool), blocks)

  def scores(curv, params):
    def one(f, x):
      if f is None:  # a dense leaf: never ranked
        return jnp.abs(x)
      d = obs_algebra.block_diagonal(f).reshape(-1)[: x.size]
      return obs_algebra.scores(x.ravel(), d).reshape(x.shape)

    out = [one(f, x) for f, x in zip(curv, jax.tree.leaves(params))]
    return jax.tree.unflatten(targets.treedef, out)

  def compensate(curv, params, removed):
    removed_leaves = jax.tree.leaves(removed)

    def one(i, f, x):
      d = obs_algebra.block_diagonal(f).reshape(-1)[: x.size]
      r = jnp.broadcast_to(removed_leaves[i], x.shape).ravel()

      def matvec(v):
        return obs_algebra.block_matvec(f, obs_algebra.to_blocks(v, block_size)).reshape(-1)[
          : x.size
        ]

      return obs_algebra.independent_update(matvec, x.ravel(), r, d).reshape(x.shape)

    leaves = jax.tree.leaves(params)
    out = [
      one(i, f, x) if f is not None else jnp.zeros_like(x)
      for i, (f, x) in enumerate(zip(curv, leaves))
    ]
    return jax.tree.unflatten(targets.treedef, out)

  return Scorer(
    name='obs',
    init=init,
    observe=no_observe,
    curvature=curvature,
    scores=scores,
    compensate=compensate,
    needs=('grad_fn',),
  )
