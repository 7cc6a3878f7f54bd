"""Convolution as patches @ kernel: a matmul that vmaps into a batched matmul.

Vmapping a convolution over per-client kernels lowers to a grouped convolution
(feature_group_count = clients), which XLA:CPU runs far below its matmul speed
(jax-ml/jax#26568), and XLA:CPU runs convolution gradients inside loops far slower
than outside them. Written as strided slices concatenated into patches and one
matmul, the same layer vmaps into a batched matmul with the clients as batch
dimension, and its gradients are slices, pads and matmuls too.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fedcomp.errors import ConfigError

CONV_IMPLS = ('auto', 'xla', 'im2col')


def resolve_conv_impl(conv_impl: str | None) -> str:
  """'auto' (or None) -> 'im2col' on CPU, 'xla' elsewhere; other names pass through.

  On XLA:CPU (jax 0.10.2) convolution gradients inside a `lax.scan` run far slower than
  unrolled, while im2col's matmuls run at full speed in loops: one EMNIST-CNN training
  epoch as a rolled scan ran at 77 examples/s with XLA's conv and 1,635 with im2col
  (1,217 for XLA's conv fully unrolled).
  """
  if conv_impl in (None, 'auto'):
    return 'im2col' if jax.default_backend() == 'cpu' else 'xla'
  if conv_impl not in CONV_IMPLS:
    raise ConfigError(
      f'config.model.conv_impl={conv_impl!r} is unknown; known: {", ".join(CONV_IMPLS)}'
    )
  return conv_impl


def _padding(padding, size: int, k: int, stride: int) -> tuple[int, int]:
  """(low, high) padding of one spatial dimension, as lax.conv_general_dilated pads it."""
  if padding == 'VALID':
    return 0, 0
  if padding == 'SAME':
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2
  low, high = padding
  return int(low), int(high)


def _spatial_pads(padding, height: int, width: int, kernel_hw, strides):
  """((top, bottom), (left, right)) of a 2-D conv's 'VALID'/'SAME'/explicit padding."""
  (kh, kw), (sh, sw) = kernel_hw, strides
  if isinstance(padding, str):
    return _padding(padding, height, kh, sh), _padding(padding, width, kw, sw)
  return tuple(_padding(p, 0, 0, 1) for p in padding)


def _shifted_views(x: jax.Array, kh: int, kw: int, strides, h_axis: int):
  """The kh * kw strided views of x, in (i, j) order, whose spatial axes are h_axis and
  h_axis + 1 (already padded); returns (views, (H_out, W_out))."""
  sh, sw = strides
  h = (x.shape[h_axis] - kh) // sh + 1
  w = (x.shape[h_axis + 1] - kw) // sw + 1
  lead = (slice(None),) * h_axis
  views = [
    x[(*lead, slice(i, i + (h - 1) * sh + 1, sh), slice(j, j + (w - 1) * sw + 1, sw))]
    for i in range(kh)
    for j in range(kw)
  ]
  return views, (h, w)


def conv2d(
  x: jax.Array,
  kernel: jax.Array,
  bias: jax.Array | None = None,
  strides: Sequence[int] = (1, 1),
  padding='VALID',
) -> jax.Array:
  """A 2-D convolution (NHWC input, HWIO kernel) by im2col.

  Args:
    x: (B, H, W, C_in).
    kernel: (kh, kw, C_in, C_out).
    bias: (C_out,) or None.
    strides: (sh, sw).
    padding: 'VALID', 'SAME' or ((top, bottom), (left, right)), as lax.conv_general_dilated.

  Returns:
    (B, H_out, W_out, C_out), equal to lax.conv_general_dilated's result up to float
    rounding.
  """
  kh, kw, cin, cout = kernel.shape
  pads = _spatial_pads(padding, x.shape[1], x.shape[2], (kh, kw), strides)
  if any(p for pair in pads for p in pair):
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  # Patch channel order (i, j, c) matches kernel.reshape(kh * kw * cin, cout).
  patches = jnp.concatenate(_shifted_views(x, kh, kw, strides, 1)[0], axis=-1)
  out = patches @ kernel.reshape(kh * kw * cin, cout)
  return out if bias is None else out + bias


def _transpose_padding(padding, k: int, stride: int) -> tuple[int, int]:
  """(low, high) padding of the dilated input, as lax.conv_transpose pads it."""
  if padding == 'SAME':
    total = k + stride - 2
    low = k - 1 if stride > k - 1 else -(-total // 2)
  elif padding == 'VALID':
    total = k + stride - 2 + max(k - stride, 0)
    low = k - 1
  else:
    return int(padding[0]), int(padding[1])
  return low, total - low


def conv_transpose2d(
  x: jax.Array,
  kernel: jax.Array,
  bias: jax.Array | None = None,
  strides: Sequence[int] = (1, 1),
  padding='SAME',
) -> jax.Array:
  """A 2-D transposed convolution (lax.conv_transpose, kernel not flipped) by im2col.

  The input is dilated by the strides (zeros between rows and columns) and padded as
  lax.conv_transpose does, then convolved at stride 1 by `conv2d`; its gradients are
  slices, pads and matmuls, where XLA:CPU's own lhs-dilated convolution is slow (a DCGAN
  generator's forward+backward ran ~4x faster inside a scan).

  Args:
    x: (B, H, W, C_in).
    kernel: (kh, kw, C_in, C_out).
    bias: (C_out,) or None.
    strides: (sh, sw).
    padding: 'SAME', 'VALID' or ((top, bottom), (left, right)) of the dilated input.

  Returns:
    (B, H_out, W_out, C_out), equal to lax.conv_transpose's result up to float rounding.
  """
  kh, kw = kernel.shape[:2]
  sh, sw = strides
  if isinstance(padding, str):
    pads = (_transpose_padding(padding, kh, sh), _transpose_padding(padding, kw, sw))
  else:
    pads = tuple(_transpose_padding(p, 0, 1) for p in padding)
  zero = jnp.zeros((), x.dtype)
  x = jax.lax.pad(x, zero, ((0, 0, 0), (*pads[0], sh - 1), (*pads[1], sw - 1), (0, 0, 0)))
  return conv2d(x, kernel, bias)


def _strides(layer) -> tuple[int, int]:
  strides = layer.strides or 1
  return (strides, strides) if isinstance(strides, int) else tuple(strides)


def apply_conv_transpose(layer: nnx.ConvTranspose, x: jax.Array, *, im2col: bool) -> jax.Array:
  """Runs an nnx.ConvTranspose layer (2-D, 'SAME'/'VALID', no dilation, kernel not
  transposed) by im2col or by its own lax.conv_transpose (the same function)."""
  if not im2col:
    return layer(x)
  bias = layer.bias[...] if layer.bias is not None else None
  return conv_transpose2d(x, layer.kernel[...], bias, _strides(layer), layer.padding)


def apply_conv(conv: nnx.Conv, x: jax.Array, *, im2col: bool, dtype=None) -> jax.Array:
  """Runs an nnx.Conv layer by im2col or by XLA's convolution (the same function).

  Args:
    conv: the layer (2-D, no dilation, no feature groups).
    x: (B, H, W, C_in).
    im2col: use im2col (training passes on CPU) instead of the layer's own convolution.
    dtype: compute dtype for im2col (None: x's dtype).

  Returns:
    The layer's output.
  """
  if not im2col:
    return conv(x)
  if dtype is not None:
    x = x.astype(dtype)
  return conv2d(x, *conv_arguments(conv, dtype))


def conv_arguments(conv: nnx.Conv, dtype=None):
  """(kernel, bias, strides, padding) of an nnx.Conv for conv2d / conv2d_channels_first.

  Args:
    conv: the layer (2-D, no dilation, no feature groups).
    dtype: the kernel's compute dtype (None: as stored); the bias stays as stored.

  Returns:
    The kernel (HWIO), the bias or None, (sh, sw), and 'SAME'/'VALID' or explicit pairs.
  """
  kernel = conv.kernel[...]
  if dtype is not None:
    kernel = kernel.astype(dtype)
  bias = conv.bias[...] if conv.bias is not None else None
  padding = conv.padding
  if isinstance(padding, int):
    padding = ((padding, padding),) * 2
  elif not isinstance(padding, str):
    padding = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
  return kernel, bias, _strides(conv), padding


# Channel-major (C, B, H, W) training path. On XLA:CPU (jax 0.10.2) the matmuls of an
# im2col conv run faster with the pixels as the long last axis: for the EMNIST CNN's second
# conv (18,432 pixels x 288 x 64), the kernel gradient as patches^T @ grad (both contracted
# on their leading axis) ran at 81-88 GFLOP/s, as (64, P) . (288, P) contracted on the last
# axis at 166-174; the col2im of the patch gradient, 9 shifted blocks of contiguous rows, ran
# 4x faster than the NHWC one; and the 2x2 max-pool below replaces reduce-window and its
# select-and-scatter gradient (7.3 ms per batch of 32). One client's training loop ran
# 1,000-1,050 examples/s against 770-805 NHWC (same process, alternated).


def patches_channels_first(x: jax.Array, kh: int, kw: int, strides=(1, 1), pads=None):
  """Patch rows of a channel-major input, ordered (i, j, c) like an HWIO kernel.

  Args:
    x: (C, B, H, W).
    kh, kw: kernel height and width.
    strides: (sh, sw).
    pads: ((top, bottom), (left, right)) zero padding, or None.

  Returns:
    (patches (kh * kw * C, B * H_out * W_out), (B, H_out, W_out)).
  """
  if pads is not None and any(p for pair in pads for p in pair):
    x = jnp.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))
  c, b = x.shape[:2]
  views, (h, w) = _shifted_views(x, kh, kw, strides, 2)
  return jnp.concatenate(views, axis=0).reshape(kh * kw * c, b * h * w), (b, h, w)


