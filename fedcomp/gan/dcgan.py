"""The FSL-GAN notebook's DCGAN: a generator (noise → 28×28×1 in [−1, 1]) and a
discriminator cut into sequential parts A, B, C that can run on different devices.

Discriminator parts (5×5 convs, stride 2, SAME, LeakyReLU 0.3, dropout 0.3 when training):
A = Conv(1→64) (1,664 params), B = Conv(64→128) (204,928), C = Conv(128→256) + flatten +
Dense(1) (823,553 on 28×28 inputs): the notebook's THRESHOLD. Generator: Dense(100→7·7·256,
no bias)–BN–LeakyReLU → ConvT(128, 5×5, s1)–BN–LReLU → ConvT(64, s2)–BN–LReLU → ConvT(1, s2),
tanh (Radford et al.'s DCGAN as in the TensorFlow tutorial the notebook follows).

References: Kortoçi et al. 2022, "Federated Split GANs" (arXiv 2207.01750), notebook
`dcsfgan_3parts.ipynb`; Radford et al. 2016, "Unsupervised Representation Learning with
Deep Convolutional GANs" (ICLR).
"""

import jax
from flax import nnx

from fedcomp.errors import ConfigError
from fedcomp.models import im2col

PART_NAMES = ('A', 'B', 'C')
SLOPE = 0.3  # Keras LeakyReLU's default alpha, as the notebook


class DiscriminatorPart(nnx.Module):
  """One conv stage (stride 2, LeakyReLU, dropout); the last also flattens and scores.

  Training passes on CPU run the conv by im2col (`conv_impl`, see fedcomp.models.im2col):
  XLA:CPU's input gradient of part C's strided conv alone took ~14x its forward, and the
  whole discriminator's forward+backward ran ~3.5x faster by im2col (same function).
  """

  def __init__(self, cin: int, cout: int, rngs: nnx.Rngs, *, head_inputs: int = 0,
               conv_impl: str = 'auto'):  # fmt: skip
    self.conv = nnx.Conv(cin, cout, (5, 5), strides=(2, 2), padding='SAME', rngs=rngs)
    self.dropout = nnx.Dropout(0.3)
    self.head = nnx.Linear(head_inputs, 1, rngs=rngs) if head_inputs else None
    self.conv_impl = im2col.resolve_conv_impl(conv_impl)

  def __call__(self, x: jax.Array, *, train: bool = False, key=None) -> jax.Array:
    conv = im2col.apply_conv(self.conv, x, im2col=train and self.conv_impl == 'im2col')
    h = jax.nn.leaky_relu(conv, SLOPE)
    if train:  # dropout only when training (needs a key); inference graphs have none
      h = self.dropout(h, rngs=key)
    if self.head is None:
      return h
    return self.head(h.reshape(h.shape[0], -1))


class Discriminator(nnx.Module):
  """Parts A, B, C in forward order (`parts`), one real/fake logit per image."""

  def __init__(self, input_shape=(28, 28, 1), rngs: nnx.Rngs | None = None,
               conv_impl: str = 'auto'):  # fmt: skip
    rngs = rngs or nnx.Rngs(0)
    h, w, c = input_shape
    for _ in range(3):
      h, w = -(-h // 2), -(-w // 2)
    # Part A (C_in = 1) ran its forward+backward 7x faster by XLA's conv than by im2col.
    self.A = DiscriminatorPart(c, 64, rngs, conv_impl='xla' if conv_impl == 'auto' else conv_impl)
    self.B = DiscriminatorPart(64, 128, rngs, conv_impl=conv_impl)
    self.C = DiscriminatorPart(128, 256, rngs, head_inputs=h * w * 256, conv_impl=conv_impl)

  @property
  def parts(self) -> tuple[DiscriminatorPart, ...]:
    return tuple(getattr(self, n) for n in PART_NAMES)

  def __call__(self, x: jax.Array, *, train: bool = False, key=None) -> jax.Array:
    keys = jax.random.split(key, 3) if train else (None,) * 3
    for part, k in zip(self.parts, keys):
      x = part(x, train=train, key=k)
    return x[:, 0]


class Generator(nnx.Module):
  """Noise (B, noise_dim) → images (B, H, W, C) in [−1, 1] (H, W divisible by 4)."""

  def __init__(self, noise_dim: int = 100, output_shape=(28, 28, 1),
               rngs: nnx.Rngs | None = None, conv_impl: str = 'auto'):  # fmt: skip
    rngs = rngs or nnx.Rngs(0)
    # Training passes on CPU run the transposed convs by im2col (fedcomp.models.im2col).
    self.conv_impl = im2col.resolve_conv_impl(conv_impl)
    h, w, c = (int(d) for d in output_shape)
    if h % 4 or w % 4:
      raise ConfigError(f'the generator makes images of sides divisible by 4, not {h}x{w}')
    self.base = (h // 4, w // 4)
    width = self.base[0] * self.base[1] * 256
    conv = dict(padding='SAME', use_bias=False, rngs=rngs)
    self.dense = nnx.Linear(noise_dim, width, use_bias=False, rngs=rngs)
    self.bn0 = nnx.BatchNorm(width, rngs=rngs)
    self.up1 = nnx.ConvTranspose(256, 128, (5, 5), strides=(1, 1), **conv)
    self.bn1 = nnx.BatchNorm(128, rngs=rngs)
    self.up2 = nnx.ConvTranspose(128, 64, (5, 5), strides=(2, 2), **conv)
    self.bn2 = nnx.BatchNorm(64, rngs=rngs)
    self.up3 = nnx.ConvTranspose(64, c, (5, 5), strides=(2, 2), **conv)

  def __call__(self, z: jax.Array, *, train: bool = False, key=None) -> jax.Array:
    del key  # no dropout
    ura = not train
    h = jax.nn.leaky_relu(self.bn0(self.dense(z), use_running_average=ura), SLOPE)
    h = h.reshape(z.shape[0], *self.base, 256)
    fast = train and self.conv_impl == 'im2col'

    def up(layer, h):
      return im2col.apply_conv_transpose(layer, h, im2col=fast)

    h = jax.nn.leaky_relu(self.bn1(up(self.up1, h), use_running_average=ura), SLOPE)
    h = jax.nn.leaky_relu(self.bn2(up(self.up2, h), use_running_average=ura), SLOPE)
    return jax.nn.tanh(up(self.up3, h))


def part_sizes(discriminator: Discriminator) -> tuple[int, ...]:
  """Parameters of each part, in forward order (the placement's capacity unit)."""
  return tuple(
    sum(v.size for v in jax.tree.leaves(nnx.state(p, nnx.Param))) for p in discriminator.parts
  )
