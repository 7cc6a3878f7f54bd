"""ResNets with BatchNorm for 28x28 and 32x32 inputs: ResNet-18 and ResNet-20 (CIFAR style).

- depth=18: the CIFAR ResNet-18 common to FL and compression papers (3x3 stem of 64
  channels, no max-pool, BasicBlocks [2, 2, 2, 2] of 64/128/256/512 channels, strides
  1/2/2/2, 1x1 convolution + BatchNorm shortcuts where the shape changes, convolutions
  without bias, global average pooling, one dense layer): 11,173,962 parameters for
  32x32x3 inputs and 10 classes.
- depth=20: He et al.'s CIFAR ResNet-20 (stages of 16/32/64 channels, 3 BasicBlocks each,
  option A shortcuts: identity, subsampled and zero-padded where the shape changes):
  269,722 parameters for 32x32x3 inputs and 10 classes.

28x28 inputs (MNIST-like) go through the same layers (SAME padding: 28 -> 14 -> 7 -> 4).
BatchNorm statistics (`mean`, `var`) are model state, not parameters: training updates them
from the batch's real rows only (the mask), evaluation uses them.

References: He, Zhang, Ren, Sun 2016, "Deep Residual Learning for Image Recognition" (CVPR),
Sec. 4.2 (CIFAR-10 ResNets); Ioffe & Szegedy 2015 (BatchNorm).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fedcomp.errors import ConfigError
from fedcomp.models import im2col

DEPTHS = {
  18: ((64, 128, 256, 512), (2, 2, 2, 2), 'projection'),
  20: ((16, 32, 64), (3, 3, 3), 'pad'),
}
BN = {'momentum': 0.9, 'epsilon': 1e-5}  # PyTorch's BatchNorm defaults (momentum 0.1 there)


def batch_norm(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(channels, rngs=rngs, **BN)


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
  ):
    """Creates the layers.

    Args:
      input_shape: (H, W, C) of one example.
      num_classes: number of logits.
      rngs: initialisation RNGs.
      depth: 18 (ResNet-18, CIFAR style) or 20 (ResNet-20, He et al.) (config.model.depth).
      conv_impl: 'xla', 'im2col' or 'auto' (see fedcomp.models.im2col) (config.model.conv_impl).
    """
    if depth not in DEPTHS:
      raise ConfigError(
        f'config.model.depth={depth!r} is unknown; known: {", ".join(map(str, DEPTHS))}'
      )
    if len(input_shape) != 3:
      raise ConfigError(f'model resnet needs (H, W, C) examples, got input shape {input_shape}')
    widths, blocks, shortcut = DEPTHS[depth]
    self.conv_impl = im2col.resolve_conv_impl(conv_impl)
    self.stem = conv3x3(input_shape[-1], widths[0], 1, rngs)
    self.stem_bn = batch_norm(widths[0], rngs)
    layers, cin = [], widths[0]
    for stage, (width, count) in enumerate(zip(widths, blocks)):
      for b in range(count):
        stride = 2 if stage > 0 and b == 0 else 1
        layers.append(BasicBlock(cin, width, stride, shortcut, rngs))
        cin = width
    self.blocks = nnx.List(layers)
    self.head = nnx.Linear(cin, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False, rngs=None, mask=None) -> jax.Array:
    """Logits (B, num_classes); with train=True, BatchNorm uses (masked) batch statistics."""
    del rngs  # no dropout
    ctx = Context(train, self.conv_impl == 'im2col' and train, mask)
    h = jax.nn.relu(ctx.norm(self.stem_bn, ctx.conv(self.stem, x)))
    for block in self.blocks:
      h = block(h, ctx)
    return self.head(h.mean(axis=(1, 2))).astype(jnp.float32)
