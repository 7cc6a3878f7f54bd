"""Builds any optax gradient transformation from a config name and kwargs.

Client and server optimizers of a federated run are named in the config
(`client_tx_name`, `server_tx_name`) with their kwargs (`client_tx`,
`server_tx`). Server optimizers give the FedOpt family: `sgd` (FedAvg with a
server learning rate), `momentum` (FedAvgM), `adam` (FedAdam), `yogi` (FedYogi),
`adagrad` (FedAdagrad).

References: Reddi et al. 2021, "Adaptive Federated Optimization" (FedOpt).
"""

from collections.abc import Mapping
from typing import Any

import optax

from fedcomp.optim import fishleg_transform
from fedcomp.registry import ConfigError, check_kwargs, lookup


def _momentum(learning_rate: float, momentum: float = 0.9, nesterov: bool = False):
  """SGD with heavy-ball momentum (FedAvgM on the server)."""
  return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def _fishleg(
  learning_rate: float,
  momentum: float = 0.9,
  damping: float = 1e-3,
  aux_learning_rate: float = 1e-4,
  aux_every: int = 10,
  u_sampling: str = 'gradient',
  sgd_learning_rate: float | None = None,
  initial_scale: float | None = None,
  momentum_on: str = 'update',
  precondition_aux: bool = False,
):
  """FishLeg (fedcomp.optim.fishleg_transform.fishleg) with its config-settable arguments."""
  return fishleg_transform.fishleg(
    learning_rate,
    momentum=momentum,
    sgd_learning_rate=sgd_learning_rate,
    damping=damping,
    aux_learning_rate=aux_learning_rate,
    aux_every=aux_every,
    u_sampling=u_sampling,
    initial_scale=initial_scale,
    momentum_on=momentum_on,
    precondition_aux=precondition_aux,
  )


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
  'fishleg': _fishleg,
}


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
  lr = kw.get('learning_rate')
  if lr is None:
    raise ConfigError(f'config.{key}.learning_rate must be set for optimizer {name!r}')
  if not isinstance(lr, int | float) or lr < 0:
    raise ConfigError(f'config.{key}.learning_rate={lr!r} must be a non-negative number')
  return fn(**kw)
