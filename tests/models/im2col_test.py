"""im2col convolution equals XLA's convolution."""

import jax
import numpy as np
import pytest

from fedcomp import models
from fedcomp.errors import ConfigError
from fedcomp.models import im2col


@pytest.mark.parametrize('shape', [(2, 8, 8, 1, 4, 3), (3, 12, 10, 5, 7, 2)])
def test_matches_lax_conv(shape):
  b, h, w, cin, cout, k = shape
  kx, kk, kb = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (b, h, w, cin))
  kernel = jax.random.normal(kk, (k, k, cin, cout))
  bias = jax.random.normal(kb, (cout,))
  want = (
    jax.lax.conv_general_dilated(
      x, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
    + bias
  )
  np.testing.assert_allclose(im2col.conv2d_valid(x, kernel, bias), want, rtol=1e-5, atol=1e-5)


def test_cnn_gives_the_same_logits_and_gradients_with_either_impl():
  x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
  xla = models.build_model('cnn', {'conv_impl': 'xla'}, (28, 28, 1), 10, seed=0)
  col = models.build_model('cnn', {'conv_impl': 'im2col'}, (28, 28, 1), 10, seed=0)
  for a, b in zip(jax.tree.leaves(xla.params), jax.tree.leaves(col.params)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(col.apply(col.params, x), xla.apply(xla.params, x), atol=1e-5)

  def grads(m):
    return jax.grad(lambda p: m.apply(p, x).sum())(m.params)

  for a, b in zip(jax.tree.leaves(grads(xla)), jax.tree.leaves(grads(col))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_unknown_impl_names_the_key():
  known = r"config.model.conv_impl='fft' is unknown; known: auto, xla, im2col"
  with pytest.raises(ConfigError, match=known):
    models.build_model('cnn', {'conv_impl': 'fft'}, (28, 28, 1), 10, seed=0)


@pytest.mark.parametrize('conv_impl', ['xla', 'im2col'])
def test_bfloat16_compute_keeps_float32_params_and_logits(conv_impl):
  x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
  f32 = models.build_model('cnn', {'conv_impl': conv_impl}, (28, 28, 1), 10, seed=0)
  bf16 = models.build_model(
    'cnn', {'conv_impl': conv_impl, 'compute_dtype': 'bfloat16'}, (28, 28, 1), 10, seed=0
  )
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(bf16.params))
  want, got = f32.apply(f32.params, x), bf16.apply(bf16.params, x)
  assert got.dtype == np.float32
  # bf16 keeps 8 mantissa bits: logits agree to about 1% of their scale, not to f32 precision.
  scale = float(np.abs(want).max())
  err = float(np.abs(got - want).max())
  assert 1e-6 * scale < err < 2e-2 * scale
  grads = jax.grad(lambda p: bf16.apply(p, x).sum())(bf16.params)
  assert all(g.dtype == np.float32 for g in jax.tree.leaves(grads))


def test_unknown_compute_dtype_names_the_key():
  with pytest.raises(ConfigError, match=r"config.model.compute_dtype='float16' is unknown"):
    models.build_model('cnn', {'compute_dtype': 'float16'}, (28, 28, 1), 10, seed=0)
