"""Multi-layer perceptron: flatten, Dense+ReLU hidden layers, Dense logits."""

import math
from collections.abc import Sequence

import jax
from flax import nnx

from fedcomp.errors import ConfigError


class DenseStack(nnx.Module):
  """Dense layers `dense0` ... `dense{n-1}` on flattened inputs, ReLU between them.

  Subclasses call `_build` from their __init__; the last layer and those listed in
  `linear_layers` have no activation.
  """

  def _build(self, widths: Sequence[int], rngs: nnx.Rngs, linear_layers=()) -> None:
    self.num_layers = len(widths) - 1
    self.linear_layers = tuple(linear_layers)
    for i in range(self.num_layers):
      setattr(self, f'dense{i}', nnx.Linear(widths[i], widths[i + 1], rngs=rngs))

  def __call__(self, x: jax.Array, *, train: bool = False, rngs=None) -> jax.Array:
    """Returns (B, widths[-1]) outputs for a batch x (B, *input_shape)."""
    del train, rngs  # No dropout.
    h = x.reshape(x.shape[0], -1)
    for i in range(self.num_layers):
      h = getattr(self, f'dense{i}')(h)
      if i < self.num_layers - 1 and i not in self.linear_layers:
        h = jax.nn.relu(h)
    return h


class Model(DenseStack):
  """MLP classifier; parameters live under `dense0` ... `dense{len(hidden)}`."""

  def __init__(
    self,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    rngs: nnx.Rngs,
    hidden: Sequence[int] = (200, 200),
  ):
    """Creates the layers.

    Args:
      input_shape: shape of one example, e.g. (28, 28, 1); it is flattened.
      num_classes: number of logits.
      rngs: initialisation RNGs.
      hidden: widths of the hidden layers (config.model.hidden).
    """
    hidden = tuple(hidden)
    if any(int(h) != h or h <= 0 for h in hidden):
      raise ConfigError(f'config.model.hidden must be positive integers, got {hidden}')
    self._build((math.prod(input_shape), *(int(h) for h in hidden), num_classes), rngs)
