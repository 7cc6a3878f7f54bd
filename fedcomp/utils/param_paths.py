"""Parameter paths ('dense1/kernel') and regex selection of leaves in a params pytree."""

import re
from collections.abc import Sequence
from typing import Any

import jax

from fedcomp.errors import ConfigError

PyTree = Any


def leaf_paths(params: PyTree) -> list[str]:
  """'/'-joined key paths of the leaves, in jax.tree.leaves order (e.g. 'conv0/kernel')."""
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  return ['/'.join(_key_name(k) for k in path) for path, _ in flat]


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def last_layers(params: PyTree, count: int) -> list[str]:
  """The last `count` top-level layers of a params dict, in natural name order.

  Natural order compares digit runs as numbers (conv0 < conv1 < dense0 < dense2 <
  dense10), which is the order fedcomp's models define their layers in.

  Args:
    params: a dict of layers.
    count: how many layers from the end.

  Returns:
    Layer names (top-level keys).
  """
  if not isinstance(params, dict):
    raise TypeError(f'params must be a dict of layers, got {type(params).__name__}')
  layers = sorted(params, key=_natural_key)
  if not 0 <= count <= len(layers):
    raise ConfigError(
      f'{count} last layers asked for; the model has {len(layers)}: {", ".join(layers)}'
    )
  return layers[len(layers) - count :]


def _natural_key(name: str) -> list:
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', str(name))]


def select_leaves(params: PyTree, patterns: Sequence[str], key: str) -> list[bool]:
  """Which leaves a list of regexes selects (`re.fullmatch` on leaf paths).

  Args:
    params: the params pytree.
    patterns: regexes; a leaf is selected when any pattern fully matches its path.
    key: the config key holding the patterns, for error messages.

  Returns:
    One bool per leaf, in jax.tree.leaves order.

  Raises:
    ConfigError: a pattern is not a valid regex or matches no leaf.
  """
  paths = leaf_paths(params)
  selected = [False] * len(paths)
  for pattern in patterns:
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise ConfigError(f'config.{key}: {pattern!r} is not a valid regex ({e})') from None
    hits = [bool(regex.fullmatch(p)) for p in paths]
    if not any(hits):
      raise ConfigError(
        f'config.{key}: {pattern!r} matches no parameter; paths: {", ".join(paths)}'
      )
    selected = [s or h for s, h in zip(selected, hits)]
  return selected
