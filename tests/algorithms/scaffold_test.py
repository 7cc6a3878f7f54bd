"""SCAFFOLD: control variates against hand-derived references.

The round-by-round comparison with Algorithm 1 (option II) is in algorithms_test.py; the
divergence of SCAFFOLD where FedAvg trains is examined in divergence_test below.
"""

import jax
import jax.numpy as jnp
import numpy as np
from fl_testing import (
  context,
  linear_apply,
  linear_params,
  random_clients,
  round_for,
  run_rounds,
  tree_equal,
)

from fedcomp.algorithms import ALGORITHMS

SIZES = [5, 3, 6, 2]


def clients():
  return random_clients(4, 6, SIZES, seed=3)


def test_first_round_equals_fed_avg():
  """With c = c_i = 0 the corrected gradient is the plain gradient."""
  ids = [0, 1, 2, 3]
  avg = run_rounds(
    round_for(ALGORITHMS['fed_avg'](context(), weighting='uniform'), epochs=2),
    *clients(),
    ids,
    rounds=1,
  )
  sca = run_rounds(
    round_for(ALGORITHMS['scaffold'](context()), epochs=2), *clients(), ids, rounds=1
  )
  assert tree_equal(avg[0].params, sca[0].params)
  # ... and the second round differs: the control variates now correct the steps.
  avg2 = run_rounds(
    round_for(ALGORITHMS['fed_avg'](context(), weighting='uniform'), epochs=2),
    *clients(),
    ids,
    rounds=2,
  )
  sca2 = run_rounds(
    round_for(ALGORITHMS['scaffold'](context()), epochs=2), *clients(), ids, rounds=2
  )
  assert not np.allclose(avg2[0].params['w'], sca2[0].params['w'])


def test_control_variates_are_the_clients_full_batch_gradients():
  """One full-batch step per client: c_i = ∇f_i(x), and c = |S|/N · mean_i c_i."""
  data, mask = clients()
  ids = [0, 2]
  fr = round_for(ALGORITHMS['scaffold'](context(cohort_fraction=0.5)), batch_size=6)
  server, table, _ = run_rounds(fr, {k: v[ids] for k, v in data.items()}, mask[ids], ids, rounds=1)
  ctx = context()
  init = linear_params(5)
  want = []
  for i in ids:
    batch = {
      'x': jnp.asarray(data['x'][i]),
      'y': jnp.asarray(data['y'][i]),
      'mask': jnp.asarray(mask[i]),
    }
    want.append(
      jax.grad(lambda p, b=batch: ctx.task.loss(linear_apply, p, {}, b, None)[0])(init)['w']
    )
  np.testing.assert_allclose(table['w'][0], want[0], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(table['w'][2], want[1], rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(table['w'][1], 0.0)  # not in the cohort
  np.testing.assert_allclose(server.control['w'], 0.5 * (want[0] + want[1]) / 2, rtol=1e-5)


def test_new_control_variate_is_option_two_for_sgd():
  """c_i⁺ = c_i − c + (x − y)/(K·η) for K SGD steps with arbitrary c and c_i."""
  data, mask = clients()
  lr = 0.3
  alg = ALGORITHMS['scaffold'](context(client_lr=lr))
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
  server = alg.server_init(params, {})._replace(
    control={'w': jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
  )
  row = {'w': jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
  local = alg.client_init(server, row, None)
  steps = 3
  for k in range(steps):
    rows = slice(2 * k, 2 * k + 2)
    batch = {'x': data['x'][2][rows], 'y': data['y'][2][rows], 'mask': mask[2][rows]}
    local, _ = alg.client_step(local, batch, jax.random.key(k))
  out = alg.client_final(server, local, row, jnp.asarray(6))
  x_minus_y = out.update.delta['w']
  want = row['w'] - server.control['w'] + x_minus_y / (steps * lr)
  np.testing.assert_allclose(out.state['w'], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out.update.control_delta['w'], want - row['w'], rtol=1e-4, atol=1e-5)
