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
  xla = models.build_model('cnn', {}, (28, 28, 1), 10, seed=0)
  col = models.build_model('cnn', {'conv_impl': 'im2col'}, (28, 28, 1), 10, seed=0)
  for a, b in zip(jax.tree.leaves(xla.params), jax.tree.leaves(col.params)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(col.apply(col.params, x), xla.apply(xla.params, x), atol=1e-5)

  def grads(m):
    return jax.grad(lambda p: m.apply(p, x).sum())(m.params)

  for a, b in zip(jax.tree.leaves(grads(xla)), jax.tree.leaves(grads(col))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_unknown_impl_names_the_key():
  with pytest.raises(ConfigError, match=r"config.model.conv_impl='fft' is unknown; known: xla"):
    models.build_model('cnn', {'conv_impl': 'fft'}, (28, 28, 1), 10, seed=0)
