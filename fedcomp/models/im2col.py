"""Convolution as patches @ kernel: a matmul that vmaps into a batched matmul.

Vmapping a convolution over per-client kernels lowers to a grouped convolution
(feature_group_count = clients), which XLA:CPU runs far below its matmul speed
(jax-ml/jax#26568). Written as shifted slices concatenated into patches and one
matmul, the same layer vmaps into a batched matmul with the clients as batch
dimension, and its gradients are slices, pads and matmuls too.
"""

import jax
import jax.numpy as jnp


def conv2d_valid(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
  """A stride-1 VALID 2-D convolution (NHWC, HWIO kernel) by im2col.

  Args:
    x: (B, H, W, C_in).
    kernel: (kh, kw, C_in, C_out).
    bias: (C_out,) or None.

  Returns:
    (B, H - kh + 1, W - kw + 1, C_out), equal to lax.conv_general_dilated's
    VALID result up to float rounding.
  """
  kh, kw, cin, cout = kernel.shape
  h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  # Patch channel order (i, j, c) matches kernel.reshape(kh * kw * cin, cout).
  patches = jnp.concatenate(
    [x[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)], axis=-1
  )
  out = patches @ kernel.reshape(kh * kw * cin, cout)
  return out if bias is None else out + bias
