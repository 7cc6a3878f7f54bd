"""ResNets with BatchNorm for 28x28 and 32x32 inputs: ResNet-18 and the CIFAR 6n+2 family.

- depth=18: the CIFAR ResNet-18 common to FL and compression papers (3x3 stem of 64
  channels, no max-pool, BasicBlocks [2, 2, 2, 2] of 64/128/256/512 channels, strides
  1/2/2/2, 1x1 convolution + BatchNorm shortcuts where the shape changes, convolutions
  without bias, global average pooling, one dense layer): 11,173,962 parameters for
  32x32x3 inputs and 10 classes.
- depth=6n+2 >= 8 (8, 14, 20, 32, 44, 56, 110, ...): He et al.'s CIFAR ResNets (stages of
  16/32/64 channels, n BasicBlocks each, option A shortcuts: identity, subsampled and
  zero-padded where the shape changes). ResNet-20: 269,722 parameters for 32x32x3 inputs
  and 10 classes; for 28x28x1 inputs and 10 classes ResNet-8 has 75,002 and ResNet-20
  269,434.

`width` multiplies every channel count, the stem's too (students for distillation).

28x28 inputs (MNIST-like) go through the same layers (SAME padding: 28 -> 14 -> 7 -> 4).
BatchNorm statistics (`mean`, `var`) are model state, not parameters: training updates them
from the batch's real rows only (the mask), evaluation uses them.

References: He, Zhang, Ren, Sun 2016, "Deep Residual Learning for Image Recognition" (CVPR),
Sec. 4.2 (CIFAR-10 ResNets); Ioffe & Szegedy 2015 (BatchNorm).
"""

import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fedcomp.errors import ConfigError
from fedcomp.models import im2col, taps, widths

BN = {'momentum': 0.9, 'epsilon': 1e-5}  # PyTorch's BatchNorm defaults (momentum 0.1 there)


