"""Builds any optax gradient transformation from a config name and kwargs.

Client and server optimizers of a federated run are named in the config
(`client_tx_name`, `server_tx_name`) with their kwargs (`client_tx`,
`server_tx`). Server optimizers give the FedOpt family: `sgd` (FedAvg with a
server learning rate), `momentum` (FedAvgM), `adam` (FedAdam), `yogi` (FedYogi),
`adagrad` (FedAdagrad).

References: Reddi et al. 2021, "Adaptive Federated Optimization" (FedOpt).
"""

import math
from collections.abc import Mapping
from typing import Any

import jax
import optax

from fedcomp.optim import fishleg_transform
from fedcomp.registry import ConfigError, check_kwargs, lookup


def _momentum(learning_rate: float, momentum: float = 0.9, nesterov: bool = False):
  """SGD with heavy-ball momentum (FedAvgM on the server)."""
  return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


OPTIMIZERS = {
  'sgd': optax.sgd,
  'momentum': _momentum,
  'adam': optax.adam,
  'adamw': optax.adamw,
  'yogi': optax.yogi,
  'adagrad': optax.adagrad,
  'rmsprop': optax.rmsprop,
  'lamb': optax.lamb,
  'lion': optax.lion,
  'adafactor': optax.adafactor,
  'fishleg': fishleg_transform.fishleg,
}


# Ranges of the numeric hyperparameters a config may set: (low, high, low_open, high_open).
RANGES = {
  'learning_rate': (0.0, None, False, False),
  'momentum': (0.0, 1.0, False, True),
  'b1': (0.0, 1.0, False, True),
  'b2': (0.0, 1.0, False, True),
  'eps': (0.0, None, True, False),
  'decay': (0.0, 1.0, False, True),
  'weight_decay': (0.0, None, False, False),
  'damping': (0.0, None, True, False),
  'aux_learning_rate': (0.0, None, False, False),
  'initial_scale': (0.0, None, True, False),
  'sgd_learning_rate': (0.0, None, True, False),
  'gradient_decay': (0.0, 1.0, False, True),
}
INTEGERS = {'aux_every': 1, 'block_size': 1, 'max_factor_size': 1}


def check_hyperparameters(kwargs: Mapping[str, Any], key: str) -> None:
  """One-line ConfigErrors for hyperparameters out of range, NaN or infinite.

  Traced values (a sweep's runs axis, fedcomp.sweep) pass: each run's own number was
  checked in its config.
  """
  for name, value in kwargs.items():
    if isinstance(value, jax.Array):
      continue
    bad_int = isinstance(value, bool) or not isinstance(value, int) or value < INTEGERS.get(name, 0)
    if name in INTEGERS and bad_int:
      raise ConfigError(f'config.{key}.{name}={value!r} must be an integer >= {INTEGERS[name]}')
    if name not in RANGES:
      continue
    low, high, low_open, high_open = RANGES[name]
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
      lo = ('(' if low_open else '[') + f'{low:g}'
      hi = 'inf)' if high is None else f'{high:g}' + (')' if high_open else ']')
      raise ConfigError(f'config.{key}.{name}={value!r} must be a finite number in {lo}, {hi}')


def make_tx(name: str, kwargs: Mapping[str, Any], key: str) -> optax.GradientTransformation:
  """Returns the optimizer `name` built with the set (non-None) `kwargs`.

  Args:
    name: a key of OPTIMIZERS.
    kwargs: the config's kwargs for it (fields set to None are left at defaults).
    key: the config key of the kwargs ('client_tx' or 'server_tx'), for messages.

  Returns:
    An optax GradientTransformation.
  """
  fn = lookup(OPTIMIZERS, name, f'{key}_name')
  kw = check_kwargs(fn, kwargs, key, f'optimizer {name!r}')
  if kw.get('learning_rate') is None:
    raise ConfigError(f'config.{key}.learning_rate must be set for optimizer {name!r}')
  check_hyperparameters(kw, key)
  try:
    return fn(**kw)
  except ConfigError as e:
    raise ConfigError(f'config.{key}: {e}') from None
