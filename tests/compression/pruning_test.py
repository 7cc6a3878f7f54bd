"""The pruning wrapper, targets and schedules, and FishLeg Surgeon against exact OBS."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedcomp.compression import pruning
from fedcomp.compression.pruning import obs_algebra, schedules
from fedcomp.compression.pruning.targets import dense_masks, erk_densities
from fedcomp.errors import ConfigError
from fedcomp.optim import fishleg
from fedcomp.utils.checkpoint import Checkpointer

PARAMS = {
  'dense0': {'kernel': jnp.ones((6, 8)), 'bias': jnp.ones(8)},
  'dense1': {'kernel': jnp.ones((8, 4)), 'bias': jnp.ones(4)},
}


def mlp_problem(seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  params = {
    'dense0': {'kernel': jax.random.normal(k[0], (6, 8)), 'bias': jnp.zeros(8)},
    'dense1': {'kernel': jax.random.normal(k[1], (8, 3)), 'bias': jnp.zeros(3)},
  }
  x = jax.random.normal(k[2], (64, 6))
  y = jax.random.randint(k[3], (64,), 0, 3)

  def logits(p, x):
    return (
      jnp.tanh(x @ p['dense0']['kernel'] + p['dense0']['bias']) @ p['dense1']['kernel']
      + p['dense1']['bias']
    )

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean()

  def nll_fn(p, key):
    z = logits(p, x)
    t = jax.lax.stop_gradient(jax.random.categorical(key, z))
    return optax.softmax_cross_entropy_with_integer_labels(z, t).mean()

  def grad_fn(p, key):
    idx = jax.random.randint(key, (8,), 0, 64)
    return jax.grad(
      lambda q: optax.softmax_cross_entropy_with_integer_labels(logits(q, x[idx]), y[idx]).mean()
    )(p)

  return params, loss, nll_fn, grad_fn


OPTIMIZERS = {
  'sgd': lambda: optax.sgd(0.1),
  'momentum': lambda: optax.sgd(0.1, momentum=0.9),
  'adam': lambda: optax.adam(1e-2),
  'fishleg': lambda: fishleg(0.05, damping=0.1, aux_every=2),
}


@pytest.mark.parametrize('opt', sorted(OPTIMIZERS))
@pytest.mark.parametrize('scorer', ['magnitude', 'obs', 'fishleg'])
def test_masked_weights_stay_exactly_zero_under_every_optimizer(opt, scorer):
  params, loss, nll_fn, grad_fn = mlp_problem()
  kwargs = {'obs': dict(num_grads=16, block_size=10), 'fishleg': dict(pretrain_steps=5)}
  pruner = pruning.make_pruner(
    scorer, 0.5, 'one_shot', dict(step=2), scorer_kwargs=kwargs.get(scorer)
  )
  tx = pruning.wrap_optax(OPTIMIZERS[opt](), pruner)
  state = tx.init(params)

  @jax.jit
  def step(params, state, key):
    updates, state = tx.update(
      jax.grad(loss)(params), state, params, key=key, nll_fn=nll_fn, grad_fn=grad_fn
    )
    return optax.apply_updates(params, updates), state

  before = None
  for i in range(12):
    params, state = step(params, state, jax.random.key(i))
    if i == 2:
      masks = state.masks
      before = params
  for path in ('dense0', 'dense1'):
    m = np.asarray(masks[path]['kernel'])
    assert m.sum() == m.size // 2  # uniform 50% of every kernel
    np.testing.assert_array_equal(np.asarray(state.masks[path]['kernel']), m)
    w = np.asarray(params[path]['kernel'])
    assert np.all(w[~m] == 0.0)  # exactly zero, 9 steps after pruning
    assert not np.allclose(w[m], np.asarray(before[path]['kernel'])[m])  # the rest trained
    assert np.all(np.asarray(state.masks[path]['bias']))  # biases stay dense
  assert bool(jnp.isfinite(loss(params)))


def test_no_recompilation_when_masks_change():
  params, loss, _, _ = mlp_problem()
  pruner = pruning.make_pruner('magnitude', 0.8, 'cubic', dict(start=0, end=6, every=2))
  tx = pruning.wrap_optax(optax.sgd(0.1), pruner)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  sparsities = []
  for _ in range(9):
    params, state = step(params, state)
    sparsities.append(float(state.sparsity))
  assert len(traces) == 1
  # Zhu & Gupta by hand: s_t = 0.8 (1 − (1 − t/6)³) at t = 0, 2, 4, 6.
  by_hand = [0.8 * (1 - (1 - t / 6) ** 3) for t in (0, 2, 4, 6)]
  np.testing.assert_allclose([sparsities[t] for t in (0, 2, 4, 6)], by_hand, rtol=1e-6)
  assert sparsities[7] == sparsities[6]
  zeros = sum(int((params[k]['kernel'] == 0).sum()) for k in ('dense0', 'dense1'))
  assert zeros == round(0.8 * 48) + round(0.8 * 24)


def test_cubic_schedule_with_initial_sparsity_and_a_last_update_before_end():
  s = schedules.cubic(start=10, end=45, every=10, initial=0.2)
  assert [bool(s.is_update(t)) for t in (9, 10, 20, 40, 45, 50)] == [0, 1, 1, 1, 0, 0]
  # The last update (step 40) reaches the final sparsity.
  for t, p in ((10, 0.0), (20, 1 / 3), (40, 1.0)):
    np.testing.assert_allclose(s.sparsity(t, 0.9), 0.9 + (0.2 - 0.9) * (1 - p) ** 3, rtol=1e-6)


def test_erk_densities_equal_the_formula_by_hand():
  shapes = [(3, 3, 1, 8), (3, 3, 8, 16), (400, 10)]
  d = [float(x) for x in erk_densities(shapes, 0.9)]
  sizes = np.array([72, 1152, 4000])
  p = np.array([15 / 72, 30 / 1152, 410 / 4000])
  # No leaf caps at 0.9: ε = 0.1 Σ N / Σ p N.
  eps = 0.1 * sizes.sum() / (p * sizes).sum()
  np.testing.assert_allclose(d, eps * p, rtol=1e-5)
  # At 0.5 the small first layer would exceed density 1: capped, ε re-solved over the rest.
  d = [float(x) for x in erk_densities(shapes, 0.5)]
  eps = (0.5 * sizes.sum() - 72) / (p[1:] * sizes[1:]).sum()
  np.testing.assert_allclose(d, [1.0, *(eps * p[1:])], rtol=1e-5)


def test_distributions_policy_and_nm():
  params, *_ = mlp_problem()
  scores = jax.tree.map(lambda p: jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape), params)
  pol = [('dense1/kernel', 0.0)]
  pruner = pruning.make_pruner('magnitude', 0.75, distribution='global', policy=pol)
  t = pruner.targets(params)
  masks = pruning.masks_from_scores(t, scores, dense_masks(t), 0.75)
  assert masks['dense1']['kernel'].shape == ()  # kept dense by the policy
  assert int(masks['dense0']['kernel'].sum()) == 12  # 25% of 48, the 12 highest scores
  assert np.all(np.asarray(masks['dense0']['kernel']).ravel()[-12:])
  # 2:4 along the fan-in of each output unit.
  t = pruning.make_pruner('magnitude', nm=(2, 4)).targets(params)
  rnd = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
  masks = pruning.masks_from_scores(t, rnd, dense_masks(t), 0.5)
  k = np.asarray(masks['dense1']['kernel'])  # (8, 3): groups of 4 rows per column
  assert np.all(k.reshape(2, 4, 3).sum(1) == 2)
  r = np.asarray(rnd['dense1']['kernel']).reshape(2, 4, 3)
  kept_min = np.where(k.reshape(2, 4, 3), r, np.inf).min(1)
  dropped_max = np.where(k.reshape(2, 4, 3), -np.inf, r).max(1)
  assert np.all(kept_min > dropped_max)


@pytest.mark.parametrize(
  'kwargs, match',
  [
    (
      dict(scorer='taylor'),
      "pruning.scorer='taylor' is unknown; known: fishleg, magnitude, obd, obs",
    ),
    (
      dict(schedule='linear'),
      "pruning.schedule='linear' is unknown; known: cubic, fixed, one_shot",
    ),
    (dict(distribution='random'), "pruning.distribution='random' is unknown"),
    (dict(sparsity=1.0), r'pruning.sparsity=1.0 must be a sparsity in \[0, 1\)'),
    (dict(sparsity=-0.1), r'pruning.sparsity=-0.1 must be a sparsity in \[0, 1\)'),
    (dict(policy=[('dense0/.*', 1.5)]), 'pruning.policy'),
    (dict(nm=(4, 2)), r'pruning.nm=\(4, 2\) must be'),
    (dict(scorer='obs', scorer_kwargs=dict(block_size=0)), 'block_size=0'),
    (dict(scorer='fishleg', scorer_kwargs=dict(damping=-1.0)), 'damping=-1.0'),
    (dict(scorer='obs', scorer_kwargs=dict(blocks=3)), 'does not take it'),
    (
      dict(sparsity=0.3, schedule='cubic', schedule_kwargs=dict(initial=0.6)),
      'initial=0.6 exceeds pruning.sparsity=0.3',
    ),
  ],
)
def test_bad_options_fail_in_one_line(kwargs, match):
  with pytest.raises(ConfigError, match=match):
    pruning.make_pruner(**kwargs)


def test_state_round_trips_through_orbax(tmp_path):
  params, loss, nll_fn, _ = mlp_problem()
  pruner = pruning.make_pruner('fishleg', 0.5, scorer_kwargs=dict(pretrain_steps=3))
  tx = pruning.wrap_optax(optax.adam(1e-2), pruner)
  state = tx.init(params)
  _, state = tx.update(jax.grad(loss)(params), state, params, nll_fn=nll_fn, key=jax.random.key(0))
  ckpt = Checkpointer(str(tmp_path / 'ckpt'))
  ckpt.save(1, state, {})
  restored, _ = ckpt.restore(1, jax.tree.map(jnp.zeros_like, state))
  ckpt.close()
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def linear_gaussian_layer(d_in=6, d_out=3, seed=0):
  """y = x W + b + ε: the Fisher (Hessian of ½‖·‖²) is exactly [x,1][x,1]ᵀ/N ⊗ I."""
  rng = np.random.default_rng(seed)
  scales = np.geomspace(0.3, 3.0, d_in)
  x = (rng.normal(size=(256, d_in)) + 0.5 * rng.normal(size=(256, 1))) * scales
  params = {
    'dense': {
      'kernel': jnp.asarray(rng.normal(size=(d_in, d_out)) / scales[:, None], jnp.float32),
      'bias': jnp.asarray(rng.normal(size=d_out), jnp.float32),
    }
  }
  xj = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(rng.normal(size=(256, d_out)), jnp.float32)

  def nll_fn(p, key):
    del key  # the Hessian does not depend on the targets
    return 0.5 * jnp.mean(jnp.sum((xj @ p['dense']['kernel'] + p['dense']['bias'] - y) ** 2, -1))

  xa = np.concatenate([x, np.ones((256, 1))], 1)
  fisher = np.kron(xa.T @ xa / 256, np.eye(d_out))  # rows: kernel rows then the bias row
  return params, nll_fn, fisher


def exact_fls_scorer(params, gamma):
  """(targets, FLS scorer) whose 10,000 aux steps reach Q = F_γ⁻¹ of linear_gaussian_layer."""
  pruner = pruning.make_pruner(
    'fishleg', 0.5, policy=[('dense/bias', 0.0)],
    scorer_kwargs=dict(damping=gamma, aux_learning_rate=3e-3, pretrain_steps=10000,
                       initial_scale=1.0, warm_start_probes=0),
  )  # fmt: skip
  targets = pruner.targets(params)
  return targets, pruner.scorer(targets)


def _flat(p):  # the kron block's vec order: kernel rows, then the bias row
  return np.concatenate([np.asarray(p['dense']['kernel']).ravel(), np.asarray(p['dense']['bias'])])


def test_fishleg_surgeon_matches_exact_obs_when_the_inverse_fisher_is_representable():
  params, nll_fn, fisher = linear_gaussian_layer()
  gamma = 1e-2
  finv = np.linalg.inv(fisher + gamma * np.eye(len(fisher)))
  targets, scorer = exact_fls_scorer(params, gamma)
  state, curv = jax.jit(
    lambda s, p: scorer.curvature(s, p, dense_masks(targets), {'nll_fn': nll_fn}, jax.random.key(0))
  )(scorer.init(params), params)
  theta = _flat(params)
  got = _flat(scorer.scores(curv, params))
  want = theta**2 / (2 * np.diag(finv))
  np.testing.assert_allclose(got[:18], want[:18], rtol=0.01)
  # The compensation for removing a set P equals oBERT's update with the exact inverse.
  removed = np.zeros(len(theta), bool)
  removed[[0, 4, 7, 11]] = True
  rm = {'dense': {'kernel': jnp.asarray(removed[:18].reshape(6, 3)), 'bias': jnp.zeros(3, bool)}}
  delta = _flat(scorer.compensate(curv, params, rm))
  ref = np.asarray(
    obs_algebra.independent_update(
      lambda v: jnp.asarray(finv, jnp.float32) @ v, jnp.asarray(theta), jnp.asarray(removed),
      jnp.asarray(np.diag(finv), jnp.float32),
    )
  )  # fmt: skip
  cos = delta @ ref / np.linalg.norm(delta) / np.linalg.norm(ref)
  assert cos > 0.999
  np.testing.assert_allclose(np.linalg.norm(delta), np.linalg.norm(ref), rtol=0.01)


@pytest.mark.parametrize(
  'dead', [[3, 4, 5], [0, 3, 6, 9, 12, 15]], ids=['an input row', 'an output column']
)
def test_masked_fishleg_fits_the_inverse_of_the_fisher_restricted_to_live_weights(dead):
  """With a whole kernel row or column pruned the restricted inverse is still Kronecker
  times an elementwise rescaling, so the masked aux loss can reach it exactly."""
  params, nll_fn, fisher = linear_gaussian_layer(seed=1)
  gamma = 1e-2
  targets, scorer = exact_fls_scorer(params, gamma)
  masks = dense_masks(targets)
  alive = np.ones(21, bool)
  alive[dead] = False
  masks['dense']['kernel'] = jnp.asarray(alive[:18].reshape(6, 3))
  _, curv = jax.jit(
    lambda s, p: scorer.curvature(s, p, masks, {'nll_fn': nll_fn}, jax.random.key(0))
  )(scorer.init(params), params)
  f_gamma = fisher + gamma * np.eye(21)
  restricted = np.diag(np.linalg.inv(f_gamma[np.ix_(alive, alive)]))
  full = np.diag(np.linalg.inv(f_gamma))[alive]
  got = _flat(curv[1])[alive]
  # The stochastic aux fit (Gaussian probes, Adam lr 3e-3) ends with ~0.3% noise on equal
  # entries (measured: 8.9069 to 8.9141 for one value), machine-dependent through float
  # summation order; the restriction moves some entries by more than 2%.
  np.testing.assert_allclose(got, restricted, rtol=6e-3)
  assert np.abs(full / restricted - 1).max() > 0.02  # the restriction matters here
  assert np.abs(got / restricted - 1).max() < np.abs(got / full - 1).max() / 3


def test_fishleg_warm_start_sets_diag_q_to_the_inverse_damped_fisher_diagonal():
  """A diagonal Hessian c: Hutchinson's v ⊙ (F v) = c exactly for Rademacher v."""
  params, *_ = mlp_problem()
  c = jax.tree.map(lambda p: jnp.linspace(0.0, 3.0, p.size).reshape(p.shape), params)

  def nll_fn(p, key):
    del key
    return 0.5 * sum(jnp.sum(ci * pi**2) for ci, pi in zip(jax.tree.leaves(c), jax.tree.leaves(p)))

  gamma = 0.1
  pruner = pruning.make_pruner(
    'fishleg', 0.5, scorer_kwargs=dict(damping=gamma, pretrain_steps=0, warm_start_probes=2)
  )
  scorer = pruner.scorer(pruner.targets(params))
  masks = dense_masks(pruner.targets(params))
  _, (_, diag) = scorer.curvature(
    scorer.init(params), params, masks, {'nll_fn': nll_fn}, jax.random.key(0)
  )
  for d, ci in zip(jax.tree.leaves(diag), jax.tree.leaves(c)):
    np.testing.assert_allclose(d, 1.0 / (ci + gamma), rtol=1e-5)


