"""One-line ConfigError checks for numeric config values."""

import numbers

from fedcomp.registry import ConfigError


def check_int(value, key: str, *, min_value: int | None = None) -> int:
  """Returns `value` as an int, or raises a ConfigError naming `config.<key>`.

  Args:
    value: the config value.
    key: the config key, e.g. 'partition.num_clients'.
    min_value: smallest allowed value, if any.

  Returns:
    int(value).
  """
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ConfigError(f'config.{key}={value!r} must be an integer')
  if min_value is not None and value < min_value:
    raise ConfigError(f'config.{key}={value!r} must be >= {min_value}')
  return int(value)


def check_float(
  value,
  key: str,
  *,
  min_value: float | None = None,
  max_value: float | None = None,
  min_open: bool = False,
  max_open: bool = False,
) -> float:
  """Returns `value` as a float, or raises a ConfigError naming `config.<key>`.

  Args:
    value: the config value.
    key: the config key, e.g. 'partition.alpha'.
    min_value: lower bound, if any.
    max_value: upper bound, if any.
    min_open: whether the lower bound is excluded.
    max_open: whether the upper bound is excluded.

  Returns:
    float(value).
  """
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ConfigError(f'config.{key}={value!r} must be a number')
  value = float(value)
  lo_bad = min_value is not None and (value <= min_value if min_open else value < min_value)
  hi_bad = max_value is not None and (value >= max_value if max_open else value > max_value)
  if lo_bad or hi_bad or value != value:
    lo = '' if min_value is None else ('(' if min_open else '[') + f'{min_value:g}'
    hi = '' if max_value is None else f'{max_value:g}' + (')' if max_open else ']')
    lo = lo or '(-inf'
    hi = hi or 'inf)'
    raise ConfigError(f'config.{key}={value!r} must be in {lo}, {hi}')
  return value
