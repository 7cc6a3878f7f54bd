"""Optimizers by name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedcomp.optim import OPTIMIZERS, make_tx
from fedcomp.registry import ConfigError


@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
def test_every_optimizer_builds_and_steps(name):
  tx = make_tx(name, {'learning_rate': 0.1, 'b1': None}, 'client_tx')
  params = {'w': jnp.ones(3)}
  extra = {}
  if name == 'fishleg':  # curvature from the NLL of model-sampled targets
    extra = {'nll_fn': lambda p, k: 0.5 * jnp.sum(p['w'] ** 2), 'key': jax.random.key(0)}
  updates, _ = tx.update({'w': jnp.ones(3)}, tx.init(params), params, **extra)
  assert np.all(np.asarray(updates['w']) < 0)  # a descent direction for a positive gradient


def test_momentum_is_sgd_with_momentum():
  tx = make_tx('momentum', {'learning_rate': 1.0, 'momentum': 0.5}, 'server_tx')
  params = {'w': jnp.zeros(1)}
  state = tx.init(params)
  u1, state = tx.update({'w': jnp.ones(1)}, state, params)
  u2, state = tx.update({'w': jnp.ones(1)}, state, params)
  np.testing.assert_allclose([u1['w'][0], u2['w'][0]], [-1.0, -1.5])


def test_errors_name_the_key():
  with pytest.raises(ConfigError, match=r"config.server_tx_name='adamm' is unknown; known: .*adam"):
    make_tx('adamm', {'learning_rate': 1.0}, 'server_tx')
  with pytest.raises(ConfigError, match=r'config.client_tx.learning_rate=-0.1 must be a finite'):
    make_tx('sgd', {'learning_rate': -0.1}, 'client_tx')
  with pytest.raises(ConfigError, match=r'config.client_tx.b1 is set but optimizer .sgd.'):
    make_tx('sgd', {'learning_rate': 0.1, 'b1': 0.9}, 'client_tx')


@pytest.mark.parametrize(
  'name,kwargs,match',
  [
    ('sgd', {'learning_rate': float('nan')}, r'learning_rate=nan must be a finite number'),
    ('sgd', {'learning_rate': float('inf')}, r'learning_rate=inf must be a finite number'),
    ('momentum', {'learning_rate': 0.1, 'momentum': 1.0}, r'momentum=1.0 must be .* \[0, 1\)'),
    ('adam', {'learning_rate': 0.1, 'b2': 1.0}, r'b2=1.0 must be .* \[0, 1\)'),
    ('adam', {'learning_rate': 0.1, 'b1': -0.1}, r'b1=-0.1 must be'),
    ('adam', {'learning_rate': 0.1, 'eps': 0.0}, r'eps=0.0 must be .* \(0, inf\)'),
    ('fishleg', {'learning_rate': 0.1, 'damping': -1.0}, r'damping=-1.0 must be'),
    ('fishleg', {'learning_rate': 0.1, 'aux_every': 0}, r'aux_every=0 must be an integer >= 1'),
    ('fishleg', {'learning_rate': 0.1, 'initial_scale': 0.0}, r'initial_scale=0.0 must be'),
  ],
)
def test_hyperparameters_out_of_range_are_one_line_errors(name, kwargs, match):
  with pytest.raises(ConfigError, match=rf'^config\.client_tx\.{match}') as e:
    make_tx(name, kwargs, 'client_tx')
  assert '\n' not in str(e.value)
