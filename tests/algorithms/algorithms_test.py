"""The battery every registered algorithm passes, and checks against independent references.

The references are written here in float64 numpy from the papers' update rules, for a
linear softmax classifier trained with full-batch local steps (so the minibatch order does
not matter), and compared round by round with the engine.
"""

import jax
import numpy as np
import optax
import pytest
from fl_testing import (
  context,
  linear_params,
  mesh,
  random_clients,
  round_for,
  run_rounds,
  tree_equal,
)

from fedcomp import models, tasks
from fedcomp.algorithms import ALGORITHMS
from fedcomp.core import AlgorithmContext, ClientMap, FederatedRound, OptimizerStep
from fedcomp.core.reducers import AGGREGATORS, weighted_mean

SIZES = [5, 3, 6, 2]
IDS = np.array([0, 1, 2, 3])


@pytest.fixture(scope='module')
def clients():
  return random_clients(4, 6, SIZES, seed=3)


def make(name, devices=1, **kw):
  ctx_kw = {k: kw.pop(k) for k in ('client_lr', 'server_lr', 'cohort_fraction') if k in kw}
  return round_for(ALGORITHMS[name](context(bias=True, **ctx_kw), **kw), devices)


@pytest.mark.parametrize('name', sorted(ALGORITHMS))
class TestBattery:
  def test_trains_and_is_deterministic(self, name, clients):
    params = linear_params(5, bias=True)
    a, ta, ma = run_rounds(make(name), *clients, IDS, rounds=3, params=params)
    b, tb, mb = run_rounds(make(name), *clients, IDS, rounds=3, params=params)
    assert all(np.isfinite(p).all() for p in jax.tree.leaves(a.params))
    assert tree_equal((a, ta, ma), (b, tb, mb))
    first = run_rounds(make(name), *clients, IDS, rounds=1, params=params)[2]
    assert float(ma['train/loss']) < float(first['train/loss'])

  def test_no_recompilation(self, name, clients):
    fr = make(name, 2)
    run_rounds(fr, *clients, IDS, rounds=3, params=linear_params(5, bias=True))
    assert fr.round._cache_size() == 1

  def test_eight_devices_bit_identical_to_one(self, name, clients):
    params = linear_params(5, bias=True)
    one = run_rounds(make(name, 1), *clients, IDS, rounds=2, params=params)
    eight = run_rounds(make(name, 8), *clients, IDS, rounds=2, params=params)
    assert tree_equal(one, eight)

  @pytest.mark.parametrize('strategy', ['vmap', 'map', 'loop'])
  def test_thirteen_clients_every_strategy_and_device_count(self, name, strategy):
    """13 clients: 2 slots per leaf, so leaves are vmapped (width 2) and hold spare slots."""
    data, mask = random_clients(13, 6, [6, 5, 4, 3, 2, 1, 6, 5, 4, 3, 2, 1, 6], seed=4)
    ids = np.arange(13)
    params = linear_params(5, bias=True)

    def run(devices, strategy, chunk=None):
      alg = ALGORITHMS[name](context(bias=True, cohort_fraction=1.0))
      fr = round_for(alg, devices, num_clients=13, strategy=strategy, chunk_size=chunk)
      return run_rounds(fr, data, mask, ids, rounds=2, params=params)

    one = run(1, strategy, 2)
    assert tree_equal(one, run(8, strategy, 2))
    reference = run(1, 'vmap')
    for a, b in zip(jax.tree.leaves(one[0].params), jax.tree.leaves(reference[0].params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ float64 references
def softmax_grads(w, b, x, y):
  """Gradients of the mean softmax cross-entropy of x @ w + b (float64)."""
  z = x @ w + b
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(len(y)), y] -= 1
  return x.T @ p / len(y), p.mean(0)


def client_arrays(clients, i):
  data, mask = clients
  n = int(mask[i].sum())
  return data['x'][i, :n].astype(np.float64), data['y'][i, :n], n


ROUNDS = [[0, 1], [2, 3], [0, 2], [1, 3], [0, 3]]  # partial participation: stale variates


def run_engine(fr, clients, rounds=ROUNDS, bias=True):
  data, mask = clients
  server, table = fr.init(linear_params(5, bias=bias))
  out = []
  for r, ids in enumerate(rounds):
    cohort = fr.put_cohort(np.array(ids), {k: v[ids] for k, v in data.items()}, mask[ids])
    server, table, _ = fr.round(server, table, *cohort, jax.random.key(r))
    out.append(jax.tree.map(np.asarray, (server, table)))
  return out


def full_batch(name, devices=1, epochs=3, **kw):
  """A round whose local steps are full-batch GD (batch 6 >= every client)."""
  ctx_kw = {k: kw.pop(k) for k in ('client_lr', 'cohort_fraction') if k in kw}
  alg = ALGORITHMS[name](context(bias=True, **ctx_kw), **kw)
  return round_for(alg, devices, batch_size=6, epochs=epochs)


def test_fed_prox_matches_its_update_rule(clients):
  """Li et al. 2020: each local step descends f_i(w) + μ/2‖w − w_server‖²."""
  lr, mu, epochs = 0.5, 2.0, 3
  got = run_engine(full_batch('fed_prox', client_lr=lr, mu=mu, epochs=epochs), clients)
  w, b = np.full((5, 3), 0.1), np.zeros(3)
  for r, ids in enumerate(ROUNDS):
    deltas, weights = [], []
    for i in ids:
      x, y, n = client_arrays(clients, i)
      wi, bi = w.copy(), b.copy()
      for _ in range(epochs):
        gw, gb = softmax_grads(wi, bi, x, y)
        wi, bi = wi - lr * (gw + mu * (wi - w)), bi - lr * (gb + mu * (bi - b))
      deltas.append((w - wi, b - bi))
      weights.append(n)
    weights = np.array(weights, float) / sum(weights)
    w = w - sum(a * d[0] for a, d in zip(weights, deltas))
    b = b - sum(a * d[1] for a, d in zip(weights, deltas))
    np.testing.assert_allclose(got[r][0].params['w'], w, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(got[r][0].params['b'], b, rtol=2e-5, atol=1e-6)
  # μ matters: the same rounds without the proximal term end elsewhere.
  plain = run_engine(full_batch('fed_prox', client_lr=lr, mu=0.0, epochs=epochs), clients)
  assert np.abs(plain[-1][0].params['w'] - got[-1][0].params['w']).max() > 1e-3


def test_scaffold_matches_algorithm_1_option_2(clients):
  """Karimireddy et al. 2020, Algorithm 1 with option II, partial participation (|S|/N = 1/2),
  uniform averaging, server rate 1, in float64, round by round."""
  lr, epochs = 0.3, 4
  got = run_engine(
    full_batch('scaffold', client_lr=lr, cohort_fraction=0.5, epochs=epochs), clients
  )
  x = (np.full((5, 3), 0.1), np.zeros(3))
  c = (np.zeros((5, 3)), np.zeros(3))
  ci = {i: (np.zeros((5, 3)), np.zeros(3)) for i in range(4)}
  for r, ids in enumerate(ROUNDS):
    dys, dcs = [], []
    for i in ids:
      xs, ys, _ = client_arrays(clients, i)
      y = (x[0].copy(), x[1].copy())
      for _ in range(epochs):
        g = softmax_grads(*y, xs, ys)
        y = tuple(yk - lr * (gk - cik + ck) for yk, gk, cik, ck in zip(y, g, ci[i], c))
      new_ci = tuple(
        cik - ck + (xk - yk) / (epochs * lr) for cik, ck, xk, yk in zip(ci[i], c, x, y)
      )
      dys.append(tuple(yk - xk for yk, xk in zip(y, x)))
      dcs.append(tuple(a - b for a, b in zip(new_ci, ci[i])))
      ci[i] = new_ci
    x = tuple(xk + np.mean([d[k] for d in dys], 0) for k, xk in enumerate(x))
    c = tuple(ck + 0.5 * np.mean([d[k] for d in dcs], 0) for k, ck in enumerate(c))
    server, table = got[r]
    np.testing.assert_allclose(server.params['w'], x[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(server.control['w'], c[0], rtol=1e-4, atol=1e-6)
    for i in range(4):
      np.testing.assert_allclose(table['w'][i], ci[i][0], rtol=1e-4, atol=1e-6)


def test_fed_per_matches_its_update_rule(clients):
  """Arivazhagan et al. 2019: bases averaged, heads (here b) kept by each client."""
  lr, epochs = 0.5, 2
  got = run_engine(
    full_batch('fed_per', client_lr=lr, epochs=epochs, personal_layers=['b']), clients
  )
  w = np.full((5, 3), 0.1)
  heads = {i: np.zeros(3) for i in range(4)}
  for r, ids in enumerate(ROUNDS):
    bases, weights = [], []
    for i in ids:
      x, y, n = client_arrays(clients, i)
      wi, bi = w.copy(), heads[i].copy()
      for _ in range(epochs):
        gw, gb = softmax_grads(wi, bi, x, y)
        wi, bi = wi - lr * gw, bi - lr * gb
      bases.append(wi)
      weights.append(n)
      heads[i] = bi
    w = sum(n * wi for n, wi in zip(weights, bases)) / sum(weights)
    server, table = got[r]
    np.testing.assert_allclose(server.params['w'], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(server.params['b'], 0.0)  # the server's head never moves
    for i in range(4):
      np.testing.assert_allclose(table['params'][0][i], heads[i], rtol=1e-5, atol=1e-6)


def test_uniform_weighting_averages_clients_equally(clients):
  a = run_engine(full_batch('fed_avg', weighting='uniform', epochs=1), clients, ROUNDS[:1])
  w = np.full((5, 3), 0.1)
  finals = []
  for i in ROUNDS[0]:
    x, y, _ = client_arrays(clients, i)
    finals.append(w - 0.5 * softmax_grads(w, np.zeros(3), x, y)[0])
  np.testing.assert_allclose(a[0][0].params['w'], np.mean(finals, 0), rtol=1e-5)


def test_median_aggregator_ignores_a_client_that_sends_garbage(clients):
  """FedAvg with the coordinate-wise median: one client with huge data moves the mean far,
  the median little."""
  data, mask = clients
  poisoned = {**data, 'x': data['x'].copy()}
  poisoned['x'][3] *= 1e4
  results = {}
  for name in ('mean', 'median'):
    alg = ALGORITHMS['fed_avg'](context(bias=True, aggregator=AGGREGATORS[name]()))
    server = run_rounds(
      round_for(alg), poisoned, mask, IDS, rounds=1, params=linear_params(5, bias=True)
    )[0]
    clean = run_rounds(
      round_for(alg), data, mask, IDS, rounds=1, params=linear_params(5, bias=True)
    )[0]
    results[name] = np.abs(server.params['w'] - clean.params['w']).max()
  assert results['mean'] > 100 * results['median']


def test_fishleg_clients_vmapped_sharded_and_stateful(clients):
  """FishLeg as the client optimizer: each client its own λ, kept in the table."""
  from fedcomp.optim import fishleg

  def run(devices):
    ctx = context(client_tx=fishleg(0.1, momentum=0.0, damping=0.5, aux_every=1))
    alg = ALGORITHMS['fed_avg'](ctx, keep_client_opt_state=True)
    data, mask = clients
    return run_rounds(
      round_for(alg, devices), {k: v[[0, 2]] for k, v in data.items()}, mask[[0, 2]], [0, 2]
    )

  server, table, metrics = run(1)
  assert np.isfinite(float(metrics['train/loss']))
  counts = np.asarray(table['opt_state'][0].count)  # scale_by_fishleg's step counter
  assert counts[1] == counts[3] == 0 and counts[0] == 2 * 3 and counts[2] == 2 * 3
  lam = jax.tree.leaves(table['opt_state'][0].lam)
  assert not np.allclose(lam[0][0], lam[0][2])  # clients learn their own Q
  assert tree_equal(server, run(8)[0])


# ------------------------------------------------------------------ BatchNorm state
def bn_round(devices=1, num_clients=4, **kw):
  model = models.build_model('mlp', {'hidden': (8,), 'batch_norm': True}, (5,), 3, seed=0)
  ctx = AlgorithmContext(
    model=model,
    task=tasks.make_task('classification'),
    client_optimizer=OptimizerStep(optax.sgd(0.1)),
    server_tx=optax.sgd(1.0),
    aggregator=weighted_mean(),
  )
  alg = ALGORITHMS['fed_avg'](ctx, **kw)
  return model, FederatedRound(
    alg,
    ClientMap(mesh(devices), 'vmap'),
    num_clients=num_clients,
    local_epochs=1,
    batch_size=2,
    pad_to=6,
  )


def test_batch_norm_statistics_are_averaged_with_the_parameters(clients):
  data, mask = clients
  model, fr = bn_round()
  server = run_rounds(fr, data, mask, IDS, rounds=1, params=model.params, model_state=model.state)[
    0
  ]
  # Each client alone: its final statistics.
  alone = []
  for i in range(4):
    s = run_rounds(
      fr,
      {k: v[[i]] for k, v in data.items()},
      mask[[i]],
      [i],
      rounds=1,
      params=model.params,
      model_state=model.state,
    )[0]
    alone.append(jax.tree.map(np.asarray, s.model_state))
  n = np.asarray(SIZES, float)
  want = jax.tree.map(lambda *s: sum(w * x for w, x in zip(n / n.sum(), s)), *alone)
  for a, b in zip(jax.tree.leaves(server.model_state), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert not tree_equal(server.model_state, model.state)
  # Evaluation uses the running statistics: train=False does not change them.
  x = np.asarray(data['x'][0])
  _, after = model.apply(server.params, server.model_state, x)
  assert tree_equal(after, server.model_state)


def test_fed_bn_keeps_normalisation_layers_on_the_clients(clients):
  data, mask = clients
  model, fr = bn_round(local_batch_norm=True)
  server, table, _ = run_rounds(
    fr, data, mask, IDS, rounds=2, params=model.params, model_state=model.state
  )
  assert tree_equal(server.model_state, model.state)  # the server's statistics never move
  np.testing.assert_array_equal(server.params['norm0']['scale'], model.params['norm0']['scale'])
  means = np.asarray(table['model_state']['norm0']['mean'])
  assert not np.allclose(means[0], means[1])  # every client its own statistics
  assert fr.algorithm.personal_model is not None
  # Sharded: the same.
  _, fr8 = bn_round(8, local_batch_norm=True)
  assert tree_equal(
    server,
    run_rounds(fr8, data, mask, IDS, rounds=2, params=model.params, model_state=model.state)[0],
  )


@pytest.mark.parametrize('name', sorted(AGGREGATORS))
def test_every_aggregator_trains_and_is_bit_identical_on_8_devices(name, clients):
  def run(devices):
    alg = ALGORITHMS['fed_avg'](context(bias=True, aggregator=AGGREGATORS[name]()))
    fr = round_for(alg, devices)
    out = run_rounds(fr, *clients, IDS, rounds=3, params=linear_params(5, bias=True))
    assert fr.round._cache_size() == 1  # no recompilation after the first round
    return out

  one = run(1)
  alg = ALGORITHMS['fed_avg'](context(bias=True, aggregator=AGGREGATORS[name]()))
  first = run_rounds(round_for(alg), *clients, IDS, rounds=1, params=linear_params(5, bias=True))
  assert float(one[2]['train/loss']) < float(first[2]['train/loss'])
  assert tree_equal(one, run(8))


# 'loop' unrolls every client at trace time: two minutes of compiling on 2 cores (-m slow);
# the battery above runs every algorithm under 'loop'.
@pytest.mark.parametrize('strategy', ['vmap', 'map', pytest.param('loop', marks=pytest.mark.slow)])
def test_batch_norm_models_under_every_strategy(strategy):
  """Averaged and FedBN-local statistics, 11 clients (vmapped leaves of 2): every strategy
  gives the vmap result (to float tolerance) and is bit-identical on 8 devices."""
  data, mask = random_clients(11, 6, [6, 3, 5, 2, 4, 6, 1, 3, 5, 2, 6], seed=5)
  ids = np.arange(11)
  for kw in ({}, {'local_batch_norm': True}):
    model, ref = bn_round(num_clients=11, **kw)
    want = run_rounds(ref, data, mask, ids, rounds=2, params=model.params, model_state=model.state)
    results = []
    for devices in (1, 8):
      _, fr = bn_round(devices, num_clients=11, **kw)
      fr = FederatedRound(
        fr.algorithm,
        ClientMap(mesh(devices), strategy),
        num_clients=11,
        local_epochs=1,
        batch_size=2,
        pad_to=6,
      )
      results.append(
        run_rounds(fr, data, mask, ids, rounds=2, params=model.params, model_state=model.state)
      )
    assert tree_equal(results[0], results[1])
    for a, b in zip(jax.tree.leaves(results[0][:2]), jax.tree.leaves(want[:2])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
