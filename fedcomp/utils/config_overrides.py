"""Setting config fields by dotted key, as `--config.a.b=v` does on the command line."""

from collections.abc import Mapping
from typing import Any

import ml_collections

from fedcomp.errors import ConfigError


def with_overrides(
  config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted keys set, e.g. {'partition.num_clients': 10}.

  Args:
    config: the config to copy.
    overrides: dotted key -> value; every key must already exist in the config.

  Returns:
    The new config.
  """
  out = config.copy_and_resolve_references()
  for key, value in overrides.items():
    *path, last = key.split('.')
    target = out
    for part in path:
      target = target[part]
    if last not in target:
      raise ConfigError(f'override {key!r} is not a config key')
    target[last] = value
  return out
