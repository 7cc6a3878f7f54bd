"""Name registries and the error type for bad user input.

Every pluggable piece (data source, partition, model, algorithm, optimizer,
experiment) lives in a plain dict keyed by its file's name. `lookup` turns an
unknown name into a one-line error that lists the known ones.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from fedcomp.errors import ConfigError

__all__ = ['ConfigError', 'check_kwargs', 'check_known_keys', 'lookup']


def lookup(registry: Mapping[str, Any], name: str, key: str) -> Any:
  """Returns `registry[name]` or raises a ConfigError naming the config key.

  Args:
    registry: name -> entry.
    name: the requested name.
    key: the config key that holds the name (e.g. 'model_name'), for the message.

  Returns:
    The registry entry.
  """
  if name not in registry:
    known = ', '.join(sorted(registry))
    raise ConfigError(f'config.{key}={name!r} is unknown; known: {known}')
  return registry[name]


def check_kwargs(fn, kwargs: Mapping[str, Any], key: str, what: str) -> dict[str, Any]:
  """Drops None-valued kwargs and checks that `fn` accepts the rest.

  Configs carry every field any choice may need, set to None where unused, so
  only the fields that are set are passed on.

  Args:
    fn: the callable that will receive the kwargs.
    kwargs: config kwargs (a ConfigDict or dict).
    key: the config key holding them (e.g. 'data'), for the message.
    what: a description of `fn` (e.g. "data source 'digits'").

  Returns:
    The kwargs that are set, as a plain dict.
  """
  import inspect

  params = inspect.signature(fn).parameters
  takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
  accepted = [
    n
    for n, p in params.items()
    if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
  ]
  out = {}
  for name, value in dict(kwargs).items():
    if value is None:
      continue
    if not takes_any and name not in accepted:
      raise ConfigError(
        f'config.{key}.{name} is set but {what} does not take it (it takes: {", ".join(accepted)})'
      )
    out[name] = value
  return out


def check_known_keys(config: Mapping[str, Any], known: Sequence[str], where: str) -> None:
  """Raises a ConfigError for a key of `config` that is not in `known`.

  Launchers accept new keys on the command line (component dicts such as config.data are
  free and checked by their callee), so a misspelt fixed key would otherwise be ignored.

  Args:
    config: a config section.
    known: its allowed keys.
    where: the section's name for the message ('config', 'config.shared_data').
  """
  unknown = sorted(set(config) - set(known))
  if unknown:
    raise ConfigError(f'{where}.{unknown[0]} is unknown; known: {", ".join(sorted(known))}')
