"""The search space of a VGG teacher: remove layers, shrink the rest; candidates as real
models or as masks over the teacher.

Layers are the teacher's convolutions. Stage 1 may remove a conv whose input and output
widths are equal (so its neighbours still fit; the first conv never); stage 2 keeps a
fraction `ratios[r]` of each kept conv's output channels. A candidate is

- materialised (`materialize`): a `vgg` model with an explicit `plan`, each kept conv
  initialised from the teacher's channels of largest L1 norm (AMC's selection), its input
  channels those its predecessor kept, BatchNorm parameters and statistics sliced alike,
  the head restricted to the deployment's classes; or
- masked (`masked_forward`): the teacher's own forward pass with each conv's dropped
  channels zeroed after BatchNorm and ReLU and removed convs replaced by the identity, a
  pure function of (keep, ratio) that vmaps over a batch of candidates in one program.

The two compute the same function (tests/compression/autocompress_space_test.py).

References: Ashok et al. 2018, "N2N Learning" (ICLR) (layer removal, then shrinkage);
He et al. 2018, "AMC" (ECCV), channel selection by weight magnitude.
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedcomp.errors import ConfigError
from fedcomp.models import vgg
from fedcomp.models.resnet import BN

POOL = vgg.POOL


def parse_plan(text: str) -> tuple:
  """A plan written as in search.csv ('8 M 16 M') back to (8, 'M', 16, 'M')."""
  return tuple(POOL if item == POOL else int(item) for item in text.split())


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """The teacher's convs and the choices per conv.

  Attributes:
    plan: the teacher's layer plan (channel counts and POOL).
    channels: (L,) output channels of each conv.
    in_channels: (L,) input channels of each conv.
    stage: (L,) how many pools precede each conv.
    removable: (L,) bool, stage 1 may remove the conv.
    ratios: the width ratios of stage 2.
    order: per conv, its output channels by descending L1 norm of the teacher's kernel.
  """

  plan: tuple
  channels: np.ndarray
  in_channels: np.ndarray
  stage: np.ndarray
  removable: np.ndarray
  ratios: tuple[float, ...]
  order: tuple[np.ndarray, ...]

  @property
  def num_layers(self) -> int:
    return len(self.channels)

  def counts(self, keep, ratio) -> np.ndarray:
    """(L,) channels each conv keeps (0 if removed): max(1, round(ratio · channels))."""
    r = np.asarray(self.ratios)[np.asarray(ratio)]
    kept = np.maximum(1, np.round(r * self.channels)).astype(int)
    return np.where(np.asarray(keep), kept, 0)

  def candidate_plan(self, keep, ratio) -> tuple:
    """The student's vgg plan: removed convs dropped, kept ones at their counts."""
    counts, out, i = self.counts(keep, ratio), [], 0
    for item in self.plan:
      if item == POOL:
        out.append(POOL)
        continue
      if counts[i]:
        out.append(int(counts[i]))
      i += 1
    return tuple(out)

  def embeddings(self) -> np.ndarray:
    """(L, 6) float32 layer features for the policy: output and input widths (over the
    widest), stage (over the number of pools), removable, position, log-parameters (over
    the largest)."""
    params = 9.0 * self.in_channels * self.channels + 2 * self.channels
    pools = max(1, sum(1 for i in self.plan if i == POOL))
    widest = float(max(self.channels.max(), self.in_channels.max()))
    return np.stack([
      self.channels / widest,
      self.in_channels / widest,
      self.stage / pools,
      self.removable.astype(float),
      np.arange(self.num_layers) / max(1, self.num_layers - 1),
      np.log(params) / np.log(params.max()),
    ], axis=1).astype(np.float32)  # fmt: skip


def vgg_space(model_kwargs: dict, params: dict, ratios: Sequence[float]) -> SearchSpace:
  """The search space of a vgg teacher.

  Args:
    model_kwargs: the teacher's vgg options (depth, width, plan).
    params: the teacher's parameters (for the channel order).
    ratios: stage 2's width ratios, each in (0, 1].

  Returns:
    The SearchSpace.
  """
  ratios = tuple(float(r) for r in ratios)
  if not ratios or any(not 0 < r <= 1 for r in ratios):
    raise ConfigError(f'config.search.ratios={list(ratios)} must be in (0, 1]')
  plan = vgg.resolve_plan(
    model_kwargs.get('depth', 16), model_kwargs.get('width', 1.0), model_kwargs.get('plan')
  )
  channels, in_channels, stage, pools = [], [], [], 0
  cin = int(np.asarray(params['convs'][0]['kernel']).shape[2])
  for item in plan:
    if item == POOL:
      pools += 1
      continue
    channels.append(item)
    in_channels.append(cin)
    stage.append(pools)
    cin = item
  channels, in_channels = np.asarray(channels), np.asarray(in_channels)
  removable = (channels == in_channels) & (np.arange(len(channels)) > 0)
  order = tuple(
    np.argsort(-np.abs(np.asarray(params['convs'][i]['kernel'])).sum((0, 1, 2)), kind='stable')
    for i in range(len(channels))
  )
  return SearchSpace(plan, channels, in_channels, np.asarray(stage), removable, ratios, order)


