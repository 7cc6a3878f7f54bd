"""Magnitude pruning: keep the largest |θ|, no weight update.

References: Han et al. 2015, "Learning both Weights and Connections for Efficient Neural
Networks"; Zhu & Gupta 2017 (gradual magnitude pruning).
"""

import jax
import jax.numpy as jnp


def make(targets):
  """The magnitude scorer (no curvature, no compensation)."""
  from fedcomp.compression.pruning.scorers import Scorer, no_observe

  del targets
  return Scorer(
    name='magnitude',
    init=lambda params: (),
    observe=no_observe,
    curvature=lambda state, params, masks, extras, key: (state, ()),
    scores=lambda curv, params: jax.tree.map(jnp.abs, params),
    compensate=None,
  )
