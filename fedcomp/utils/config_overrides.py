"""Setting config fields by dotted key, as `--config.a.b=v` does on the command line."""

from collections.abc import Mapping
from typing import Any

import ml_collections

from fedcomp.errors import ConfigError


def with_overrides(
  config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted keys set, e.g. {'partition.num_clients': 10}.

  As on the command line, a key may be new (component dicts such as `data` or `model` are
  checked by their callee, and a run's fixed keys by its experiment); a path through a
  value that is not a section is an error.

  Args:
    config: the config to copy.
    overrides: dotted key -> value.

  Returns:
    The new config.
  """
  out = config.copy_and_resolve_references()
  for key, value in overrides.items():
    *path, last = key.split('.')
    target = out
    for part in path:
      if part not in target:
        target[part] = ml_collections.ConfigDict()
      target = target[part]
      if not isinstance(target, ml_collections.ConfigDict):
        raise ConfigError(f'override {key!r}: config.{part} is not a section')
    target[last] = value
  return out
