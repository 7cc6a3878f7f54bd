"""HoVeFL: split models, feature splits, the hybrid partition and population aggregation,
checked against hand computations and single-client runs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fl_testing import round_for, run_rounds, tree_equal

from fedcomp import tasks
from fedcomp.algorithms import ALGORITHMS, fed_avg, hovefl
from fedcomp.core import AlgorithmContext, OptimizerStep
from fedcomp.core.reducers import weighted_mean
from fedcomp.data import Dataset
from fedcomp.data.feature_split import make_split
from fedcomp.data.partitions import PARTITIONS
from fedcomp.errors import ConfigError
from fedcomp.models import build_model

SHAPE = (4, 4, 1)  # two parties: the left and right 4x2 halves


def split_mlp(parts=2, seed=0):
  return build_model('split_mlp', {'parts': parts, 'bottom_width': 3, 'hidden': 5}, SHAPE, 3, seed)


def ctx_for(model, tx=None):
  return AlgorithmContext(
    model=model,
    task=tasks.make_task('classification'),
    client_optimizer=OptimizerStep(tx or optax.sgd(0.3)),
    server_tx=optax.sgd(1.0),
    aggregator=weighted_mean(),
  )


def clients(sizes, seed=0, pad=6):
  rng = np.random.default_rng(seed)
  num = len(sizes)
  x = rng.normal(size=(num, pad, *SHAPE)).astype(np.float32)
  y = rng.integers(0, 3, (num, pad)).astype(np.int32)
  mask = np.arange(pad)[None] < np.asarray(sizes)[:, None]
  return {'x': x * mask[:, :, None, None, None], 'y': y * mask}, mask


def np_dense(x, layer):
  return x @ np.asarray(layer['kernel']) + np.asarray(layer['bias'])


def test_split_model_equals_a_hand_assembled_forward():
  model = split_mlp()
  p = model.params
  x = np.random.default_rng(1).normal(size=(3, *SHAPE)).astype(np.float32)
  left, right = x[:, :, :2].reshape(3, -1), x[:, :, 2:].reshape(3, -1)
  h = np.concatenate(
    [np.maximum(np_dense(left, p['bottom0']['dense']), 0),
     np.maximum(np_dense(right, p['bottom1']['dense']), 0)], axis=1,
  )  # fmt: skip
  logits = np_dense(np.maximum(np_dense(h, p['top']['dense0']), 0), p['top']['dense1'])
  out = model.apply(p, model.state, jnp.asarray(x))[0]
  np.testing.assert_allclose(out, logits, rtol=1e-5, atol=1e-6)


def test_a_party_bottom_gets_no_gradient_from_the_other_party_features():
  model = split_mlp()
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, *SHAPE)).astype(np.float32))
  y = jnp.array([0, 2])

  def loss(p, x):
    logits = model.apply(p, model.state, x)[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

  # Changing party 1's features changes bottom0's gradient only through the top (the
  # activations bottom0 receives back), never through bottom0's own input: with the top's
  # backward signal fixed, bottom0's kernel gradient is its slice's outer product.
  g = jax.grad(loss)(model.params, x)
  x2 = x.at[:, :, 2:].set(x[:, :, 2:] + 1.0)  # party 1's columns only
  g2 = jax.grad(loss)(model.params, x2)
  assert not np.allclose(g['bottom1']['dense']['kernel'], g2['bottom1']['dense']['kernel'])
  # Input gradients: bottom0's output depends on columns 0..1 only.
  bottom0 = lambda x: jnp.maximum(  # noqa: E731
    x[:, :, :2].reshape(2, -1) @ model.params['bottom0']['dense']['kernel']
    + model.params['bottom0']['dense']['bias'], 0)  # fmt: skip
  direct = jax.grad(lambda x: bottom0(x).sum())(x)
  via_model = jax.jacrev(
    lambda x: model.taps(model.params, model.state, x)[2]['features']['penultimate']
  )(x)  # (2, 5, 2, 4, 4, 1): the top's hidden layer
  assert np.all(np.asarray(direct)[:, :, 2:] == 0)
  assert np.any(np.asarray(via_model)[..., :2, :] != 0) and np.any(
    np.asarray(via_model)[..., 2:, :] != 0
  )


def test_feature_splits_cover_the_features_exactly_once():
  s = make_split((28, 28, 1), 'columns', 3)
  assert s.bounds == ((0, 9), (9, 19), (19, 28))
  assert [s.part_shape(p) for p in range(3)] == [(28, 9, 1), (28, 10, 1), (28, 9, 1)]
  x = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28, 1)
  np.testing.assert_array_equal(np.concatenate(s(x), axis=2), x)
  flat = make_split((4, 4, 1), 'flat', bounds=((8, 16), (0, 8)))
  np.testing.assert_array_equal(flat(x[:, :4, :4])[1], x[:, :4, :4].reshape(2, -1)[:, :8])
  with pytest.raises(ConfigError, match='overlap at feature 5'):
    make_split((28, 28, 1), 'rows', bounds=((0, 6), (5, 28)))
  with pytest.raises(ConfigError, match='leave 2 feature.* the first 14'):
    make_split((28, 28, 1), 'rows', bounds=((0, 14), (16, 28)))
  with pytest.raises(ConfigError, match='axis'):
    make_split((28, 28, 1), 'depth')
  with pytest.raises(ConfigError, match='parts=29'):
    make_split((28, 28, 1), 'rows', 29)
  with pytest.raises(ConfigError, match='image slices'):
    build_model('split_cnn', {'axis': 'flat'}, (28, 28, 1), 10, 0)
  with pytest.raises(ConfigError, match="padding='SAME'"):
    build_model('split_cnn', {}, (28, 28, 1), 10, 0)  # 14x28 halves: too small for VALID


SIZES = [5, 3, 6]  # two horizontal clients, then one vertical group


def hv(weighting, accumulate=False, model=None, tx=None):
  model = model or split_mlp()
  alg = hovefl.make(ctx_for(model, tx), num_horizontal=2, num_vertical=2,
                    weighting=weighting, accumulate_locals=accumulate)  # fmt: skip
  return alg, model


def local_models(weighting, data, mask, params, seed=0):
  """Each client's local model, from a round where it is the only client (any weighting
  then returns that client's model)."""
  out = []
  for c in range(3):
    alg, model = hv(weighting)
    fr = round_for(alg, num_clients=3, pad_to=6, batch_size=6)
    one = {k: v[c : c + 1] for k, v in data.items()}
    server = run_rounds(fr, one, mask[c : c + 1], [c], rounds=1, seed=seed, params=params)[0]
    out.append(server.inner.params)
  return out


