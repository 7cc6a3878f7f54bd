"""Optimizers by name: optax's and fedcomp's own transforms."""

from fedcomp.optim.make_tx import OPTIMIZERS, make_tx

__all__ = ['OPTIMIZERS', 'make_tx']
