"""Split models for vertical federated learning: one bottom per party, each seeing only its
slice of the features, and a top on the concatenation of the bottoms' outputs.

Parameters live under `bottom0` ... `bottom{P-1}` and `top`, so optimizers and aggregation
can treat each part separately (HoVeFL's per-part optimizers). The model maps a whole
example: it cuts it with its `FeatureSplit` and runs every bottom on its own slice, which is
what a vertical group computes across its parties (and what a horizontal client, holding
every feature, computes alone).

References: Vepakomma et al. 2018, "Split learning for health" (arXiv 1812.00564); Li et al.
2025, HoVeFL (arXiv 2410.01644), whose public code defines the two split models here.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from fedcomp.data.feature_split import FeatureSplit, make_split
from fedcomp.errors import ConfigError
from fedcomp.models.mlp import DenseStack


def part_names(params) -> tuple[str, ...]:
  """The parts of a split model's params ('bottom0', ..., 'top'), or () for other models."""
  keys = tuple(params) if isinstance(params, dict) else ()
  bottoms = sorted((k for k in keys if k.startswith('bottom')), key=lambda k: int(k[6:]))
  if 'top' not in keys or not bottoms or len(bottoms) + 1 != len(keys):
    return ()
  return (*bottoms, 'top')


class Top(DenseStack):
  """Dense layers with ReLU between them; the input of the last one is tapped."""

  def __init__(self, widths, rngs: nnx.Rngs):
    self._build(tuple(widths), rngs, tap=(len(widths) - 2, 'penultimate'))


class SplitModel(nnx.Module):
  """Bottoms on the parties' slices, concatenated, then the top (subclasses build them)."""

  split: FeatureSplit

  def _assemble(self, bottoms, width: int, top_hidden, num_classes, rngs) -> None:
    """Sets the bottoms and a top on their concatenated outputs (`width` features)."""
    for p, bottom in enumerate(bottoms):
      setattr(self, f'bottom{p}', bottom)
    self.num_parts = len(bottoms)
    self.top = Top((width, *top_hidden, num_classes), rngs)

  def __call__(self, x: jax.Array, *, train: bool = False, rngs=None, mask=None) -> jax.Array:
    """(B, num_classes) logits of a batch of whole examples x (B, *input_shape)."""
    del rngs, mask  # no dropout, no BatchNorm
    parts = self.split(x)
    h = jnp.concatenate(
      [getattr(self, f'bottom{p}')(parts[p]) for p in range(self.num_parts)], axis=-1
    )
    return self.top(h, train=train)


def checked_split(input_shape, axis, parts, bounds) -> FeatureSplit:
  bounds = None if bounds is None else tuple(tuple(b) for b in bounds)
  return make_split(input_shape, axis, parts, bounds, 'model')


def positive(value, key: str) -> int:
  if int(value) != value or value <= 0:
    raise ConfigError(f'config.model.{key}={value} must be a positive integer')
  return int(value)
