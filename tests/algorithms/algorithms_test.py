"""The battery every registered algorithm passes, and per-algorithm checks."""

import jax
import numpy as np
import pytest
from fl_testing import engine_for, random_clients, run_rounds

from fedcomp.algorithms import ALGORITHMS

SIZES = [5, 3, 6, 2]
IDS = np.array([0, 1, 2, 3])


@pytest.fixture(scope='module')
def clients():
  return random_clients(4, 6, SIZES, seed=3)


@pytest.mark.parametrize('name', sorted(ALGORITHMS))
class TestBattery:
  def test_trains_and_is_deterministic(self, name, clients):
    a, _, ma = run_rounds(engine_for(ALGORITHMS[name]), *clients, IDS, rounds=3, bias=True)
    b, _, mb = run_rounds(engine_for(ALGORITHMS[name]), *clients, IDS, rounds=3, bias=True)
    params = jax.tree.leaves(a.params)
    assert all(np.isfinite(p).all() for p in params)
    for p, q in zip(params, jax.tree.leaves(b.params)):
      np.testing.assert_array_equal(p, q)
    assert float(ma['train/loss']) == float(mb['train/loss'])
    # Training moved the model and lowered the loss from its starting value.
    first = run_rounds(engine_for(ALGORITHMS[name]), *clients, IDS, rounds=1, bias=True)[2]
    assert float(ma['train/loss']) < float(first['train/loss'])

  def test_no_recompilation(self, name, clients):
    eng = engine_for(ALGORITHMS[name], 2)
    run_rounds(eng, *clients, IDS, rounds=3, bias=True)
    assert eng.round._cache_size() == 1

  def test_sharded_equals_unsharded(self, name, clients):
    one = run_rounds(engine_for(ALGORITHMS[name], 1), *clients, IDS, rounds=2, bias=True)[0]
    eight = run_rounds(engine_for(ALGORITHMS[name], 8), *clients, IDS, rounds=2, bias=True)[0]
    for p, q in zip(jax.tree.leaves(one.params), jax.tree.leaves(eight.params)):
      np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)


def test_fed_prox_with_zero_mu_is_fed_avg(clients):
  avg = run_rounds(engine_for(ALGORITHMS['fed_avg'], epochs=3), *clients, IDS)[0]
  prox = run_rounds(engine_for(ALGORITHMS['fed_prox'], epochs=3, mu=0.0), *clients, IDS)[0]
  np.testing.assert_array_equal(avg.params['w'], prox.params['w'])


def test_fed_prox_pulls_clients_to_the_server_model(clients):
  """With a strong proximal term the round moves the model less."""
  start = 0.1
  moved = {}
  for mu in (0.0, 10.0):
    server = run_rounds(
      engine_for(ALGORITHMS['fed_prox'], epochs=5, client_lr=0.05, mu=mu),
      *clients,
      IDS,
      rounds=1,
      init_scale=start,
    )[0]
    moved[mu] = float(np.linalg.norm(server.params['w'] - start))
  assert moved[10.0] < 0.5 * moved[0.0]


def test_uniform_weighting_averages_clients_equally():
  # Two clients, one full-batch SGD step each with lr 1 from w = 0, 3 classes:
  # softmax = 1/3 everywhere, so w0 = [[2/3, -1/3, -1/3], [0, 0, 0]] and
  # w1 = [[1/3, -1/6, -1/6], [1/6, 1/6, -1/3]]; their unweighted mean follows.
  x = np.array([[[1, 0], [0, 0]], [[0, 1], [1, 1]]], np.float32)
  y = np.array([[0, 0], [1, 0]], np.int32)
  mask = np.array([[True, False], [True, True]])
  eng = engine_for(ALGORITHMS['fed_avg'], pad_to=2, client_lr=1.0, weighting='uniform')
  server = run_rounds(eng, x, y, mask, [0, 1], rounds=1, init_scale=0.0)[0]
  want = [[1 / 2, -1 / 4, -1 / 4], [1 / 12, 1 / 12, -1 / 6]]
  np.testing.assert_allclose(server.params['w'], want, atol=1e-6)


def _fishleg_engine(num_devices=1, **kw):
  from fl_testing import linear_apply

  from fedcomp.core.losses import classification_sampled_nll
  from fedcomp.optim import fishleg

  def make(**alg_kwargs):
    alg_kwargs['client_tx'] = fishleg(0.1, momentum=0.0, damping=0.5, aux_every=1)
    return ALGORITHMS['fed_avg'](sampled_nll=classification_sampled_nll(linear_apply), **alg_kwargs)

  return engine_for(make, num_devices, **kw)


def test_fishleg_clients_vmapped_sharded_and_stateful(clients):
  """FishLeg as the client optimizer: each client its own λ, kept in the table."""
  eng = _fishleg_engine(keep_client_opt_state=True)
  cohort = [a[[0, 2]] for a in clients]
  server, table, metrics = run_rounds(eng, *cohort, [0, 2], rounds=2)
  assert np.isfinite(float(metrics['train/loss']))
  counts = np.asarray(table[0].count)  # scale_by_fishleg's step counter, per client
  assert counts[1] == counts[3] == 0 and counts[0] == 2 * 3 and counts[2] == 2 * 3
  lam = jax.tree.leaves(table[0].lam)
  assert not np.allclose(lam[0][0], lam[0][2])  # clients learn their own Q
  eight = run_rounds(_fishleg_engine(8, keep_client_opt_state=True), *cohort, [0, 2], rounds=2)
  np.testing.assert_allclose(server.params['w'], eight[0].params['w'], rtol=1e-5, atol=1e-6)
