"""`split_mlp`: HoVeFL's MNIST split model, a Linear+ReLU bottom per party and a
Linear-ReLU-Linear top (two bottoms 392→64 on the left/right halves of 28×28 images, top
128→500→10 by default).

References: Li et al. 2025, HoVeFL (arXiv 2410.01644), `ClientModelmnist` /
`ServerModelmnist` of its public code.
"""

import math
from collections.abc import Sequence

import jax
from flax import nnx

from fedcomp.models.split import SplitModel, checked_split, positive


class Bottom(nnx.Module):
  """Flatten, Linear, ReLU."""

  def __init__(self, in_features: int, width: int, rngs: nnx.Rngs):
    self.dense = nnx.Linear(in_features, width, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.dense(x.reshape(x.shape[0], -1)))


class Model(SplitModel):
  """Parameters under bottom0..bottom{P-1} ({'dense'}) and top ({'dense0', 'dense1'})."""

  def __init__(
    self,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    rngs: nnx.Rngs,
    axis: str = 'columns',
    parts: int = 2,
    bounds: Sequence[Sequence[int]] | None = None,
    bottom_width: int = 64,
    hidden: int = 500,
  ):
    """Creates the parts.

    Args:
      input_shape, num_classes, rngs: from the data and seed.
      axis, parts, bounds: the feature split (fedcomp.data.feature_split.make_split).
      bottom_width: each bottom's output width (config.model.bottom_width).
      hidden: the top's hidden width (config.model.hidden).
    """
    self.split = checked_split(input_shape, axis, parts, bounds)
    width = positive(bottom_width, 'bottom_width')
    bottoms = [
      Bottom(math.prod(self.split.part_shape(p)), width, rngs) for p in range(self.split.parts)
    ]
    self._assemble(bottoms, width * len(bottoms), (positive(hidden, 'hidden'),), num_classes, rngs)
