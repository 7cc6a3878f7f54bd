"""Optimizers by name: optax's and fedcomp's own transforms."""

from fedcomp.optim.fishleg_transform import fishleg, inverse_fisher, scale_by_fishleg
from fedcomp.optim.make_tx import OPTIMIZERS, make_tx

__all__ = ['OPTIMIZERS', 'fishleg', 'inverse_fisher', 'make_tx', 'scale_by_fishleg']