def plan(depth: int) -> tuple[tuple[int, ...], tuple[int, ...], str]:
  """The stage widths, blocks per stage and shortcut type of ResNet-`depth`.

  Args:
    depth: 18, or 6n+2 >= 8 (config.model.depth).

  Returns:
    (widths, blocks, shortcut), shortcut 'projection' or 'pad' (option A).
  """
  if depth == 18:
    return (64, 128, 256, 512), (2, 2, 2, 2), 'projection'
  if depth in (50, 152):  # not the CIFAR family these names would suggest
    raise ConfigError(
      f'config.model.depth={depth}: the ImageNet bottleneck ResNets are not implemented; '
      'use 18, or 6n+2 >= 8 (8, 14, 20, 32, 44, 56, 110, ...)'
    )
  if isinstance(depth, numbers.Integral) and depth >= 8 and (depth - 2) % 6 == 0:
    return (16, 32, 64), ((depth - 2) // 6,) * 3, 'pad'
  raise ConfigError(
    f'config.model.depth={depth!r} is unknown; known: 18, or 6n+2 >= 8 (8, 14, 20, 32, 44, '
    '56, 110, ...)'
  )


def batch_norm(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return taps.BatchNorm(channels, rngs=rngs, **BN)


def conv3x3(cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
  init = nnx.initializers.he_normal()
  return nnx.Conv(
    cin, cout, (3, 3), stride, padding='SAME', use_bias=False, kernel_init=init, rngs=rngs
  )


class Context:
  """How a forward pass runs its layers: training or not, im2col, the batch's real rows."""

  def __init__(self, train: bool, im2col_convs: bool, mask):
    self.train, self.im2col, self.mask = train, im2col_convs, mask

  def conv(self, layer: nnx.Conv, x):
    return im2col.apply_conv(layer, x, im2col=self.im2col)

  def norm(self, layer: nnx.BatchNorm, x):
    mask = None if self.mask is None else self.mask[:, None, None, None]
    return layer(x, use_running_average=not self.train, mask=mask)


class BasicBlock(nnx.Module):
  """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

  def __init__(self, cin: int, cout: int, stride: int, shortcut: str, rngs: nnx.Rngs):
    self.conv0 = conv3x3(cin, cout, stride, rngs)
    self.bn0 = batch_norm(cout, rngs)
    self.conv1 = conv3x3(cout, cout, 1, rngs)
    self.bn1 = batch_norm(cout, rngs)
    if cout < cin:
      raise ValueError(f'BasicBlock narrows {cin} -> {cout} channels')
    self.stride, self.pad = stride, cout - cin
    self.project = shortcut == 'projection' and (stride != 1 or cin != cout)
    if self.project:
      init = nnx.initializers.he_normal()
      self.shortcut_conv = nnx.Conv(
        cin, cout, (1, 1), stride, padding='VALID', use_bias=False, kernel_init=init, rngs=rngs
      )
      self.shortcut_bn = batch_norm(cout, rngs)

  def __call__(self, x, ctx: Context):
    h = jax.nn.relu(ctx.norm(self.bn0, ctx.conv(self.conv0, x)))
    h = ctx.norm(self.bn1, ctx.conv(self.conv1, h))
    if self.project:
      s = ctx.norm(self.shortcut_bn, ctx.conv(self.shortcut_conv, x))
    else:  # option A: subsample, then zero-pad the new channels
      s = x[:, :: self.stride, :: self.stride, :]
      if self.pad:
        s = jnp.pad(s, ((0, 0), (0, 0), (0, 0), (self.pad // 2, self.pad - self.pad // 2)))
    return jax.nn.relu(h + s)


class Model(nnx.Module):
  """Stem conv3x3-BN-ReLU -> stages of BasicBlocks -> global average pool -> dense."""

  def __init__(
    self,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    rngs: nnx.Rngs,
    depth: int = 18,
    conv_impl: str = 'auto',
    width: float = 1.0,
  ):
    """Creates the layers.

    Args:
      input_shape: (H, W, C) of one example.
      num_classes: number of logits.
      rngs: initialisation RNGs.
      depth: 18 (ResNet-18, CIFAR style) or 6n+2 >= 8 (ResNet-8, -14, -20, ..., He et al.)
        (config.model.depth).
      conv_impl: 'xla', 'im2col' or 'auto' (see fedcomp.models.im2col) (config.model.conv_impl).
      width: multiplier of every channel count, each rounded and at least 1
        (config.model.width).
    """
    stage_widths, blocks, shortcut = plan(depth)
    width = widths.check_width(width)
    stage_widths = tuple(widths.scale(w, width) for w in stage_widths)
    if len(input_shape) != 3:
      raise ConfigError(f'model resnet needs (H, W, C) examples, got input shape {input_shape}')
    self.conv_impl = im2col.resolve_conv_impl(conv_impl)
    self.stem = conv3x3(input_shape[-1], stage_widths[0], 1, rngs)
    self.stem_bn = batch_norm(stage_widths[0], rngs)
    layers, cin = [], stage_widths[0]
    for stage, (cout, count) in enumerate(zip(stage_widths, blocks)):
      for b in range(count):
        stride = 2 if stage > 0 and b == 0 else 1
        layers.append(BasicBlock(cin, cout, stride, shortcut, rngs))
        cin = cout
    self.blocks = nnx.List(layers)
    self.stage_ends = tuple(sum(blocks[: i + 1]) - 1 for i in range(len(blocks)))
    self.head = nnx.Linear(cin, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False, rngs=None, mask=None) -> jax.Array:
    """Logits (B, num_classes); with train=True, BatchNorm uses (masked) batch statistics."""
    del rngs  # no dropout
    ctx = Context(train, self.conv_impl == 'im2col' and train, mask)
    h = jax.nn.relu(ctx.norm(self.stem_bn, ctx.conv(self.stem, x)))
    for i, block in enumerate(self.blocks):
      h = block(h, ctx)
      if i in self.stage_ends:
        taps.feature(f'stage{self.stage_ends.index(i)}', h.mean(axis=(1, 2)))
    h = h.mean(axis=(1, 2))
    taps.feature('penultimate', h)
    return self.head(h).astype(jnp.float32)
