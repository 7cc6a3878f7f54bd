"""Class-subset deployments: a student that only knows some of the teacher's classes.

A deployment that sees (or must tell apart) only the classes `classes = (c₀, c₁, ...)`
gets a student with len(classes) outputs. Its output j stands for class c_j: the data is
restricted to examples of those classes with labels relabelled to j, and the teacher's
logits are restricted to the columns c_j in that order (the softmax over the kept columns
is the teacher's distribution conditioned on the example being one of those classes).

References: Pahwa et al. 2019, "Data-Driven Compression of Convolutional Neural Networks"
(arXiv 1911.12740): deployments that need only a subset of the classes.
"""

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedcomp.errors import ConfigError


def check_classes(classes: Sequence[int] | None, num_classes: int, key: str) -> tuple[int, ...]:
  """The deployment's classes as a tuple (all classes for None), validated.

  Raises:
    ConfigError: empty, repeated, non-integer or out-of-range classes.
  """
  if classes is None:
    return tuple(range(num_classes))
  try:
    out = tuple(int(c) for c in classes)
  except (TypeError, ValueError):
    raise ConfigError(f'config.{key}={classes!r} must be a list of class ids') from None
  if any(int(c) != c for c in classes):
    raise ConfigError(f'config.{key}={classes!r} must hold integers')
  if not out:
    raise ConfigError(f'config.{key} is empty: a deployment needs at least one class')
  if len(set(out)) != len(out):
    raise ConfigError(f'config.{key}={list(out)} repeats a class')
  bad = [c for c in out if not 0 <= c < num_classes]
  if bad:
    raise ConfigError(f'config.{key}: classes {bad} are outside [0, {num_classes})')
  return out


def restrict_logits(logits: jax.Array, classes: Sequence[int]) -> jax.Array:
  """The columns `classes` of (..., C) logits, in that order: (..., len(classes))."""
  return jnp.take(logits, jnp.asarray(classes, jnp.int32), axis=-1)


def select(arrays: Mapping[str, np.ndarray], classes: Sequence[int]) -> dict[str, np.ndarray]:
  """The examples whose label 'y' is in `classes`, with 'y' relabelled to its index there.

  Args:
    arrays: per-example arrays with integer labels 'y'.
    classes: the deployment's classes (original ids).

  Returns:
    The selected rows of every array; 'y' is the position of the label in `classes`.
  """
  y = np.asarray(arrays['y'])
  lookup = np.full(max(int(y.max(initial=0)), max(classes)) + 1, -1, np.int64)
  lookup[list(classes)] = np.arange(len(classes))
  new_y = lookup[y]
  rows = np.flatnonzero(new_y >= 0)
  out = {k: np.asarray(v)[rows] for k, v in arrays.items()}
  out['y'] = new_y[rows].astype(np.int32)
  return out
