"""Optimal Brain Damage with the diagonal empirical Fisher: ρ_i = ½ F_ii θ_i², no update.

F_ii = λ + (1/m) Σ_k g_k,i² from m minibatch gradients of the training loss (pruned
coordinates masked), the diagonal of the OBS scorer's empirical Fisher.

References: LeCun, Denker, Solla 1990, "Optimal Brain Damage"; the diagonal-Fisher
baseline of Singh & Alistarh 2020 (WoodFisher).
"""

import jax
import jax.numpy as jnp


def make(targets, num_grads: int = 64, damping: float = 1e-5):
  """The OBD scorer.

  Args:
    targets: the pruning targets (unused: every leaf gets a diagonal).
    num_grads: m, minibatch gradients per estimate.
    damping: λ.

  Returns:
    The Scorer; needs `grad_fn` in the extras.
  """
  from fedcomp.compression.pruning.scorers import Scorer, no_observe, require
  from fedcomp.compression.pruning.scorers.obs import check_estimate_options

  del targets
  check_estimate_options(num_grads, damping)

  def curvature(state, params, masks, extras, key):
    require(extras, ('grad_fn',), 'obd')

    def add(i, acc):
      g = extras['grad_fn'](params, jax.random.fold_in(key, i))
      return jax.tree.map(lambda a, x, m: a + jnp.where(m, x, 0.0) ** 2, acc, g, masks)

    acc = jax.lax.fori_loop(0, num_grads, add, jax.tree.map(jnp.zeros_like, params))
    return state, jax.tree.map(lambda a: damping + a / num_grads, acc)

  return Scorer(
    name='obd',
    init=lambda params: (),
    observe=no_observe,
    curvature=curvature,
    scores=lambda fdiag, params: jax.tree.map(lambda f, p: 0.5 * f * p**2, fdiag, params),
    compensate=None,
    needs=('grad_fn',),
  )
