"""Tests for BuiltModel.taps: features and BatchNorm input statistics by hand, the mask,
running statistics in execution order, and jit/vmap/grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedcomp.models import build_model

DIGITS = ((8, 8, 1), 10)
MASK = jnp.array([True] * 5 + [False])


@pytest.fixture(scope='module')
def resnet():
  return build_model('resnet', {'depth': 8, 'width': 0.5}, *DIGITS, seed=0)


def _random_state(state, seed=3):
  """BatchNorm statistics that differ per layer and channel (positive variances)."""
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  new = [jax.random.uniform(k, x.shape, minval=0.5, maxval=1.5) for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, new)


def _x(seed=1, rows=6):
  return jax.random.normal(jax.random.key(seed), (rows, *DIGITS[0]))


def _resnet_bn_paths(blocks: int):
  """The BatchNorm layers of a 'pad' ResNet in forward-execution order."""
  return [('stem_bn',)] + [(b, bn) for b in range(blocks) for bn in ('bn0', 'bn1')]


@pytest.mark.parametrize('train', [False, True])
def test_taps_outputs_and_state_equal_apply(resnet, train):
  state = _random_state(resnet.state)
  key = jax.random.key(0)
  out, new, _ = resnet.taps(resnet.params, state, _x(), train=train, key=key, mask=MASK)
  ref, ref_new = resnet.apply(resnet.params, state, _x(), train=train, key=key, mask=MASK)
  np.testing.assert_array_equal(out, ref)
  assert jax.tree.structure(new) == jax.tree.structure(ref_new)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref_new)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('train', [False, True])
def test_first_batch_norm_stats_are_those_of_the_stem_conv_output(resnet, train):
  state = _random_state(resnet.state)
  x = _x()
  _, _, taps = resnet.taps(resnet.params, state, x, train=train, key=jax.random.key(0), mask=MASK)
  stem = jax.lax.conv_general_dilated(
    x, resnet.params['stem']['kernel'], (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )[:5]  # the unmasked rows
  mean = stem.mean((0, 1, 2))
  var = ((stem - mean) ** 2).mean((0, 1, 2))
  first = taps['bn'][0]
  np.testing.assert_allclose(first['mean'], mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(first['var'], var, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(first['running_mean'], state['stem_bn']['mean'])
  np.testing.assert_array_equal(first['running_var'], state['stem_bn']['var'])


def test_bn_entries_follow_execution_order_with_running_statistics(resnet):
  state = _random_state(resnet.state)
  _, _, taps = resnet.taps(resnet.params, state, _x(), train=True, key=jax.random.key(0))
  paths = _resnet_bn_paths(len(resnet.params['blocks']))
  assert len(taps['bn']) == len(paths) == len(jax.tree.leaves(state)) // 2
  assert len(taps['bn']) == len(resnet.norm_paths) // 2  # scale and bias per BatchNorm
  for entry, path in zip(taps['bn'], paths):
    layer = state['blocks'][path[0]][path[1]] if len(path) == 2 else state[path[0]]
    np.testing.assert_array_equal(entry['running_mean'], layer['mean'])
    np.testing.assert_array_equal(entry['running_var'], layer['var'])
    assert entry['mean'].shape == entry['var'].shape == layer['mean'].shape


@pytest.mark.parametrize('train', [False, True])
def test_masked_rows_do_not_enter_the_statistics(resnet, train):
  x = _x()
  other = x.at[5].set(100.0 * jnp.ones_like(x[5]))
  key = jax.random.key(0)
  _, _, a = resnet.taps(resnet.params, resnet.state, x, train=train, key=key, mask=MASK)
  _, _, b = resnet.taps(resnet.params, resnet.state, other, train=train, key=key, mask=MASK)
  for ea, eb in zip(a['bn'], b['bn'], strict=True):
    np.testing.assert_allclose(ea['mean'], eb['mean'], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ea['var'], eb['var'], rtol=1e-5, atol=1e-6)
  # Without the mask, the changed row counts.
  _, _, c = resnet.taps(resnet.params, resnet.state, other, train=train, key=key)
  assert not np.allclose(a['bn'][0]['mean'], c['bn'][0]['mean'])


def test_resnet_stage_features_are_pooled_stage_outputs(resnet):
  _, _, taps = resnet.taps(resnet.params, resnet.state, _x())
  features = taps['features']
  assert resnet.feature_names == ('penultimate', 'stage0', 'stage1', 'stage2')
  assert [features[f'stage{i}'].shape[1] for i in range(3)] == [8, 16, 32]
  np.testing.assert_array_equal(features['stage2'], features['penultimate'])
  assert all(f.dtype == jnp.float32 for f in features.values())


def test_mlp_features_and_batch_norm_by_hand():
  model = build_model('mlp', {'hidden': (3,), 'batch_norm': True}, (2,), 2, seed=0)
  state = _random_state(model.state)
  x = jnp.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [100.0, 100.0]])
  mask = jnp.array([True, True, True, False])
  out, _, taps = model.taps(model.params, state, x, mask=mask)
  p = model.params
  h = x @ p['dense0']['kernel'] + p['dense0']['bias']
  np.testing.assert_allclose(taps['bn'][0]['mean'], h[:3].mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(taps['bn'][0]['var'], h[:3].var(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(taps['bn'][0]['running_var'], state['norm0']['var'])
  normed = (h - state['norm0']['mean']) / jnp.sqrt(state['norm0']['var'] + 1e-5)
  penultimate = jax.nn.relu(normed * p['norm0']['scale'] + p['norm0']['bias'])
  np.testing.assert_allclose(taps['features']['penultimate'], penultimate, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    out, penultimate @ p['dense1']['kernel'] + p['dense1']['bias'], rtol=1e-5, atol=1e-5
  )


def test_models_without_batch_norm_and_the_autoencoder_code():
  cnn = build_model('cnn', {'features': (4,), 'dense': 8}, *DIGITS, seed=0)
  _, _, taps = cnn.taps(cnn.params, cnn.state, _x())
  assert taps['bn'] == () and cnn.feature_names == ('penultimate',)
  ae = build_model('autoencoder', {'encoder': (16, 4)}, *DIGITS, seed=0)
  _, _, taps = ae.taps(ae.params, ae.state, _x())
  assert ae.feature_names == ('code',) and taps['bn'] == ()
  p = ae.params
  code = jax.nn.relu(_x().reshape(6, -1) @ p['dense0']['kernel'] + p['dense0']['bias'])
  code = code @ p['dense1']['kernel'] + p['dense1']['bias']  # the code layer is linear
  np.testing.assert_allclose(taps['features']['code'], code, rtol=1e-5, atol=1e-5)


def _deep_inversion_loss(model, params, state, x):
  """DeepInversion's BatchNorm loss plus a feature term (Yin et al. 2020)."""
  _, _, taps = model.taps(params, state, x)
  bn = sum(
    jnp.linalg.norm(e['mean'] - e['running_mean']) + jnp.linalg.norm(e['var'] - e['running_var'])
    for e in taps['bn']
  )
  return bn + jnp.square(taps['features']['stage1']).mean()


def test_taps_jit_vmap_and_grad(resnet):
  state = _random_state(resnet.state)
  x = _x()
  eager = resnet.taps(resnet.params, state, x, mask=MASK)
  jitted = jax.jit(lambda p, s, x: resnet.taps(p, s, x, mask=MASK))(resnet.params, state, x)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # vmap over two clients' params.
  other = jax.tree.map(lambda a: 1.1 * a, resnet.params)
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), resnet.params, other)
  batched = jax.vmap(lambda p: resnet.taps(p, state, x)[2])(stacked)
  second = resnet.taps(other, state, x)[2]
  for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(second), strict=True):
    np.testing.assert_allclose(a[1], b, rtol=1e-4, atol=1e-5)
  # Gradients flow to the inputs and the parameters through the features and statistics.
  gx = jax.grad(lambda x: _deep_inversion_loss(resnet, resnet.params, state, x))(x)
  assert np.isfinite(gx).all() and np.abs(gx).max() > 0
  gp = jax.grad(lambda p: _deep_inversion_loss(resnet, p, state, x))(resnet.params)
  assert np.abs(gp['stem']['kernel']).max() > 0
  assert np.abs(gp['blocks'][2]['conv1']['kernel']).max() > 0
