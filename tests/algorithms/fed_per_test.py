"""FedPer: personal heads stay in the client table, bases are averaged."""

import jax
import numpy as np
import pytest
from fl_testing import engine_for, linear_params, random_clients, run_rounds

from fedcomp.algorithms import ALGORITHMS
from fedcomp.algorithms.fed_per import personal_mask
from fedcomp.errors import ConfigError
from fedcomp.utils.checkpoint import Checkpointer

SIZES = [5, 3, 6, 2]


@pytest.fixture(scope='module')
def clients():
  return random_clients(4, 6, SIZES, seed=3)


def fed_per_engine(**kwargs):
  return engine_for(ALGORITHMS['fed_per'], personal_layers=['b'], **kwargs)


def test_heads_of_clients_outside_the_cohort_are_unchanged(clients):
  cohort = [a[[0, 2]] for a in clients]
  server, table, _ = run_rounds(fed_per_engine(), *cohort, [0, 2], rounds=2, bias=True)
  (heads,) = table  # the row is the list of personal leaves: here only b
  np.testing.assert_array_equal(heads[1], 0.0)
  np.testing.assert_array_equal(heads[3], 0.0)
  assert np.abs(heads[0]).sum() > 0 and np.abs(heads[2]).sum() > 0
  assert not np.allclose(heads[0], heads[2])  # each client has its own head
  # The server's copy of the personal layer never moves: heads are not averaged.
  np.testing.assert_array_equal(server.params['b'], 0.0)
  assert np.abs(server.params['w'] - 0.1).sum() > 0


def test_base_is_the_fed_avg_of_the_clients_bases(clients):
  """One round, one client: the new base is exactly that client's local base."""
  x, y, mask = (a[[1]] for a in clients)
  one = [1]
  per = run_rounds(fed_per_engine(), x, y, mask, one, rounds=1, bias=True)[0]
  # FedAvg on the same client from the same params trains w and b; its w must match
  # FedPer's base, since the head starts at the server's value in both.
  avg = run_rounds(engine_for(ALGORITHMS['fed_avg']), x, y, mask, one, rounds=1, bias=True)[0]
  np.testing.assert_allclose(per.params['w'], avg.params['w'], rtol=1e-6)


def test_personal_and_global_params():
  alg = ALGORITHMS['fed_per'](
    loss_fn=None, client_tx=__import__('optax').sgd(0.1), server_tx=__import__('optax').sgd(1.0)
  )
  params = {'dense0': {'kernel': np.ones((2, 2))}, 'dense1': {'kernel': np.zeros((2, 3))}}
  server = alg.server_init(params)
  row = [np.full((2, 3), 7.0)]
  np.testing.assert_array_equal(alg.personal_params(server, row)['dense1']['kernel'], 7.0)
  np.testing.assert_array_equal(alg.personal_params(server, row)['dense0']['kernel'], 1.0)
  table = [np.stack([np.full((2, 3), 1.0), np.full((2, 3), 3.0)])]
  np.testing.assert_array_equal(alg.global_params(server, table)['dense1']['kernel'], 2.0)


def test_heads_round_trip_through_a_checkpoint(clients, tmp_path):
  eng = fed_per_engine()
  server, table, _ = run_rounds(eng, *clients, [0, 1, 2, 3], rounds=1, bias=True)
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, (server, table), {'round': 1})
  fresh = eng.init(linear_params(5, bias=True))
  (server2, table2), _ = ckpt.restore(1, fresh)
  ckpt.close()
  for a, b in zip(jax.tree.leaves((server, table)), jax.tree.leaves((server2, table2))):
    np.testing.assert_array_equal(a, b)


def test_default_head_is_the_last_layers():
  params = {f'dense{i}': {'bias': np.zeros(2), 'kernel': np.zeros((2, 2))} for i in range(11)}
  mask = personal_mask(params, None, 2)
  paths = [p for p, m in zip(sorted(f'dense{i}' for i in range(11) for _ in (0, 1)), mask)]
  # leaves are in sorted key order: dense0, dense1, dense10, dense2, ...; the last two
  # layers in natural order are dense9 and dense10.
  chosen = {p for p, m in zip(paths, mask) if m}
  assert chosen == {'dense9', 'dense10'}


@pytest.mark.parametrize(
  'kwargs,match',
  [
    ({'personal_layers': ['head/.*']}, r"config.algorithm.personal_layers: 'head/\.\*' matches no"),
    ({'personal_layers': ['.*']}, 'every parameter is personal'),
    ({'num_personal_layers': 3}, '3 last layers asked for; the model has 2'),
  ],
)
def test_bad_personal_layers(kwargs, match):
  params = {'dense0': {'kernel': np.ones((2, 2))}, 'dense1': {'kernel': np.zeros((2, 3))}}
  with pytest.raises(ConfigError, match=match):
    personal_mask(params, kwargs.get('personal_layers'), kwargs.get('num_personal_layers', 1))
