"""Feature partitions for vertical federated learning: every example's features cut into P
parties' slices that cover them exactly once.

A split cuts one axis of an example into contiguous bands `bounds = ((start, stop), ...)`:
`axis='rows'` (image rows: top/bottom halves of 32×32 images, as HoVeFL's CIFAR-10/SVHN
code), `axis='columns'` (image columns: left/right halves of 28×28 images, as its MNIST
code) or `axis='flat'` (the flattened feature vector, any list of contiguous slices).
Without explicit bounds, `parts` near-equal bands. Validation names the first overlapping
or missing feature, so a bad split fails in one line before anything is built.

References: Li et al. 2025, "A Novel Framework of Horizontal-Vertical Hybrid Federated
Learning for EdgeIoT" (IEEE Networking Letters; arXiv 2410.01644).
"""

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np

from fedcomp.errors import ConfigError

AXES = ('rows', 'columns', 'flat')


@dataclasses.dataclass(frozen=True)
class FeatureSplit:
  """P contiguous bands of one axis of an example.

  Attributes:
    axis: 'rows', 'columns' or 'flat'.
    bounds: ((start, stop), ...) per party, in party order.
    input_shape: the shape of one example (H, W, C) (or any shape for 'flat').
  """

  axis: str
  bounds: tuple[tuple[int, int], ...]
  input_shape: tuple[int, ...]

  @property
  def parts(self) -> int:
    return len(self.bounds)

  def part_shape(self, p: int) -> tuple[int, ...]:
    """The shape of party p's slice of one example."""
    start, stop = self.bounds[p]
    if self.axis == 'flat':
      return (stop - start,)
    shape = list(self.input_shape)
    shape[0 if self.axis == 'rows' else 1] = stop - start
    return tuple(shape)

  def __call__(self, x: jax.Array) -> list[jax.Array]:
    """Party slices of a batch x (B, *input_shape)."""
    if self.axis == 'flat':
      flat = x.reshape(x.shape[0], -1)
      return [flat[:, a:b] for a, b in self.bounds]
    if self.axis == 'rows':
      return [x[:, a:b] for a, b in self.bounds]
    return [x[:, :, a:b] for a, b in self.bounds]


def axis_size(axis: str, input_shape: Sequence[int]) -> int:
  """The number of features along `axis` of an example of `input_shape`."""
  if axis == 'flat':
    return math.prod(input_shape)
  if len(input_shape) < 2:
    raise ConfigError(f'a {axis!r} split needs image examples (H, W, C); got shape {input_shape}')
  return int(input_shape[0 if axis == 'rows' else 1])


def check_cover(bounds, size: int, key: str) -> tuple[tuple[int, int], ...]:
  """Checks that the bands cover features 0..size-1 exactly once; returns them as ints.

  Raises:
    ConfigError naming the first feature covered twice or not at all.
  """
  out = []
  for band in bounds:
    if len(band) != 2 or int(band[0]) != band[0] or int(band[1]) != band[1]:
      raise ConfigError(f'config.{key}: each slice is (start, stop) integers, got {band!r}')
    a, b = int(band[0]), int(band[1])
    if not 0 <= a < b <= size:
      raise ConfigError(f'config.{key}: slice ({a}, {b}) is empty or outside 0..{size}')
    out.append((a, b))
  count = np.zeros(size, np.int64)
  for a, b in out:
    count[a:b] += 1
  if (count > 1).any():
    raise ConfigError(f'config.{key}: slices overlap at feature {int(np.argmax(count > 1))}')
  if (count == 0).any():
    missing = np.flatnonzero(count == 0)
    raise ConfigError(
      f'config.{key}: slices leave {len(missing)} feature(s) out, the first {int(missing[0])} '
      f'of 0..{size - 1}'
    )
  return tuple(out)


def make_split(
  input_shape: Sequence[int], axis: str = 'columns', parts: int = 2, bounds=None,
  key: str = 'model',
) -> FeatureSplit:  # fmt: skip
  """A checked FeatureSplit.

  Args:
    input_shape: the shape of one example.
    axis: 'rows', 'columns' or 'flat' (config.<key>.axis).
    parts: number of near-equal bands when `bounds` is None (config.<key>.parts).
    bounds: explicit ((start, stop), ...) bands (config.<key>.bounds), or None.
    key: the config section named in errors.

  Returns:
    The FeatureSplit.
  """
  if axis not in AXES:
    raise ConfigError(f'config.{key}.axis={axis!r} is unknown; known: {", ".join(AXES)}')
  input_shape = tuple(int(d) for d in input_shape)
  size = axis_size(axis, input_shape)
  if bounds is None:
    if int(parts) != parts or not 1 <= parts <= size:
      raise ConfigError(f'config.{key}.parts={parts} must be an integer in 1..{size}')
    edges = np.linspace(0, size, int(parts) + 1).round().astype(int)
    bounds = tuple(zip(edges[:-1].tolist(), edges[1:].tolist()))
  return FeatureSplit(axis, check_cover(bounds, size, f'{key}.bounds'), input_shape)