@pytest.mark.parametrize('weighting', ['populations', 'examples', 'uniform'])
def test_aggregation_weights_by_hand(weighting):
  data, mask = clients(SIZES)
  alg, model = hv(weighting)
  fr = round_for(alg, num_clients=3, pad_to=6, batch_size=6)
  server, table, _ = run_rounds(fr, data, mask, [0, 1, 2], rounds=1, params=model.params)
  np.testing.assert_array_equal(table['population'], [0, 0, 1])
  m = local_models(weighting, data, mask, model.params)
  coef = {
    'populations': [0.25, 0.25, 0.5],  # mean of the 2 horizontal, then 50/50 with the group
    'examples': [5 / 14, 3 / 14, 6 / 14],
    'uniform': [1 / 3, 1 / 3, 1 / 3],
  }[weighting]
  want = jax.tree.map(lambda a, b, c: coef[0] * a + coef[1] * b + coef[2] * c, *m)
  for got, ref in zip(jax.tree.leaves(server.inner.params), jax.tree.leaves(want)):
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-6)


def test_accumulated_locals_average_every_local_model_since_round_one():
  data, mask = clients(SIZES, seed=5)
  alg, model = hv('populations', accumulate=True)
  fr = round_for(alg, num_clients=3, pad_to=6, batch_size=6)
  server, table = fr.init(model.params, model.state)
  globals_, locals_ = [model.params], []
  for r in range(2):
    locals_.append(local_models('populations', data, mask, globals_[-1], seed=r))
    cohort = fr.put_cohort(np.arange(3), data, mask)
    server, table, _ = fr.round(server, table, *cohort, jax.random.key(r))
    globals_.append(server.inner.params)
  (a1, b1, v1), (a2, b2, v2) = locals_
  want = jax.tree.map(
    lambda a1, b1, v1, a2, b2, v2: 0.5 * (a1 + b1 + a2 + b2) / 4 + 0.5 * (v1 + v2) / 2,
    a1, b1, v1, a2, b2, v2,
  )  # fmt: skip
  for got, ref in zip(jax.tree.leaves(globals_[-1]), jax.tree.leaves(want)):
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-6)
  # Without accumulation round 2 averages only its own locals: the two differ.
  plain = run_rounds(
    round_for(hv('populations')[0], num_clients=3, pad_to=6, batch_size=6), data, mask,
    [0, 1, 2], rounds=2, params=model.params,
  )[0]  # fmt: skip
  assert not tree_equal(plain.inner.params, globals_[-1])


@pytest.mark.parametrize('weighting,fed_avg_weighting',
                         [('examples', 'examples'), ('populations', 'uniform'),
                          ('uniform', 'uniform')])  # fmt: skip
def test_one_party_and_no_vertical_groups_is_fed_avg_bit_for_bit(weighting, fed_avg_weighting):
  data, mask = clients([5, 3, 6, 2])
  model = split_mlp(parts=1)
  tx = optax.adam(0.05)
  alg = hovefl.make(ctx_for(model, tx), num_horizontal=4, weighting=weighting)
  ref = fed_avg.make(ctx_for(model, tx), weighting=fed_avg_weighting)
  ids = [0, 1, 2, 3]
  for devices in (1, 8):
    a = run_rounds(round_for(alg, devices, num_clients=4), data, mask, ids, 3, params=model.params)
    b = run_rounds(round_for(ref, devices, num_clients=4), data, mask, ids, 3, params=model.params)
    assert tree_equal(a[0].inner, b[0]) and a[0].params is not None
    assert tree_equal(a[2], b[2])


