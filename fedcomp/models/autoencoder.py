"""The deep auto-encoder of the second-order optimisation benchmarks (Hinton & Salakhutdinov).

Encoder widths `encoder` (default 1000-500-250-30 as the MNIST benchmark of Martens
2010, K-FAC and FishLeg), a linear code layer, the mirrored decoder, and one logit per
input pixel (Bernoulli likelihood: train with sigmoid cross-entropy against the input).

References: Hinton & Salakhutdinov 2006, "Reducing the dimensionality of data with neural
networks" (Science); Garcia et al. 2023 (FishLeg, ICLR), the auto-encoder benchmarks.
"""

import math
from collections.abc import Sequence

from flax import nnx

from fedcomp.errors import ConfigError
from fedcomp.models.mlp import DenseStack


class Model(DenseStack):
  """flatten -> encoder (ReLU, linear code) -> decoder (ReLU) -> input-sized logits.

  Parameters live under dense0 ... dense{2 * len(encoder) - 1}; the code is tap feature
  'code' (no 'penultimate': not a classifier).
  """

  def __init__(
    self,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    rngs: nnx.Rngs,
    encoder: Sequence[int] = (1000, 500, 250, 30),
  ):
    """Creates the layers.

    Args:
      input_shape: shape of one example; the output has prod(input_shape) logits.
      num_classes: unused (the targets are the inputs).
      rngs: initialisation RNGs.
      encoder: widths of the encoder layers, the last one the code (config.model.encoder).
    """
    del num_classes
    encoder = tuple(int(w) for w in encoder)
    if not encoder or min(encoder) <= 0:
      raise ConfigError(f'config.model.encoder must be positive integers, got {encoder}')
    size = math.prod(input_shape)
    widths = (size, *encoder, *encoder[-2::-1], size)
    code = len(encoder) - 1  # the code layer is linear
    self._build(widths, rngs, linear_layers=(code,), tap=(code + 1, 'code'))
