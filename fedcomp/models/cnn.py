"""The FedJAX/TFF EMNIST CNN: conv32-conv64 (3x3 VALID), max-pool, dropout, dense128, dropout."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fedcomp.errors import ConfigError
from fedcomp.models import im2col, widths
from fedcomp.models.taps import feature

COMPUTE_DTYPES = ('float32', 'bfloat16')


class Model(nnx.Module):
  """Convs (3x3 VALID, ReLU) -> 2x2 max-pool -> dropout -> dense+ReLU -> dropout -> logits.

  Parameters live under `conv0`, `conv1`, ..., `dense0` (hidden) and `dense1` (logits).
  Subclasses change the kernel initialiser through `KERNEL_INIT`.
  """

  KERNEL_INIT = staticmethod(nnx.initializers.lecun_normal())

  def __init__(
    self,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    rngs: nnx.Rngs,
    features: Sequence[int] = (32, 64),
    dense: int = 128,
    dropout: Sequence[float] = (0.25, 0.5),
    conv_impl: str = 'auto',
    compute_dtype: str = 'float32',
    width: float = 1.0,
  ):
    """Creates the layers.

    Args:
      input_shape: (H, W, C) of one example.
      num_classes: number of logits.
      rngs: initialisation RNGs.
      features: output channels of the 3x3 VALID conv layers (config.model.features).
      dense: width of the hidden dense layer (config.model.dense).
      dropout: rates after the pool and after the hidden dense layer (config.model.dropout).
      conv_impl: 'xla' (lax convolution), 'im2col' (patches @ kernel: a matmul, fast in
        loops on CPU, and vmapped over per-client kernels a batched matmul instead of a
        grouped convolution) or 'auto' (im2col on CPU, xla elsewhere); the params and the
        function are the same (config.model.conv_impl).
      compute_dtype: dtype of the layers' matmuls and convolutions: 'float32', or
        'bfloat16' for mixed precision (float32 params, updates and logits; bf16 inputs
        to each layer, float32 accumulation) (config.model.compute_dtype).
      width: multiplier of `features` and `dense`, each rounded and at least 1
        (config.model.width).
    """
    if compute_dtype not in COMPUTE_DTYPES:
      raise ConfigError(
        f'config.model.compute_dtype={compute_dtype!r} is unknown; known: '
        f'{", ".join(COMPUTE_DTYPES)}'
      )
    self.conv_impl = im2col.resolve_conv_impl(conv_impl)
    self.compute_dtype = jnp.dtype(compute_dtype)
    features = tuple(int(f) for f in features)
    dropout = tuple(float(r) for r in dropout)
    if not features or min(features) <= 0:
      raise ConfigError(f'config.model.features must be positive integers, got {features}')
    if int(dense) != dense or dense <= 0:
      raise ConfigError(f'config.model.dense must be a positive integer, got {dense}')
    if len(dropout) != 2 or not all(0.0 <= r < 1.0 for r in dropout):
      raise ConfigError(f'config.model.dropout must be two rates in [0, 1), got {dropout}')
    width = widths.check_width(width)
    features = tuple(widths.scale(f, width) for f in features)
    dense = widths.scale(int(dense), width)
    if len(input_shape) != 3:
      raise ConfigError(f'model cnn needs (H, W, C) examples, got input shape {input_shape}')
    h, w, c = input_shape
    h, w = h - 2 * len(features), w - 2 * len(features)
    if h < 2 or w < 2:
      raise ConfigError(
        f'config.model.features: {len(features)} 3x3 convs + 2x2 pool do not fit input '
        f'shape {tuple(input_shape)}'
      )
    kw = dict(kernel_init=self.KERNEL_INIT, dtype=self.compute_dtype, rngs=rngs)
    self.num_convs = len(features)
    for i, f in enumerate(features):
      setattr(self, f'conv{i}', nnx.Conv(c, f, (3, 3), padding='VALID', **kw))
      c = f
    self.dense0 = nnx.Linear((h // 2) * (w // 2) * c, int(dense), **kw)
    self.dense1 = nnx.Linear(int(dense), num_classes, **kw)
    self.drop0 = nnx.Dropout(dropout[0])
    self.drop1 = nnx.Dropout(dropout[1])

  def _convs_and_pool_channels_first(self, x: jax.Array) -> jax.Array:
    """The convs and the pool by im2col in (C, B, H, W) layout (fedcomp.models.im2col);
    returns the pooled NHWC activations, the same function as the XLA path."""
    h = jnp.transpose(x, (3, 0, 1, 2))
    for i in range(self.num_convs):
      args = im2col.conv_arguments(getattr(self, f'conv{i}'), self.compute_dtype)
      h = jax.nn.relu(im2col.conv2d_channels_first(h.astype(self.compute_dtype), *args))
    h = im2col.max_pool_channels_first(h, 2)
    return jnp.transpose(h, (1, 2, 3, 0))

  def __call__(self, x: jax.Array, *, train: bool = False, rngs=None, mask=None) -> jax.Array:
    """Returns logits (B, num_classes).

    Args:
      x: batch (B, H, W, C) float32.
      train: apply dropout (needs rngs).
      rngs: dropout randomness: a jax key (split per dropout layer) or nnx.Rngs.
      mask: unused (no batch statistics).

    Returns:
      Logits (B, num_classes).
    """
    del mask
    r0 = r1 = rngs
    if train and isinstance(rngs, jax.Array):
      r0, r1 = jax.random.split(rngs)
    h = x
    # im2col is for training (the kernel gradient); inference uses XLA's convolution,
    # fast everywhere and without im2col's patch buffers (3.6x faster on CPU).
    if self.conv_impl == 'im2col' and train:
      h = self._convs_and_pool_channels_first(h)
    else:
      for i in range(self.num_convs):
        h = jax.nn.relu(getattr(self, f'conv{i}')(h))
      h = nnx.max_pool(h, window_shape=(2, 2), strides=(2, 2))
    # Dropout only when training: the inference graph (and an export of it) has none.
    if train:
      h = self.drop0(h, rngs=r0)
    h = h.reshape(h.shape[0], -1)
    h = jax.nn.relu(self.dense0(h))
    if train:
      h = self.drop1(h, rngs=r1)
    feature('penultimate', h)
    return self.dense1(h).astype(jnp.float32)
