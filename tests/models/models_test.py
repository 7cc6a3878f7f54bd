"""Tests for fedcomp.models: sizes against published counts, FLOPs, model state, errors.

Every registered model passes the battery: it builds, its gradient step lowers the loss on
a fixed batch, it is deterministic, evaluation does not depend on the other rows, and its
taps give the input of its logits layer ('penultimate').
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
  'split_cnn': {'axis': 'columns', 'padding': 'SAME', 'features': (3, 4), 'dense': (8,)},
  'split_mlp': {'bottom_width': 8, 'hidden': 16},
  'vgg': {'depth': 11},
}
# The logits layer of each battery classifier.
HEADS = {'cnn': 'dense1', 'mlp': 'dense1', 'resnet': 'head', 'simple_cnn': 'dense1', 'vgg': 'head',
         'split_cnn': 'top/dense1', 'split_mlp': 'top/dense1'}  # fmt: skip


@pytest.fixture(scope='module')
def digits_cnn():
  return build_model('cnn', {}, *DIGITS, seed=0)


def _num_params(params):
  return sum(x.size for x in jax.tree.leaves(params))


def test_battery_covers_every_model():
  assert set(BATTERY) == set(MODELS)
  assert set(HEADS) == set(MODELS) - {'autoencoder'}


@pytest.mark.parametrize('name', sorted(HEADS))
def test_every_classifier_taps_the_input_of_its_logits_layer(name):
  model = build_model(name, BATTERY[name], *DIGITS, seed=0)
  x = jax.random.uniform(jax.random.key(1), (3, *DIGITS[0]))
  out, state, taps = model.taps(model.params, model.state, x)
  assert 'penultimate' in model.feature_names
  assert tuple(taps['features']) == model.feature_names
  head = model.params
  for key in HEADS[name].split('/'):
    head = head[key]
  penultimate = taps['features']['penultimate']
  assert penultimate.shape == (3, head['kernel'].shape[0])
  np.testing.assert_allclose(out, penultimate @ head['kernel'] + head['bias'], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out, model.apply(model.params, model.state, x)[0])


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
    ConfigError, match=r'config.model_name=.vit.*cnn, mlp, resnet, simple_cnn, split_cnn, split_mlp'
  ):
    build_model('vit', {}, *DIGITS, seed=0)


def test_unknown_kwarg_names_config_key():
  with pytest.raises(
    ConfigError,
    match=r'config\.model\.hidden is set .*: features, dense, dropout, conv_impl, '
    r'compute_dtype, width\)$',
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
    ('resnet', {'depth': 34}, 'depth'),
    ('resnet', {'depth': 2}, 'depth'),
    ('resnet', {'width': 0}, 'width'),
    ('cnn', {'width': -0.5}, 'width'),
    ('cnn', {'width': float('nan')}, 'width'),
    ('vgg', {'width': 'half'}, 'width'),
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


def _cifar_resnet_count(n: int, widths, channels: int, classes: int) -> int:
  """Parameters of a 6n+2 ResNet by hand: bias-free 3x3 convs, BatchNorm scale + bias."""
  count = 9 * channels * widths[0] + 2 * widths[0]  # stem conv + BN
  cin = widths[0]
  for cout in widths:
    for _ in range(n):
      count += 9 * cin * cout + 9 * cout * cout + 4 * cout  # two convs, two BNs
      cin = cout
  return count + cin * classes + classes


def test_resnet8_param_count_by_hand():
  # stem 144 + 32; blocks 16->16 4,672, 16->32 13,952, 32->64 55,552; head 650.
  model = build_model('resnet', {'depth': 8}, (28, 28, 1), 10, seed=0)
  assert _num_params(model.params) == 176 + 4_672 + 13_952 + 55_552 + 650 == 75_002
  assert _cifar_resnet_count(1, (16, 32, 64), 1, 10) == 75_002
  assert len(model.params['blocks']) == 3


@pytest.mark.parametrize('depth,count', [(14, 172_218), (20, 269_434)])
def test_cifar_resnet_family_param_counts(depth, count):
  model = build_model('resnet', {'depth': depth}, (28, 28, 1), 10, seed=0)
  assert _num_params(model.params) == _cifar_resnet_count((depth - 2) // 6, (16, 32, 64), 1, 10)
  assert _num_params(model.params) == count  # the counts in resnet.py's docstring
  assert len(model.params['blocks']) == 3 * (depth - 2) // 6


def test_resnet_width_multiplier_param_count_by_hand():
  model = build_model('resnet', {'depth': 8, 'width': 0.5}, (28, 28, 1), 10, seed=0)
  # stem 72 + 16; blocks 8->8 1,184, 8->16 3,520, 16->32 13,952; head 330.
  assert _num_params(model.params) == 88 + 1_184 + 3_520 + 13_952 + 330 == 19_074
  assert model.params['stem']['kernel'].shape == (3, 3, 1, 8)


def test_resnet_odd_widths_pad_shortcuts():
  # 16/32/64 x 0.3 -> 5/10/19 channels: option A pads 5 and 9 (odd) channels.
  model = build_model('resnet', {'depth': 8, 'width': 0.3}, *DIGITS, seed=0)
  assert _num_params(model.params) == _cifar_resnet_count(1, (5, 10, 19), 1, 10)
  x = jax.random.normal(jax.random.key(1), (2, *DIGITS[0]))
  out, _ = model.apply(model.params, model.state, x, train=True, key=jax.random.key(0))
  assert out.shape == (2, 10) and np.isfinite(out).all()


def test_resnet18_width_keeps_projection_shortcuts():
  model = build_model('resnet', {'depth': 18, 'width': 0.25}, (32, 32, 3), 10, seed=0)
  assert model.params['blocks'][2]['shortcut_conv']['kernel'].shape == (1, 1, 16, 32)
  assert model.params['head']['kernel'].shape == (128, 10)


def test_cnn_width_multiplier_param_count_by_hand():
  model = build_model('cnn', {'width': 0.5}, (28, 28, 1), 62, seed=0)
  # features 16, 32; dense 64.
  conv0, conv1 = 9 * 1 * 16 + 16, 9 * 16 * 32 + 32
  dense0, dense1 = 12 * 12 * 32 * 64 + 64, 64 * 62 + 62
  assert _num_params(model.params) == conv0 + conv1 + dense0 + dense1 == 303_806
  # Rounded to the nearest width, at least 1.
  model = build_model('cnn', {'width': 0.3}, *DIGITS, seed=0)
  assert model.params['conv0']['kernel'].shape == (3, 3, 1, 10)  # 9.6
  assert model.params['conv1']['kernel'].shape == (3, 3, 10, 19)  # 19.2
  assert model.params['dense1']['kernel'].shape == (38, 10)  # 38.4
  model = build_model('simple_cnn', {'width': 0.001}, *DIGITS, seed=0)
  assert model.params['conv1']['kernel'].shape == (3, 3, 1, 1)
  assert model.params['dense1']['kernel'].shape == (1, 10)


def test_width_one_is_the_default():
  for name, kwargs in [('cnn', {}), ('resnet', {'depth': 8}), ('vgg', {'depth': 11})]:
    default = build_model(name, kwargs, *DIGITS, seed=0)
    one = build_model(name, {**kwargs, 'width': 1}, *DIGITS, seed=0)
    assert jax.tree.structure(one.params) == jax.tree.structure(default.params)
    assert jax.tree.structure(one.state) == jax.tree.structure(default.state)
    assert all(
      np.array_equal(a, b)
      for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(default.params))
    )


def test_vgg_width_scales_every_conv():
  model = build_model('vgg', {'depth': 11, 'width': 0.5}, *DIGITS, seed=0)
  widths = [model.params['convs'][i]['kernel'].shape[-1] for i in range(8)]
  assert widths == [32, 64, 128, 128, 256, 256, 256, 256]
  assert model.params['head']['kernel'].shape == (256, 10)