def conv2d_channels_first(
  x: jax.Array,
  kernel: jax.Array,
  bias: jax.Array | None = None,
  strides: Sequence[int] = (1, 1),
  padding='VALID',
) -> jax.Array:
  """A 2-D convolution of a channel-major input by im2col.

  Args:
    x: (C_in, B, H, W).
    kernel: (kh, kw, C_in, C_out), HWIO as nnx.Conv stores it.
    bias: (C_out,) or None.
    strides: (sh, sw).
    padding: 'VALID', 'SAME' or ((top, bottom), (left, right)).

  Returns:
    (C_out, B, H_out, W_out): lax.conv_general_dilated's result, transposed, up to float
    rounding.
  """
  kh, kw, cin, cout = kernel.shape
  pads = _spatial_pads(padding, x.shape[2], x.shape[3], (kh, kw), strides)
  patches, (b, h, w) = patches_channels_first(x, kh, kw, strides, pads)
  out = kernel.reshape(kh * kw * cin, cout).T @ patches
  if bias is not None:
    out = out + bias[:, None]
  return out.reshape(cout, b, h, w)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def max_pool_channels_first(x: jax.Array, window: int) -> jax.Array:
  """Non-overlapping window x window max-pool ('VALID') over the last two axes.

  Equal to nnx.max_pool(window, strides=window) in value and gradient: the derivative
  follows the first maximum of each window in row-major order, as XLA's select-and-scatter
  (with the `>=` select JAX uses) routes the gradient, ties included. A custom JVP (linear
  in the tangent, so JAX transposes it for the VJP) keeps forward mode working (FishLeg's
  Fisher-vector products).

  Args:
    x: (..., H, W).
    window: the window side and stride.

  Returns:
    (..., H // window, W // window).
  """
  return _windows(x, window).max(axis=(-3, -1))


def _windows(x, k):
  *lead, h, w = x.shape
  x = x[..., : h - h % k, : w - w % k]
  return x.reshape(*lead, h // k, k, w // k, k)


def _first_max(xw, y, k):
  """(..., H/k, k, W/k, k) bool: the first maximum of each window, in row-major order."""
  taken = jnp.zeros(y.shape, bool)
  rows = []
  for i in range(k):
    cols = []
    for j in range(k):
      first = (xw[..., :, i, :, j] == y) & ~taken
      taken = taken | first
      cols.append(first)
    rows.append(jnp.stack(cols, axis=-1))
  return jnp.stack(rows, axis=-3)


@max_pool_channels_first.defjvp
def _max_pool_jvp(window, primals, tangents):
  (x,), (t,) = primals, tangents
  xw = _windows(x, window)
  y = xw.max(axis=(-3, -1))
  first = _first_max(xw, y, window)
  # One selected tangent per window plus exact zeros: the same value in any summation order.
  dy = jnp.where(first, _windows(t, window), jnp.zeros((), t.dtype)).sum(axis=(-3, -1))
  return y, dy
