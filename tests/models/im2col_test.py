"""im2col convolution equals XLA's convolution."""

import jax
import numpy as np
import pytest
from flax import nnx

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
  np.testing.assert_allclose(im2col.conv2d(x, kernel, bias), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  'shape,strides,padding',
  [
    ((2, 8, 8, 3, 4, 3), (2, 2), 'SAME'),
    ((2, 7, 9, 2, 5, 3), (1, 1), 'SAME'),
    ((1, 9, 9, 4, 2, 1), (2, 2), 'VALID'),
    ((2, 6, 6, 1, 3, 3), (1, 2), ((1, 0), (2, 1))),
  ],
)
def test_strides_and_padding_match_lax_conv(shape, strides, padding):
  b, h, w, cin, cout, k = shape
  kx, kk = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (b, h, w, cin))
  kernel = jax.random.normal(kk, (k, k, cin, cout))
  want = jax.lax.conv_general_dilated(
    x, kernel, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  np.testing.assert_allclose(
    im2col.conv2d(x, kernel, None, strides, padding), want, rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize(
  'shape,strides,padding',
  [
    ((2, 7, 7, 6, 4, 5), (2, 2), 'SAME'),  # the DCGAN generator's upsampling
    ((2, 7, 7, 6, 4, 5), (1, 1), 'SAME'),
    ((1, 5, 6, 3, 2, 3), (2, 3), 'VALID'),
    ((2, 4, 4, 2, 3, 3), (3, 3), 'SAME'),  # stride > kernel − 1
    ((1, 5, 5, 2, 2, 3), (2, 2), ((1, 2), (0, 1))),
  ],
)
def test_conv_transpose_matches_lax_conv_transpose(shape, strides, padding):
  b, h, w, cin, cout, k = shape
  kx, kk, kb = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (b, h, w, cin))
  kernel = jax.random.normal(kk, (k, k, cin, cout))
  bias = jax.random.normal(kb, (cout,))
  want = jax.lax.conv_transpose(
    x, kernel, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  got = im2col.conv_transpose2d(x, kernel, bias, strides, padding)
  np.testing.assert_allclose(got, want + bias, rtol=1e-5, atol=1e-5)


# resnet (47 s on 2 cores) adds strided and padded convs, which the tests above cover: -m slow.
@pytest.mark.parametrize('name', ['cnn', pytest.param('resnet', marks=pytest.mark.slow)])
def test_models_train_the_same_with_either_impl(name):
  """Training passes (where im2col is used) give the same outputs and gradients."""
  shape = (28, 28, 1) if name == 'cnn' else (8, 8, 3)
  kw = {'dropout': (0.0, 0.0)} if name == 'cnn' else {'depth': 20}
  x = jax.random.uniform(jax.random.key(1), (4, *shape))
  xla = models.build_model(name, {**kw, 'conv_impl': 'xla'}, shape, 10, seed=0)
  col = models.build_model(name, {**kw, 'conv_impl': 'im2col'}, shape, 10, seed=0)
  for a, b in zip(jax.tree.leaves(xla.params), jax.tree.leaves(col.params)):
    np.testing.assert_array_equal(a, b)

  def out(m, p):
    return m.apply(p, m.state, x, train=True, key=jax.random.key(0))[0]

  np.testing.assert_allclose(out(col, col.params), out(xla, xla.params), rtol=1e-4, atol=1e-4)
  for a, b in zip(
    jax.tree.leaves(jax.grad(lambda p: out(xla, p).sum())(xla.params)),
    jax.tree.leaves(jax.grad(lambda p: out(col, p).sum())(col.params)),
  ):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


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
  want, got = f32.apply(f32.params, {}, x)[0], bf16.apply(bf16.params, {}, x)[0]
  assert got.dtype == np.float32
  # bf16 keeps 8 mantissa bits: logits agree to about 1% of their scale, not to f32 precision.
  scale = float(np.abs(want).max())
  err = float(np.abs(got - want).max())
  assert 1e-6 * scale < err < 2e-2 * scale
  grads = jax.grad(lambda p: bf16.apply(p, {}, x)[0].sum())(bf16.params)
  assert all(g.dtype == np.float32 for g in jax.tree.leaves(grads))


def test_unknown_compute_dtype_names_the_key():
  with pytest.raises(ConfigError, match=r"config.model.compute_dtype='float16' is unknown"):
    models.build_model('cnn', {'compute_dtype': 'float16'}, (28, 28, 1), 10, seed=0)


@pytest.mark.parametrize(
  'shape,strides,padding',
  [
    ((3, 12, 10, 5, 7, 3), (1, 1), 'VALID'),  # the EMNIST CNN's convs
    ((2, 8, 8, 3, 4, 3), (2, 2), 'SAME'),
    ((2, 6, 6, 1, 3, 3), (1, 2), ((1, 0), (2, 1))),
  ],
)
def test_channels_first_conv_and_its_gradients_match_lax_conv(shape, strides, padding):
  b, h, w, cin, cout, k = shape
  kx, kk, kb, kg = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(kx, (b, h, w, cin))
  kernel = jax.random.normal(kk, (k, k, cin, cout))
  bias = jax.random.normal(kb, (cout,))

  def want(x, kernel, bias):
    dn = ('NHWC', 'HWIO', 'NHWC')
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=dn) + bias

  def got(x, kernel, bias):
    out = im2col.conv2d_channels_first(x.transpose(3, 0, 1, 2), kernel, bias, strides, padding)
    return out.transpose(1, 2, 3, 0)

  y = want(x, kernel, bias)
  np.testing.assert_allclose(got(x, kernel, bias), y, rtol=1e-5, atol=1e-5)
  g = jax.random.normal(kg, y.shape)
  grads_want = jax.vjp(want, x, kernel, bias)[1](g)
  grads_got = jax.vjp(got, x, kernel, bias)[1](g)
  for a, b in zip(grads_got, grads_want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('shape,window', [((3, 2, 8, 6), 2), ((2, 1, 7, 9), 3), ((4, 2, 5, 5), 2)])
def test_channels_first_max_pool_matches_nnx_max_pool_with_ties(shape, window):
  """Values and gradients bit for bit, ties (to the first maximum) and ragged edges included."""
  # Few distinct values, many of them positive: most windows hold tied maxima.
  x = jax.random.randint(jax.random.key(0), shape, -1, 3).astype(np.float32)
  g = jax.random.normal(jax.random.key(1), (*shape[:2], shape[2] // window, shape[3] // window))

  def want(x):  # nnx.max_pool pools (B, H, W, C); ours (C, B, H, W)
    y = nnx.max_pool(x.transpose(1, 2, 3, 0), (window, window), strides=(window, window))
    return y.transpose(3, 0, 1, 2)

  y, vjp = jax.vjp(want, x)
  y_got, vjp_got = jax.vjp(lambda x: im2col.max_pool_channels_first(x, window), x)
  np.testing.assert_array_equal(y_got, y)
  np.testing.assert_array_equal(vjp_got(g)[0], vjp(g)[0])
  assert int((vjp(g)[0] != 0).sum()) == g.size  # one winner per window: ties were there