def test_each_part_has_its_own_optimizer_state():
  """Global-norm clipping per part: each part's step is clipped by its own norm."""
  model = split_mlp()
  step = hovefl.per_part_optimizer(
    OptimizerStep(optax.chain(optax.clip_by_global_norm(0.1), optax.sgd(1.0))), model.params
  )
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), model.params)
  grads['bottom1'] = jax.tree.map(lambda g: g * 1e-3, grads['bottom1'])  # tiny norm
  state = step.init(model.params)
  new, state = step(grads, state, model.params)
  for part in ('bottom0', 'bottom1', 'top'):
    g = grads[part]
    norm = np.sqrt(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(g)))
    scale = min(1.0, 0.1 / norm)
    for n, p, gi in zip(jax.tree.leaves(new[part]), jax.tree.leaves(model.params[part]),
                        jax.tree.leaves(g)):  # fmt: skip
      np.testing.assert_allclose(n, p - scale * gi, rtol=1e-5, atol=1e-7)
  assert set(state.inner_states) == {'bottom0', 'bottom1', 'top'}


def test_hybrid_partition_non_iid_horizontal_and_iid_vertical():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(10), 100)
  ds = Dataset(train={'x': np.zeros((1000, 1), np.float32), 'y': y},
               test={'x': np.zeros((1, 1), np.float32), 'y': y[:1]}, num_classes=10)  # fmt: skip
  parts = PARTITIONS['hovefl'](ds, 8, rng, num_horizontal=5)  # 5 horizontal + 3 groups
  assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1000))
  assert sum(len(p) for p in parts[:5]) == 625  # an equal share per lane: 5/8
  assert all(len(np.unique(y[p])) == 2 for p in parts[:5])  # 2-shard non-IID
  assert all(len(np.unique(y[p])) >= 8 for p in parts[5:])  # IID
  parts = PARTITIONS['hovefl'](ds, 5, rng, num_horizontal=5)
  assert sum(map(len, parts)) == 1000
  with pytest.raises(ConfigError, match='vertical groups need'):
    PARTITIONS['hovefl'](ds, 12, rng, num_horizontal=2, horizontal_fraction=0.995)
  with pytest.raises(ConfigError, match='exactly when it has clients'):
    PARTITIONS['hovefl'](ds, 4, rng, num_horizontal=2, horizontal_fraction=1.0)


def test_bad_layouts_fail_in_one_line():
  with pytest.raises(ConfigError, match='multiple of'):
    hovefl.make(ctx_for(split_mlp()), num_horizontal=2, num_vertical=3)
  with pytest.raises(ConfigError, match='needs a split model'):
    ALGORITHMS['hovefl'](ctx_for(build_model('mlp', {}, SHAPE, 3, 0)), num_vertical=2)
  with pytest.raises(ConfigError, match='weighting'):
    hovefl.make(ctx_for(split_mlp()), weighting='pooled')
  from configs import hovefl as cfg
  from fedcomp.algorithms import CONFIG_CHECKS

  config = cfg.get_config('runlocal')
  model = build_model(config.model_name, config.model, (8, 8, 1), 10, 0)
  CONFIG_CHECKS['hovefl'](config, model)  # the config file's own layout passes
  cases = [
    ('aggregator_name', 'median', 'aggregates by population'),
    ('cohort_size', 5, 'every HoVeFL client trains'),
    ('partition_name', 'iid', "needs partition_name='hovefl'"),
  ]
  for key, value, match in cases:
    bad = cfg.get_config('runlocal')
    bad[key] = value
    with pytest.raises(ConfigError, match=match):
      CONFIG_CHECKS['hovefl'](bad, model)
  alg, model = hv('populations')
  fr = round_for(alg, num_clients=4)
  with pytest.raises(ConfigError, match='2 horizontal clients \\+ 1 vertical groups != .* 4'):
    fr.init(model.params, model.state)


def test_cifar10_setting_runs_on_mock_tfds(mock_tfds, tmp_path):
  """configs/hovefl.py:data=cifar10: split_cnn on the top/bottom halves (bottoms of 160
  features in all, as the authors' code), through the TFDS source."""
  from configs import hovefl as cfg
  from fedcomp.experiments import federated

  c = cfg.get_config('data=cifar10,horizontal=2,vertical=2,rounds=1')
  c.batch_size, c.local_epochs = 16, 1
  with mock_tfds.testing.mock_data(num_examples=48):
    setup = federated.build(c)
    assert setup.model.params['top']['dense0']['kernel'].shape == (160, 120)
    summary = federated.run(c, str(tmp_path))
  assert summary['round'] == 1 and np.isfinite(summary['eval/loss'])