def materialize(space: SearchSpace, params: dict, state: dict, keep, ratio,
                classes: Sequence[int] | None = None) -> tuple[tuple, dict, dict]:  # fmt: skip
  """The candidate as a real vgg: (plan, params, state) initialised from the teacher.

  Args:
    space: the SearchSpace.
    params, state: the teacher's.
    keep, ratio: the candidate ((L,) bool, (L,) ratio indices).
    classes: the deployment's classes (the head's columns), or None for all.

  Returns:
    (plan, params, state) for models.build_model('vgg', {'plan': plan}, ...).
  """
  counts = space.counts(keep, ratio)
  if not counts.any():
    raise ConfigError('the candidate removes every conv')
  new_p = {'convs': {}, 'norms': {}}
  new_s = {'norms': {}}
  prev = np.arange(space.in_channels[0])  # the input's channels
  j = 0
  for i in range(space.num_layers):
    if not counts[i]:
      continue  # removed: its successor reads its predecessor's channels
    out = np.sort(space.order[i][: counts[i]])
    conv = params['convs'][i]
    new_p['convs'][j] = {
      'kernel': jnp.asarray(conv['kernel'])[:, :, prev][..., out],
      'bias': jnp.asarray(conv['bias'])[out],
    }
    new_p['norms'][j] = {k: jnp.asarray(v)[out] for k, v in params['norms'][i].items()}
    new_s['norms'][j] = {k: jnp.asarray(v)[out] for k, v in state['norms'][i].items()}
    prev, j = out, j + 1
  cols = np.arange(np.asarray(params['head']['kernel']).shape[1]) if classes is None else (
    np.asarray(classes))  # fmt: skip
  new_p['head'] = {
    'kernel': jnp.asarray(params['head']['kernel'])[prev][:, cols],
    'bias': jnp.asarray(params['head']['bias'])[cols],
  }
  return space.candidate_plan(keep, ratio), new_p, new_s


def channel_masks(space: SearchSpace, ratio) -> list[jax.Array]:
  """Per conv, the (C,) float mask of the channels a ratio choice keeps (jittable in
  `ratio`): the channels of largest L1 norm."""
  masks = []
  table = jnp.asarray(space.ratios)
  for i in range(space.num_layers):
    c = int(space.channels[i])
    count = jnp.maximum(1, jnp.round(table[ratio[i]] * c))
    rank = np.empty(c, np.int32)
    rank[space.order[i]] = np.arange(c)
    masks.append((jnp.asarray(rank) < count).astype(jnp.float32))
  return masks


def masked_forward(space: SearchSpace, params: dict, state: dict, x, keep, ratio,
                   classes: Sequence[int] | None = None) -> jax.Array:  # fmt: skip
  """Logits of the candidate (keep, ratio) computed with the teacher's weights and masks
  (inference mode); pure and vmappable over (keep, ratio).

  Args:
    space: the SearchSpace.
    params, state: the teacher's.
    x: (B, H, W, C) inputs.
    keep: (L,) bool; ratio: (L,) int ratio indices.
    classes: the deployment's classes, or None.

  Returns:
    (B, num_classes or len(classes)) logits.
  """
  masks = channel_masks(space, ratio)
  h, i = x, 0
  for item in space.plan:
    if item == POOL:
      h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'SAME')
      continue
    conv, norm, stats = params['convs'][i], params['norms'][i], state['norms'][i]
    y = (
      jax.lax.conv_general_dilated(
        h, conv['kernel'], (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
      )
      + conv['bias']
    )
    y = (y - stats['mean']) * jax.lax.rsqrt(stats['var'] + BN['epsilon']) * norm['scale']
    y = jax.nn.relu(y + norm['bias']) * masks[i]
    h = jnp.where(keep[i], y, h) if space.removable[i] else y
    i += 1
  kernel, bias = params['head']['kernel'], params['head']['bias']
  if classes is not None:
    kernel, bias = kernel[:, jnp.asarray(classes)], bias[jnp.asarray(classes)]
  return h.mean(axis=(1, 2)) @ kernel + bias
