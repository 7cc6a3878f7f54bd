"""Tests for fedcomp.models: sizes against published counts, FLOPs, model state, errors.

Every registered model passes the battery: it builds, its gradient step lowers the loss on
a fixed batch, it is deterministic, and evaluation does not depend on the other rows.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fedcomp.errors import ConfigError
from fedcomp.models import MODELS, build_model

DIGITS = ((8, 8, 1), 10)
BATTERY = {
  'autoencoder': {'encoder': (16, 4)},
  'cnn': {'features': (4,), 'dense': 8},
  'mlp': {'hidden': (16,), 'batch_norm': True},
  'resnet': {'depth': 20},
  'simple_cnn': {'features': (4,), 'dense': 8},
  'vgg': {'depth': 11},
}


@pytest.fixture(scope='module')
def digits_cnn():
  return build_model('cnn', {}, *DIGITS, seed=0)


def _num_params(params):
  return sum(x.size for x in jax.tree.leaves(params))


def test_battery_covers_every_model():
  assert set(BATTERY) == set(MODELS)


@pytest.mark.parametrize('name', sorted(MODELS))
def test_every_model_trains_is_deterministic_and_evaluates_row_by_row(name):
  model = build_model(name, BATTERY[name], *DIGITS, seed=0)
  again = build_model(name, BATTERY[name], *DIGITS, seed=0)
  assert all(
    np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(again.params))
  )
  x = jax.random.uniform(jax.random.key(1), (6, *DIGITS[0]))
  mask = jnp.array([True] * 5 + [False])
  target = x.reshape(6, -1) if name == 'autoencoder' else jnp.arange(6) % 10

  def loss(p, s):
    out, new = model.apply(p, s, x, train=True, key=jax.random.key(2), mask=mask)
    if name == 'autoencoder':
      per = optax.sigmoid_binary_cross_entropy(out, target).sum(-1)
    else:
      per = optax.softmax_cross_entropy_with_integer_labels(out, target)
    return (per * mask).sum() / 5, new

  step = jax.jit(lambda p, s: jax.value_and_grad(loss, has_aux=True)(p, s))
  (l0, state), grads = step(model.params, model.state)
  params = jax.tree.map(lambda p, g: p - 0.01 * g, model.params, grads)
  (l1, _), _ = step(params, state)
  assert float(l1) < float(l0)
  (l0b, _), grads_b = step(model.params, model.state)
  assert float(l0b) == float(l0)  # deterministic
  # Inference: a row's output does not depend on the other rows (running statistics).
  full = model.apply(params, state, x)[0]
  single = model.apply(params, state, x[:1])[0]
  np.testing.assert_allclose(full[:1], single, rtol=1e-5, atol=1e-5)
  assert model.flops_per_example > 0


@pytest.mark.parametrize(
  'name,kwargs,count',
  [
    ('resnet', {'depth': 18}, 11_173_962),  # the CIFAR ResNet-18 of the FL/pruning papers
    ('resnet', {'depth': 20}, 269_722),  # He et al. 2016: "0.27M"
    ('vgg', {'depth': 11}, 9_231_114),
    ('vgg', {'depth': 16}, 14_728_266),
  ],
)
def test_published_parameter_counts(name, kwargs, count):
  model = build_model(name, kwargs, (32, 32, 3), 10, seed=0)
  assert _num_params(model.params) == count
  assert model.state  # BatchNorm statistics are state, not parameters
  assert all('/' in p for p in model.norm_paths)
  assert len(jax.tree.leaves(model.state)) == 2 * len(model.norm_paths) // 2


def test_batch_norm_statistics_by_hand():
  """Masked rows do not enter the batch statistics; the running averages follow
  ra ← 0.9·ra + 0.1·batch statistic; evaluation leaves them unchanged."""
  model = build_model('mlp', {'hidden': (3,), 'batch_norm': True}, (2,), 2, seed=0)
  x = jnp.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [100.0, 100.0]])
  mask = jnp.array([True, True, True, False])
  _, new = model.apply(model.params, model.state, x, train=True, key=jax.random.key(0), mask=mask)
  h = x[:3] @ model.params['dense0']['kernel'] + model.params['dense0']['bias']
  np.testing.assert_allclose(new['norm0']['mean'], 0.1 * h.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new['norm0']['var'], 0.9 + 0.1 * h.var(0), rtol=1e-5, atol=1e-6)
  _, same = model.apply(model.params, new, x)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(new)))


def test_cnn_emnist_param_count_and_flops():
  model = build_model('cnn', {}, (28, 28, 1), 62, seed=0)
  assert _num_params(model.params) == 1_206_590
  assert set(model.params) == {'conv0', 'conv1', 'dense0', 'dense1'}
  assert model.params['conv0']['kernel'].shape == (3, 3, 1, 32)
  assert not model.params['dense0']['bias'].any()
  macs = 26 * 26 * 32 * 9 * 1 + 24 * 24 * 64 * 9 * 32 + 12 * 12 * 64 * 128 + 128 * 62
  assert model.flops_per_example == 2 * macs == 23_998_208
  assert model.state == {} and model.norm_paths == ()


def test_simple_cnn_cifar_param_count():
  model = build_model('simple_cnn', {}, (32, 32, 3), 10, seed=0)
  assert _num_params(model.params) == 1_626_442
  # Glorot-uniform: |w| <= sqrt(6 / (fan_in + fan_out)).
  kernel = model.params['dense0']['kernel']
  assert float(jnp.abs(kernel).max()) <= np.sqrt(6 / sum(kernel.shape)) + 1e-6


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
    nnx.merge(graphdef, state)(x), digits_cnn.apply(digits_cnn.params, {}, x)[0]
  )


def test_eval_deterministic_and_dropout_drops(digits_cnn):
  apply = jax.jit(
    lambda p, x, train=False, key=None: digits_cnn.apply(p, {}, x, train=train, key=key)[0],
    static_argnames='train',
  )
  params = digits_cnn.params
  x = jax.random.normal(jax.random.key(1), (4, *DIGITS[0]))
  np.testing.assert_array_equal(apply(params, x), apply(params, x))
  k1, k2 = jax.random.split(jax.random.key(2))
  a = apply(params, x, train=True, key=k1)
  assert not np.allclose(a, apply(params, x, train=True, key=k2))
  assert not np.allclose(a, apply(params, x))
  np.testing.assert_array_equal(a, apply(params, x, train=True, key=k1))
  with pytest.raises(ValueError, match='key'):
    digits_cnn.apply(params, {}, x, train=True)


def test_unknown_model_name_lists_known():
  with pytest.raises(
    ConfigError, match=r"config.model_name='vit'.*cnn, mlp, resnet, simple_cnn, vgg"
  ):
    build_model('vit', {}, *DIGITS, seed=0)


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
    ('resnet', {'depth': 50}, 'depth'),
    ('vgg', {'depth': 19}, 'depth'),
  ],
)
def test_bad_kwarg_values(name, kwargs, key):
  with pytest.raises(ConfigError, match=rf'config\.model\.{key}'):
    build_model(name, kwargs, *DIGITS, seed=0)


def test_params_structure_checked(digits_cnn):
  params = dict(digits_cnn.params)
  del params['dense1']
  with pytest.raises(ValueError, match='params do not match'):
    digits_cnn.apply(params, {}, jnp.ones((1, *DIGITS[0])))
