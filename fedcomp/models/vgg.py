"""CIFAR-style VGG-11 and VGG-16 with BatchNorm.

3x3 convolutions (SAME, with bias) each followed by BatchNorm and ReLU, 2x2 max-pools
between the stages, global average pooling and one dense layer to the logits: the VGG of
the CIFAR pruning and distillation literature. Max-pools pad like ceil mode, so 28x28
inputs reach 1x1 after the five pools (28 -> 14 -> 7 -> 4 -> 2 -> 1) as 32x32 ones do.
Parameters for 32x32x3 inputs and 10 classes: VGG-11 9,231,114; VGG-16 14,728,266.
`width` multiplies every conv's channel count (students for distillation); `plan` gives the
layers explicitly (channel counts and 'M' pools), e.g. a searched student's.

References: Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale
Image Recognition" (ICLR), configurations A and D; Ioffe & Szegedy 2015 (BatchNorm).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fedcomp.errors import ConfigError
from fedcomp.models import im2col, widths
from fedcomp.models.resnet import Context, batch_norm
from fedcomp.models.taps import feature

POOL = 'M'
CONFIGS = {
  11: (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
  16: (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL),
}


def resolve_plan(depth: int, width: float, plan: Sequence[int | str] | None) -> tuple:
  """The layer plan (channel counts and POOL) of the given options (checked by Model)."""
  base = tuple(plan) if plan is not None else CONFIGS[depth]
  return tuple(i if i == POOL else widths.scale(i, width) for i in base)


class Model(nnx.Module):
  """[conv3x3-BN-ReLU]* with max-pools -> global average pool -> dense logits."""

  def __init__(
    self,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    rngs: nnx.Rngs,
    depth: int = 16,
    conv_impl: str = 'auto',
    width: float = 1.0,
    plan: Sequence[int | str] | None = None,
  ):
    """Creates the layers.

    Args:
      input_shape: (H, W, C) of one example.
      num_classes: number of logits.
      rngs: initialisation RNGs.
      depth: 11 (VGG-11) or 16 (VGG-16) (config.model.depth).
      conv_impl: 'xla', 'im2col' or 'auto' (see fedcomp.models.im2col) (config.model.conv_impl).
      width: multiplier of every conv's channel count, each rounded and at least 1
        (config.model.width).
      plan: the layers instead of depth's: conv channel counts (positive ints) and 'M'
        (2x2 max-pool), in order, at least one conv; width still multiplies them
        (config.model.plan).
    """
    if plan is not None:
      plan = tuple(plan)
      bad = [
        i for i in plan if i != POOL and (not isinstance(i, int) or isinstance(i, bool) or i < 1)
      ]
      if bad or not any(i != POOL for i in plan):
        raise ConfigError(
          f'config.model.plan={list(plan)} must hold positive channel counts and {POOL!r} '
          'pools, at least one conv'
        )
    elif depth not in CONFIGS:
      raise ConfigError(
        f'config.model.depth={depth!r} is unknown; known: {", ".join(map(str, CONFIGS))}'
      )
    width = widths.check_width(width)
    if len(input_shape) != 3:
      raise ConfigError(f'model vgg needs (H, W, C) examples, got input shape {input_shape}')
    self.conv_impl = im2col.resolve_conv_impl(conv_impl)
    self.plan = resolve_plan(depth, width, plan)
    convs, norms, cin = [], [], input_shape[-1]
    for item in self.plan:
      if item == POOL:
        continue
      convs.append(nnx.Conv(cin, item, (3, 3), padding='SAME', rngs=rngs))
      norms.append(batch_norm(item, rngs))
      cin = item
    self.convs, self.norms = nnx.List(convs), nnx.List(norms)
    self.head = nnx.Linear(cin, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False, rngs=None, mask=None) -> jax.Array:
    """Logits (B, num_classes); with train=True, BatchNorm uses (masked) batch statistics."""
    del rngs  # no dropout
    ctx = Context(train, self.conv_impl == 'im2col' and train, mask)
    h, i = x, 0
    for item in self.plan:
      if item == POOL:
        h = nnx.max_pool(h, window_shape=(2, 2), strides=(2, 2), padding='SAME')
      else:
        h = jax.nn.relu(ctx.norm(self.norms[i], ctx.conv(self.convs[i], h)))
        i += 1
    h = h.mean(axis=(1, 2))
    feature('penultimate', h)
    return self.head(h).astype(jnp.float32)
