"""FedPer: personal heads stay in the client table, bases are averaged.

The round-by-round comparison with the update rule is in algorithms_test.py.
"""

import numpy as np
import optax
import pytest
from fl_testing import (
  TinyModel,
  context,
  linear_params,
  random_clients,
  round_for,
  run_rounds,
  tree_equal,
)

from fedcomp.algorithms import ALGORITHMS
from fedcomp.algorithms.fed_per import personal_mask
from fedcomp.core import AlgorithmContext, OptimizerStep
from fedcomp.errors import ConfigError
from fedcomp.utils.checkpoint import Checkpointer

SIZES = [5, 3, 6, 2]


@pytest.fixture(scope='module')
def clients():
  return random_clients(4, 6, SIZES, seed=3)


def fed_per_round(**kwargs):
  return round_for(ALGORITHMS['fed_per'](context(bias=True), personal_layers=['b']), **kwargs)


def test_heads_of_clients_outside_the_cohort_are_unchanged(clients):
  data, mask = clients
  cohort = ({k: v[[0, 2]] for k, v in data.items()}, mask[[0, 2]])
  server, table, _ = run_rounds(
    fed_per_round(), *cohort, [0, 2], rounds=2, params=linear_params(5, bias=True)
  )
  (heads,) = table['params']  # the row's local leaves: here only b
  np.testing.assert_array_equal(heads[1], 0.0)
  np.testing.assert_array_equal(heads[3], 0.0)
  assert np.abs(heads[0]).sum() > 0 and np.abs(heads[2]).sum() > 0
  assert not np.allclose(heads[0], heads[2])  # each client has its own head
  np.testing.assert_array_equal(server.params['b'], 0.0)  # heads are not averaged
  assert np.abs(server.params['w'] - 0.1).sum() > 0


def test_personal_and_global_models():
  params = {'dense0': {'kernel': np.ones((2, 2))}, 'dense1': {'kernel': np.zeros((2, 3))}}
  ctx = AlgorithmContext(
    model=TinyModel(params=params), task=None, client_optimizer=OptimizerStep(optax.sgd(0.1)),
    server_tx=optax.sgd(1.0),
  )  # fmt: skip
  alg = ALGORITHMS['fed_per'](ctx)
  server = alg.server_init(params, {})
  row = {'params': [np.full((2, 3), 7.0)]}
  personal, _ = alg.personal_model(server, row)
  np.testing.assert_array_equal(personal['dense1']['kernel'], 7.0)
  np.testing.assert_array_equal(personal['dense0']['kernel'], 1.0)
  table = {'params': [np.stack([np.full((2, 3), 1.0), np.full((2, 3), 3.0)])]}
  np.testing.assert_array_equal(alg.global_model(server, table)[0]['dense1']['kernel'], 2.0)


def test_heads_round_trip_through_a_checkpoint(clients, tmp_path):
  fr = fed_per_round()
  server, table, _ = run_rounds(
    fr, *clients, [0, 1, 2, 3], rounds=1, params=linear_params(5, bias=True)
  )
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, (server, table), {'round': 1})
  fresh = fr.init(linear_params(5, bias=True))
  restored, _ = ckpt.restore(1, fresh)
  ckpt.close()
  assert tree_equal((server, table), restored)


def test_default_head_is_the_last_layers():
  params = {f'dense{i}': {'bias': np.zeros(2), 'kernel': np.zeros((2, 2))} for i in range(11)}
  mask = personal_mask(params, None, 2)
  paths = sorted(f'dense{i}' for i in range(11) for _ in (0, 1))
  # leaves are in sorted key order: dense0, dense1, dense10, dense2, ...; the last two
  # layers in natural order are dense9 and dense10.
  assert {p for p, m in zip(paths, mask) if m} == {'dense9', 'dense10'}


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
