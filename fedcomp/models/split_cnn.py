"""`split_cnn`: HoVeFL's CIFAR-10/SVHN split model, a LeNet-style conv bottom per party
(Conv(C→6, 5×5)–ReLU–pool–Conv(6→16, 5×5)–ReLU–pool, flattened) and a dense top
(→120→84→classes). On the top/bottom halves of 32×32×3 images each bottom gives 16×1×5, so
the top's input is 160, as in the authors' code; `padding='SAME'` fits 28×28 images.

References: Li et al. 2025, HoVeFL (arXiv 2410.01644), `VHFLGroupCifar` of its public code.
"""

from collections.abc import Sequence

import jax
from flax import nnx

from fedcomp.errors import ConfigError
from fedcomp.models.split import SplitModel, checked_split, positive

PADDINGS = ('VALID', 'SAME')


class Bottom(nnx.Module):
  """Two conv–ReLU–max-pool stages, flattened."""

  def __init__(self, channels: int, features: Sequence[int], padding: str, rngs: nnx.Rngs):
    self.conv0 = nnx.Conv(channels, features[0], (5, 5), padding=padding, rngs=rngs)
    self.conv1 = nnx.Conv(features[0], features[1], (5, 5), padding=padding, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv in (self.conv0, self.conv1):
      x = nnx.max_pool(jax.nn.relu(conv(x)), window_shape=(2, 2), strides=(2, 2))
    return x.reshape(x.shape[0], -1)


class Model(SplitModel):
  """Parameters under bottom0..bottom{P-1} ({'conv0', 'conv1'}) and top ({'dense0'..})."""

  def __init__(
    self,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    rngs: nnx.Rngs,
    axis: str = 'rows',
    parts: int = 2,
    bounds: Sequence[Sequence[int]] | None = None,
    features: Sequence[int] = (6, 16),
    dense: Sequence[int] = (120, 84),
    padding: str = 'VALID',
  ):
    """Creates the parts.

    Args:
      input_shape, num_classes, rngs: from the data and seed.
      axis, parts, bounds: the feature split ('rows' or 'columns'; see make_split).
      features: the two convs' output channels (config.model.features).
      dense: the top's hidden widths (config.model.dense).
      padding: 'VALID' (the authors') or 'SAME' (config.model.padding).
    """
    if axis == 'flat':
      raise ConfigError("config.model.axis='flat': split_cnn's bottoms need image slices")
    if padding not in PADDINGS:
      raise ConfigError(f'config.model.padding={padding!r} is unknown; known: VALID, SAME')
    self.split = checked_split(input_shape, axis, parts, bounds)
    feats = tuple(positive(f, 'features') for f in features)
    if len(feats) != 2:
      raise ConfigError(f'config.model.features={tuple(features)} must be two channel counts')
    width = 0
    for p in range(self.split.parts):
      h, w = self.split.part_shape(p)[:2]
      for _ in range(2):
        h, w = (h - 4, w - 4) if padding == 'VALID' else (h, w)
        h, w = h // 2, w // 2
      if h < 1 or w < 1:
        raise ConfigError(
          f'config.model: party {p} sees a {self.split.part_shape(p)} slice, too small for '
          f"two 5×5 convs and pools with padding={padding!r} (try padding='SAME')"
        )
      width += h * w * feats[1]
    channels = int(input_shape[-1])
    bottoms = [Bottom(channels, feats, padding, rngs) for _ in range(self.split.parts)]
    self._assemble(bottoms, width, tuple(positive(d, 'dense') for d in dense), num_classes, rngs)
