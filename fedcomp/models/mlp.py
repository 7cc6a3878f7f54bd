"""Multi-layer perceptron: flatten, Dense+ReLU hidden layers, Dense logits."""

import math
from collections.abc import Sequence

import jax
from flax import nnx

from fedcomp.errors import ConfigError
from fedcomp.models import taps


class DenseStack(nnx.Module):
  """Dense layers `dense0` ... `dense{n-1}` on flattened inputs, ReLU between them.

  Subclasses call `_build` from their __init__; the last layer and those listed in
  `linear_layers` have no activation. With `batch_norm`, a BatchNorm layer `norm{i}` follows
  every hidden dense layer (before its ReLU). The input of layer `tap_layer` is recorded as
  feature `tap_name` (see fedcomp.models.taps).
  """

  def _build(
    self,
    widths: Sequence[int],
    rngs: nnx.Rngs,
    linear_layers=(),
    batch_norm: bool = False,
    tap: tuple[int, str] | None = None,
  ) -> None:
    self.num_layers = len(widths) - 1
    self.linear_layers = tuple(linear_layers)
    self.batch_norm = batch_norm
    self.tap_layer, self.tap_name = (-1, '') if tap is None else tap
    for i in range(self.num_layers):
      setattr(self, f'dense{i}', nnx.Linear(widths[i], widths[i + 1], rngs=rngs))
      if batch_norm and i < self.num_layers - 1:
        setattr(self, f'norm{i}', taps.BatchNorm(widths[i + 1], momentum=0.9, rngs=rngs))

  def __call__(self, x: jax.Array, *, train: bool = False, rngs=None, mask=None) -> jax.Array:
    """Returns (B, widths[-1]) outputs for a batch x (B, *input_shape)."""
    del rngs  # No dropout.
    h = x.reshape(x.shape[0], -1)
    for i in range(self.num_layers):
      if i == self.tap_layer:
        taps.feature(self.tap_name, h)
      h = getattr(self, f'dense{i}')(h)
      if i < self.num_layers - 1 and self.batch_norm:
        m = None if mask is None else mask[:, None]
        h = getattr(self, f'norm{i}')(h, use_running_average=not train, mask=m)
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
    batch_norm: bool = False,
  ):
    """Creates the layers.

    Args:
      input_shape: shape of one example, e.g. (28, 28, 1); it is flattened.
      num_classes: number of logits.
      rngs: initialisation RNGs.
      hidden: widths of the hidden layers (config.model.hidden).
      batch_norm: a BatchNorm layer after each hidden layer (config.model.batch_norm).
    """
    hidden = tuple(hidden)
    if any(int(h) != h or h <= 0 for h in hidden):
      raise ConfigError(f'config.model.hidden must be positive integers, got {hidden}')
    widths = (math.prod(input_shape), *(int(h) for h in hidden), num_classes)
    self._build(widths, rngs, batch_norm=bool(batch_norm), tap=(len(hidden), 'penultimate'))