def test_obs_inverse_is_the_woodbury_inverse_of_the_sampled_gradients_and_can_be_kept():
  """The i-th gradient is grad_fn(params, fold_in(key, i)): F = λI + (1/m) Σ g gᵀ by hand."""
  params, _, _, grad_fn = mlp_problem()
  m, lam = 12, 1e-2
  for recompute in (True, False):
    pruner = pruning.make_pruner(
      'obs', 0.5, policy=[('dense1/.*', 0.0)],
      scorer_kwargs=dict(num_grads=m, block_size=16, damping=lam, recompute=recompute),
    )  # fmt: skip
    targets = pruner.targets(params)
    scorer = pruner.scorer(targets)
    key = jax.random.key(3)
    state, curv = scorer.curvature(
      scorer.init(params), params, dense_masks(targets), {'grad_fn': grad_fn}, key
    )
    g = np.stack(
      [
        np.asarray(grad_fn(params, jax.random.fold_in(key, i))['dense0']['kernel']).ravel()
        for i in range(m)
      ]
    )
    for b in range(3):  # 48 weights in blocks of 16
      gb = g[:, 16 * b : 16 * (b + 1)]
      ref = np.linalg.inv(lam * np.eye(16) + gb.T @ gb / m)
      np.testing.assert_allclose(curv[1][b], ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    # A second pruning step with another key: rebuilt, or the kept first estimate.
    _, curv2 = scorer.curvature(
      state, params, dense_masks(targets), {'grad_fn': grad_fn}, jax.random.key(4)
    )
    same = np.allclose(curv2[1], curv[1])
    assert same != recompute


def test_new_masks_are_a_subset_of_the_old_ones_whatever_the_scores():
  params, *_ = mlp_problem()
  t = pruning.make_pruner('magnitude', 0.5, distribution='global').targets(params)
  old = dense_masks(t)
  old['dense0']['kernel'] = jnp.arange(48).reshape(6, 8) % 2 == 0  # half pruned
  # Pruned weights score highest (or NaN) and the target asks for fewer zeros than there are.
  scores = jax.tree.map(lambda p: jnp.ones(p.shape), params)
  scores['dense0']['kernel'] = jnp.where(old['dense0']['kernel'], 0.0, jnp.nan).at[0, 1].set(9.0)
  new = pruning.masks_from_scores(t, scores, old, 0.1)
  assert not np.any(np.asarray(new['dense0']['kernel']) & ~np.asarray(old['dense0']['kernel']))


@pytest.mark.parametrize('scorer', ['obs', 'obd'])
def test_wrapper_prunes_and_compensates_as_the_formulas_say(scorer):
  """A grad_fn that returns the same g for every key makes the curvature exact:
  F = λI + g gᵀ in blocks of 20 (the 48 kernel weights pad the last block), OBD's diagonal
  λ + g². Learning rate 0: the step changes θ by the pruning alone."""
  params, loss, _, _ = mlp_problem(seed=2)
  g = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size + 1), p.shape), params)
  lam = 0.05
  pruner = pruning.make_pruner(
    scorer, 0.5, policy=[('dense1/.*', 0.0)],
    scorer_kwargs=dict(num_grads=4, damping=lam, **({'block_size': 20} if scorer == 'obs' else {})),
  )  # fmt: skip
  tx = pruning.wrap_optax(optax.sgd(0.0), pruner)
  updates, state = tx.update(
    jax.grad(loss)(params), tx.init(params), params, grad_fn=lambda p, k: g, key=jax.random.key(0)
  )
  got = np.asarray(optax.apply_updates(params, updates)['dense0']['kernel']).ravel()
  theta = np.asarray(params['dense0']['kernel'], np.float64).ravel()
  gk = np.asarray(g['dense0']['kernel'], np.float64).ravel()
  if scorer == 'obs':
    finv = np.zeros((60, 60))
    gp = np.pad(gk, (0, 12))
    for b in range(3):
      s = slice(20 * b, 20 * (b + 1))
      finv[s, s] = np.linalg.inv(lam * np.eye(20) + np.outer(gp[s], gp[s]))
    finv = finv[:48, :48]
    scores = theta**2 / (2 * np.diag(finv))
  else:
    scores = 0.5 * (lam + gk**2) * theta**2
  removed = np.zeros(48, bool)
  removed[np.argsort(scores)[:24]] = True
  want = theta.copy()
  if scorer == 'obs':
    want -= finv @ np.where(removed, theta / np.diag(finv), 0.0)
  want[removed] = 0.0
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(state.masks['dense0']['kernel']).ravel(), ~removed)
