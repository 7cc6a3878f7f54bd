"""Pruning inside federated training: server-side schedules, masks on the clients, and
curvature-aware FLS aggregation and compensation against hand computations."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from fedcomp.core import trainer
from fedcomp.errors import ConfigError
from fedcomp.experiments import federated
from fedcomp.optim import fishleg_transform


def small_config(scorer, schedule='one_shot', schedule_kwargs=None, lr=0.1):
  c = common.federated_config()
  c.partition.num_clients = 4
  c.cohort_size = 4
  c.batch_size = 32
  c.total_rounds = 3
  c.model.hidden = (16,)
  c.client_tx_name = 'fishleg'
  c.client_tx = ml_collections.ConfigDict(
    {'learning_rate': lr, 'momentum': 0.0, 'damping': 0.5, 'aux_every': 2,
     'u_sampling': 'gaussian', 'aux_learning_rate': 1e-2}
  )  # fmt: skip
  c.algorithm.keep_client_opt_state = True
  c.pruning = ml_collections.ConfigDict(
    {'scorer': scorer, 'sparsity': 0.75, 'schedule': schedule,
     'schedule_kwargs': schedule_kwargs or {'step': 0}, 'distribution': 'global', 'policy': ()}
  )  # fmt: skip
  return c


def rounds(config, n):
  setup = federated.build(config)
  state = trainer.initial_state(setup)
  out = [(0, state)]
  for r, state, _ in trainer.train_rounds(setup, state, 1, n):  # noqa: B020
    out.append((r, jax.device_get(state)))
  return setup, out


def kernels(params):
  return [params['dense0']['kernel'], params['dense1']['kernel']]


def test_server_magnitude_pruning_follows_the_schedule_and_clients_respect_the_masks():
  config = small_config('magnitude', 'cubic', {'start': 0, 'end': 2, 'every': 1})
  setup, states = rounds(config, 3)
  sizes = [k.size for k in kernels(setup.initial_params)]
  previous = None
  for r, state in states[1:]:
    params, _ = setup.algorithm.server_model(state.server)
    zeros = sum(int((np.asarray(k) == 0).sum()) for k in kernels(params))
    want = 0.75 * (1 - (1 - min(r - 1, 2) / 2) ** 3)  # cubic over server updates 0, 1, 2
    assert zeros == sum(round(want * n) for n in sizes) or abs(zeros / sum(sizes) - want) < 0.01
    masks = [np.asarray(m) for m in kernels(state.server.masks)]
    for k, m in zip(kernels(params), masks):
      assert np.all(np.asarray(k)[~m] == 0)
    if previous is not None:  # pruned weights never come back
      assert all(np.all(p | ~m) for p, m in zip(previous, masks))
    previous = masks
  # A client starting from the pruned server model keeps its masked weights at exactly 0.
  alg, server = setup.algorithm, jax.device_put(states[-1][1].server)
  row = jax.tree.map(lambda t: t[0], jax.device_put(states[-1][1].table))
  local = alg.client_init(server, row, jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {
    'x': jnp.asarray(rng.random((32, *setup.data.feature_shape)), jnp.float32),
    'y': jnp.asarray(rng.integers(0, 10, 32)),
    'mask': jnp.ones(32, bool),
  }
  for i in range(5):
    local, _ = alg.client_step(local, batch, jax.random.key(i))
  for k, m in zip(kernels(local.params), kernels(server.masks)):
    assert np.all(np.asarray(k)[~np.asarray(m)] == 0)
    assert np.any(np.asarray(k)[np.asarray(m)] != 0)


def test_curvature_aware_pruning_averages_client_diag_q_and_compensates_with_their_q():
  # Learning rate 0: local steps only fit Q, so every change of θ is the pruning's.
  config = small_config('fishleg', lr=0.0)
  setup, states = rounds(config, 2)
  q = fishleg_transform.inverse_fisher(setup.initial_params)
  weights = np.asarray(setup.data.client_sizes, np.float64)

  def client_lams(table):
    opt = table['opt_state']
    found = [
      s
      for s in jax.tree.leaves(
        opt, is_leaf=lambda x: isinstance(x, fishleg_transform.ScaleByFishLegState)
      )
      if isinstance(s, fishleg_transform.ScaleByFishLegState)
    ]
    return [jax.tree.map(lambda t, i=i: t[i], found[0].lam) for i in range(len(weights))]

  # Round 1: the server scores θ₀ with d̄, the weighted mean of the clients' diag(Q_k)
  # (read off the dense matrices Q_k here).
  theta0 = setup.initial_params
  lams1 = client_lams(states[1][1].table)
  _, unravel = jax.flatten_util.ravel_pytree(theta0)
  diags = [np.diag(np.asarray(q.dense(lam), np.float64)) for lam in lams1]
  dbar = unravel(jnp.asarray(sum(w * d for w, d in zip(weights, diags)) / weights.sum()))
  server1 = states[1][1].server
  removed = jax.tree.map(lambda m: ~np.asarray(m), server1.masks)
  pending = jax.tree.map(
    lambda t, d, r: np.where(r, np.asarray(t) / np.asarray(d), 0.0), theta0, dbar, removed
  )
  for got, want in zip(jax.tree.leaves(server1.pending), jax.tree.leaves(pending)):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-7)
  scores = [np.asarray(t) ** 2 / np.asarray(d) for t, d in zip(kernels(theta0), kernels(dbar))]
  flat = np.concatenate([s.ravel() for s in scores])
  kept = np.concatenate([np.asarray(m).ravel() for m in kernels(server1.masks)])
  assert kept.sum() == round(0.25 * flat.size)
  assert flat[kept].min() >= flat[~kept].max()  # the lowest scores were pruned

  # Round 2: clients start from θ − Q_k v, so the server moves by −Σ w_k Q_k v / Σ w_k.
  lams_start = lams1  # the rows the clients start round 2 from
  flat_v = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(pending)])
  comp = (
    sum(w * np.asarray(q.dense(lam), np.float64) @ flat_v for w, lam in zip(weights, lams_start))
    / weights.sum()
  )
  theta1 = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(server1.inner.params)])
  mask = np.concatenate(
    [np.broadcast_to(np.asarray(m), np.shape(x)).ravel()
     for m, x in zip(jax.tree.leaves(server1.masks), jax.tree.leaves(theta0))]
  )  # fmt: skip
  want = np.where(mask, theta1 - comp, 0.0)
  got = np.concatenate(
    [np.asarray(x).ravel() for x in jax.tree.leaves(states[2][1].server.inner.params)]
  )
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert np.abs(comp[mask]).max() > 1e-3  # the compensation is not negligible here


@pytest.mark.parametrize(
  'change, match',
  [
    (dict(scorer='obs'), "config.pruning.scorer='obs' cannot run in federated training"),
    (dict(sparsity=1.2), r'pruning.sparsity=1.2 must be a sparsity in \[0, 1\)'),
    (dict(schedule='exp'), "pruning.schedule='exp' is unknown"),
  ],
)
def test_bad_federated_pruning_options_fail_before_building(change, match):
  config = small_config('magnitude')
  config.pruning.update(change)
  with pytest.raises(ConfigError, match=match):
    federated.validate(config)


def test_fishleg_pruning_needs_fishleg_clients_that_keep_their_state():
  config = small_config('fishleg')
  config.algorithm.keep_client_opt_state = False
  with pytest.raises(ConfigError, match='keep_client_opt_state=True'):
    federated.validate(config)
