"""Width multipliers (config.model.width): every layer width scaled, e.g. for student nets."""

import math
import numbers

from fedcomp.errors import ConfigError


def check_width(width) -> float:
  """Validates config.model.width, a positive finite multiplier of layer widths.

  Args:
    width: the multiplier.

  Returns:
    width as a float.
  """
  if isinstance(width, bool) or not isinstance(width, numbers.Real) or not 0 < width < math.inf:
    raise ConfigError(f'config.model.width must be a positive number, got {width!r}')
  return float(width)


def scale(n: int, width: float) -> int:
  """Returns round(n * width) (ties to even), at least 1: layer width n under `width`."""
  return max(1, round(n * width))
