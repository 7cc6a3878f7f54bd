"""Tests for fedcomp.models: sizes, FLOPs, determinism, dropout, vmap and config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fedcomp.errors import ConfigError
from fedcomp.models import MODELS, build_model

DIGITS = ((8, 8, 1), 10)


@pytest.fixture(scope='module')
def digits_cnn():
  return build_model('cnn', {}, *DIGITS, seed=0)


def _num_params(params):
  return sum(x.size for x in jax.tree.leaves(params))


def test_cnn_emnist_param_count_and_flops():
  model = build_model('cnn', {'features': None, 'dense': None}, (28, 28, 1), 62, seed=0)
  assert _num_params(model.params) == 1_206_590
  assert set(model.params) == {'conv0', 'conv1', 'dense0', 'dense1'}
  assert model.params['conv0']['kernel'].shape == (3, 3, 1, 32)
  assert not model.params['dense0']['bias'].any()
  macs = 26 * 26 * 32 * 9 * 1 + 24 * 24 * 64 * 9 * 32 + 12 * 12 * 64 * 128 + 128 * 62
  assert model.flops_per_example == 2 * macs == 23_998_208


def test_simple_cnn_cifar_param_count():
  model = build_model('simple_cnn', {}, (32, 32, 3), 10, seed=0)
  assert _num_params(model.params) == 1_626_442
  # Glorot-uniform: |w| <= sqrt(6 / (fan_in + fan_out)).
  kernel = model.params['dense0']['kernel']
  assert float(jnp.abs(kernel).max()) <= np.sqrt(6 / sum(kernel.shape)) + 1e-6


@pytest.mark.parametrize(
  'name,kwargs', [('mlp', {}), ('mlp', {'hidden': [16]}), ('cnn', {}), ('simple_cnn', {})]
)
def test_output_shape_on_digits(name, kwargs):
  model = build_model(name, kwargs, *DIGITS, seed=0)
  x = jnp.ones((5, *DIGITS[0]), jnp.float32)
  assert model.apply(model.params, x).shape == (5, 10)
  assert model.flops_per_example > 0


def test_mlp_hidden_from_list_and_flops():
  model = build_model('mlp', {'hidden': [16, 8]}, *DIGITS, seed=0)
  assert model.params['dense1']['kernel'].shape == (16, 8)
  assert model.flops_per_example == 2 * (64 * 16 + 16 * 8 + 8 * 10)


def test_apply_matches_nnx_module(digits_cnn):
  ref = MODELS['cnn'](input_shape=DIGITS[0], num_classes=10, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(ref)
  nnx.replace_by_pure_dict(state, digits_cnn.params)
  x = jax.random.normal(jax.random.key(1), (4, *DIGITS[0]))
  np.testing.assert_array_equal(
    nnx.merge(graphdef, state)(x), digits_cnn.apply(digits_cnn.params, x)
  )


def test_eval_deterministic_and_dropout_drops(digits_cnn):
  apply, params = jax.jit(digits_cnn.apply, static_argnames='train'), digits_cnn.params
  x = jax.random.normal(jax.random.key(1), (4, *DIGITS[0]))
  np.testing.assert_array_equal(apply(params, x), apply(params, x))
  k1, k2 = jax.random.split(jax.random.key(2))
  a = apply(params, x, train=True, key=k1)
  assert not np.allclose(a, apply(params, x, train=True, key=k2))
  assert not np.allclose(a, apply(params, x))
  np.testing.assert_array_equal(a, apply(params, x, train=True, key=k1))
  with pytest.raises(ValueError, match='key'):
    digits_cnn.apply(params, x, train=True)


def test_jit_vmap_over_stacked_params_matches_loop(digits_cnn):
  copies = [build_model('cnn', {}, *DIGITS, seed=s).params for s in range(3)]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *copies)
  x = jax.random.normal(jax.random.key(1), (3, 4, *DIGITS[0]))
  keys = jax.random.split(jax.random.key(5), 3)
  for train in (False, True):
    fn = lambda p, x, k, train=train: digits_cnn.apply(p, x, train=train, key=k)
    got = jax.jit(jax.vmap(fn))(stacked, x, keys)
    for i, p in enumerate(copies):
      np.testing.assert_allclose(got[i], fn(p, x[i], keys[i]), rtol=1e-5, atol=1e-5)


def test_unknown_model_name_lists_known():
  with pytest.raises(ConfigError, match=r"config.model_name='resnet'.*cnn, mlp, simple_cnn"):
    build_model('resnet', {}, *DIGITS, seed=0)


def test_unknown_kwarg_names_config_key():
  with pytest.raises(
    ConfigError,
    match=r'config\.model\.hidden is set .*: features, dense, dropout, conv_impl, compute_dtype\)$',
  ):
    build_model('cnn', {'hidden': (10,), 'dense': None}, *DIGITS, seed=0)
  with pytest.raises(ConfigError, match=r'config\.model\.rngs'):
    build_model('mlp', {'rngs': 1}, *DIGITS, seed=0)


@pytest.mark.parametrize(
  'name,kwargs,key',
  [
    ('cnn', {'dropout': (0.5,)}, 'dropout'),
    ('cnn', {'features': (8, 8, 8, 8)}, 'features'),
    ('mlp', {'hidden': (0,)}, 'hidden'),
  ],
)
def test_bad_kwarg_values(name, kwargs, key):
  with pytest.raises(ConfigError, match=rf'config\.model\.{key}'):
    build_model(name, kwargs, *DIGITS, seed=0)


def test_params_structure_checked(digits_cnn):
  params = dict(digits_cnn.params)
  del params['dense1']
  with pytest.raises(ValueError, match='params do not match'):
    digits_cnn.apply(params, jnp.ones((1, *DIGITS[0])))
