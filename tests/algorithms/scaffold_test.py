"""SCAFFOLD: control variates against hand-derived references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fl_testing import engine_for, linear_apply, linear_params, random_clients, run_rounds

from fedcomp.algorithms import ALGORITHMS
from fedcomp.core.losses import classification_loss

SIZES = [5, 3, 6, 2]


@pytest.fixture(scope='module')
def clients():
  return random_clients(4, 6, SIZES, seed=3)


def test_first_round_equals_fed_avg(clients):
  """With c = c_i = 0 the corrected gradient is the plain gradient."""
  ids = [0, 1, 2, 3]
  kw = dict(epochs=2, weighting='uniform')
  avg = run_rounds(engine_for(ALGORITHMS['fed_avg'], **kw), *clients, ids, rounds=1)[0]
  sca = run_rounds(engine_for(ALGORITHMS['scaffold'], **kw), *clients, ids, rounds=1)[0]
  np.testing.assert_array_equal(avg.params['w'], sca.params['w'])


def test_control_variates_are_the_clients_full_batch_gradients(clients):
  """One full-batch step per client: c_i = ∇f_i(x), and c = |S|/N · mean_i c_i."""
  x, y, mask = clients
  ids = [0, 2]
  eng = engine_for(ALGORITHMS['scaffold'], batch_size=6, cohort_fraction=0.5)
  server, table, _ = run_rounds(eng, x[ids], y[ids], mask[ids], ids, rounds=1)
  loss = classification_loss(linear_apply)
  init = linear_params(5)
  want = []
  for i in ids:
    batch = {'x': jnp.asarray(x[i]), 'y': jnp.asarray(y[i]), 'mask': jnp.asarray(mask[i])}
    want.append(jax.grad(lambda p, b=batch: loss(p, b, None)[0])(init)['w'])
  np.testing.assert_allclose(table['w'][0], want[0], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(table['w'][2], want[1], rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(table['w'][1], 0.0)  # not in the cohort
  np.testing.assert_allclose(server.control['w'], 0.5 * (want[0] + want[1]) / 2, rtol=1e-5)


def test_new_control_variate_is_option_two_for_sgd(clients):
  """c_i⁺ = c_i − c + (x − y)/(K·η) for K SGD steps with arbitrary c and c_i."""
  x, y, mask = clients
  lr = 0.3
  alg = ALGORITHMS['scaffold'](
    loss_fn=classification_loss(linear_apply), client_tx=optax.sgd(lr), server_tx=optax.sgd(1.0)
  )
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
  server = alg.server_init(params)._replace(
    control={'w': jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
  )
  row = {'w': jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
  local = alg.client_init(server, row, None)
  steps = 3
  for k in range(steps):
    rows = slice(2 * k, 2 * k + 2)
    batch = {'x': x[2][rows], 'y': y[2][rows], 'mask': mask[2][rows]}
    local, _ = alg.client_step(local, batch, None)
  out = alg.client_final(server, local, row, jnp.asarray(6))
  x_minus_y = out.update.delta['w']
  want = row['w'] - server.control['w'] + x_minus_y / (steps * lr)
  np.testing.assert_allclose(out.state['w'], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out.update.control_delta['w'], want - row['w'], rtol=1e-4, atol=1e-5)
