"""FishLeg: blocks, the auxiliary loss, convergence to the inverse Fisher, optax contract."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from fedcomp.errors import ConfigError
from fedcomp.optim import fishleg_transform as fishleg
from fedcomp.utils.checkpoint import Checkpointer

PARAMS = {
  'conv0': {'bias': jnp.zeros(4), 'kernel': jnp.zeros((3, 3, 2, 4))},
  'dense0': {'bias': jnp.zeros(3), 'kernel': jnp.zeros((5, 3))},
  'norm': {'scale': jnp.zeros(6)},
}


def random_lam(q, seed=0):
  """λ far from its identity initialisation, so every factor matters."""
  lam = q.init(1.0)
  leaves, treedef = jax.tree.flatten(lam)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
    treedef, [x + 0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
  )


@pytest.mark.parametrize(
  'blocks',
  [
    (),  # kron for the kernels (bias folded in), diag for the scale
    (('dense0/.*', 'full'), ('conv0/.*', 'block'), ('norm/.*', 'diag')),
    (('.*', 'block'),),
    (('dense0/kernel', 'kdiag'), ('conv0/kernel', 'kdiag')),
  ],
)
def test_blocks_matvec_diagonal_dense_agree(blocks):
  q = fishleg.inverse_fisher(PARAMS, blocks, block_size=7)
  lam = random_lam(q)
  dense = q.dense(lam)
  np.testing.assert_allclose(dense, dense.T, atol=1e-5)
  assert np.linalg.eigvalsh(np.asarray(dense, np.float64)).min() > -1e-4  # PSD
  v = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), PARAMS)
  flat_v, unravel = ravel_pytree(v)
  got = ravel_pytree(q.matvec(lam, v))[0]
  np.testing.assert_allclose(got, dense @ flat_v, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(ravel_pytree(q.diagonal(lam))[0], jnp.diag(dense), rtol=1e-5)


def test_default_groups():
  groups = fishleg.assign_blocks(PARAMS)
  # Leaves in order: conv0/bias, conv0/kernel, dense0/bias, dense0/kernel, norm/scale.
  assert sorted((g.kind, sorted(g.leaves)) for g in groups) == [
    ('diag', [4]),
    ('kron', [0, 1]),
    ('kron', [2, 3]),
  ]
  small = fishleg.assign_blocks(PARAMS, max_factor_size=10)  # conv factor is 3*3*2+1 = 19
  assert ('diag', (1,)) in [(g.kind, g.leaves) for g in small]
  # kdiag keeps the 4-row output factor of the conv and folds its bias in.
  small = fishleg.assign_blocks(PARAMS, max_factor_size=10, fallback='kdiag')
  assert ('kdiag', (1, 0)) in [(g.kind, g.leaves) for g in small]


def test_initial_q_is_scaled_identity():
  q = fishleg.inverse_fisher(PARAMS)
  np.testing.assert_allclose(q.dense(q.init(4.0)), 4.0 * np.eye(q.dense(q.init(1.0)).shape[0]))


def test_bad_blocks():
  known = 'known: kron, kdiag, diag, full, block'
  with pytest.raises(ConfigError, match=f"FishLeg block 'kfac'.*{known}"):
    fishleg.assign_blocks(PARAMS, (('.*', 'kfac'),))
  with pytest.raises(ConfigError, match='kron needs a rank-2 or rank-4 kernel; norm/scale'):
    fishleg.assign_blocks(PARAMS, (('norm/.*', 'kron'),))
  with pytest.raises(ConfigError, match="u_sampling='normal' is unknown"):
    fishleg.scale_by_fishleg(u_sampling='normal')


def test_aux_gradient_equals_autodiff_of_the_dense_loss():
  q = fishleg.inverse_fisher(PARAMS, (('dense0/.*', 'kron'), ('conv0/.*', 'block')), block_size=9)
  lam = random_lam(q, seed=1)
  n = q.dense(lam).shape[0]
  m = jax.random.normal(jax.random.key(2), (n, n))
  fisher = m @ m.T / n
  gamma = 0.1
  flat_u = jax.random.normal(jax.random.key(3), (n,))
  _, unravel = ravel_pytree(PARAMS)
  u = unravel(flat_u)

  def dense_aux(lam_):
    qd = q.dense(lam_)
    return 0.5 * flat_u @ qd @ (fisher + gamma * jnp.eye(n)) @ qd @ flat_u - flat_u @ qd @ flat_u

  def fisher_vp(v):
    return unravel(fisher @ ravel_pytree(v)[0])

  loss, grad = fishleg.aux_loss_and_grad(q, lam, u, fisher_vp, gamma)
  want_loss, want_grad = jax.value_and_grad(dense_aux)(lam)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-4)
  for g, w in zip(jax.tree.leaves(grad), jax.tree.leaves(want_grad)):
    np.testing.assert_allclose(g, w, rtol=2e-3, atol=2e-4)

  # precondition_aux: ∇_λ ⟨Q(λ)u, sg(Q (F_γ Q u − u))⟩ with Q held at the current λ.
  q_now = q.dense(lam)
  direction = q_now @ ((fisher + gamma * jnp.eye(n)) @ q_now @ flat_u - flat_u)
  want_pre = jax.grad(lambda lam_: flat_u @ q.dense(lam_) @ direction)(lam)
  precondition = lambda v: q.apply(q.prepare(lam), v)  # noqa: E731
  loss_pre, grad_pre = fishleg.aux_loss_and_grad(q, lam, u, fisher_vp, gamma, precondition)
  np.testing.assert_allclose(loss_pre, want_loss, rtol=1e-4)
  for g, w in zip(jax.tree.leaves(grad_pre), jax.tree.leaves(want_pre)):
    np.testing.assert_allclose(g, w, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize('precondition_aux', [False, True])
def test_q_converges_to_the_damped_inverse_fisher_of_a_linear_gaussian_layer(precondition_aux):
  """y = xW + ε with fixed inputs: the NLL's Hessian is exactly Σ ⊗ I (Σ = XᵀX/N)."""
  d_in, d_out, n, gamma = 8, 3, 400, 1e-2
  rng = np.random.default_rng(0)
  basis = np.linalg.qr(rng.normal(size=(d_in, d_in)))[0]
  x = rng.normal(size=(n, d_in)) @ np.diag(1 / np.arange(1, d_in + 1)) @ basis.T
  x = jnp.asarray(x, jnp.float32)
  params = {'dense': {'kernel': jnp.zeros((d_in, d_out))}}

  def nll_fn(p, key):
    y = jax.random.normal(key, (n, d_out))  # model samples; the Hessian does not depend on them
    return 0.5 * jnp.sum((x @ p['dense']['kernel'] - y) ** 2) / n

  tx = fishleg.scale_by_fishleg(
    damping=gamma,
    aux_every=1,
    u_sampling='gaussian',
    initial_scale=1.0,
    aux_learning_rate=1e-2,
    aux_optimizer=lambda lr: optax.adam(optax.exponential_decay(lr, 1000, 0.5)),
    precondition_aux=precondition_aux,
  )
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)

  @jax.jit
  def run(state):
    def step(state, key):
      return tx.update(zeros, state, params, nll_fn=nll_fn, key=key)[1], None

    return jax.lax.scan(step, state, jax.random.split(jax.random.key(0), 4000))[0]

  state = run(state)
  sigma = np.asarray(x.T @ x / n, np.float64)
  want = np.kron(np.linalg.inv(sigma + gamma * np.eye(d_in)), np.eye(d_out))
  q = fishleg.inverse_fisher(params)
  got = np.asarray(q.dense(state.lam), np.float64)
  assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-2
  v = rng.normal(size=d_in * d_out)
  cos = (got @ v) @ (want @ v) / np.linalg.norm(got @ v) / np.linalg.norm(want @ v)
  assert cos > 0.999


def quadratic_problem():
  params = {'dense0': {'bias': jnp.zeros(3), 'kernel': jnp.ones((4, 3))}}
  x = jax.random.normal(jax.random.key(0), (16, 4))

  def apply(p, x, *, train=False, key=None):
    return x @ p['dense0']['kernel'] + p['dense0']['bias']

  grads = jax.grad(lambda p: jnp.sum(apply(p, x) ** 2))(params)
  return params, grads, fishleg.sampled_nll(apply, x)


def test_optax_contract_jit_chain_no_recompile_and_extra_args():
  params, grads, nll = quadratic_problem()
  tx = optax.chain(optax.clip_by_global_norm(10.0), fishleg.fishleg(0.1, damping=0.1, aux_every=2))
  state = jax.jit(tx.init)(params)

  @jax.jit
  def update(grads, state, params, key):  # how a train step calls it
    return tx.update(grads, state, params, nll_fn=nll, key=key, unknown=1)

  for i in range(3):
    updates, state = update(grads, state, params, jax.random.key(i))
  assert update._cache_size() == 1
  assert all(np.isfinite(u).all() for u in jax.tree.leaves(updates))
  inner = state[1][0]
  assert int(inner.count) == 3 and float(inner.aux_loss) != 0.0


def test_first_update_is_q0_times_gradient():
  params, grads, nll = quadratic_problem()
  tx = fishleg.scale_by_fishleg(damping=0.5, aux_every=5)
  state = tx.init(params)
  # λ takes an aux step at count 0 before preconditioning; with aux lr 0 it stays Q0 = I/γ.
  tx0 = fishleg.scale_by_fishleg(damping=0.5, aux_every=5, aux_learning_rate=0.0)
  out, _ = tx0.update(grads, tx0.init(params), params, nll_fn=nll, key=jax.random.key(0))
  for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
    np.testing.assert_allclose(o, g / 0.5, rtol=1e-6)
  # fishleg(sgd_learning_rate=s): the first step equals SGD with rate s.
  sgd_like = fishleg.fishleg(0.05, momentum=0.0, sgd_learning_rate=0.01, aux_learning_rate=0.0)
  step, _ = sgd_like.update(grads, sgd_like.init(params), params, nll_fn=nll, key=jax.random.key(0))
  for o, g in zip(jax.tree.leaves(step), jax.tree.leaves(grads)):
    np.testing.assert_allclose(o, -0.01 * g, rtol=1e-5)
  with pytest.raises(ValueError, match='needs params and the keyword arguments nll_fn'):
    tx.update(grads, state, params)


def test_inject_hyperparams_changes_damping_and_aux_rate():
  params, grads, nll = quadratic_problem()
  static = ('blocks', 'u_sampling', 'block_size', 'max_factor_size', 'precondition_aux')
  tx = optax.inject_hyperparams(fishleg.scale_by_fishleg, static_args=static)(
    damping=0.5, aux_learning_rate=0.0, aux_every=1
  )
  state = tx.init(params)
  state.hyperparams['damping'] = jnp.asarray(0.25)
  update = jax.jit(lambda g, s, p, k: tx.update(g, s, p, nll_fn=nll, key=k))
  out, state = update(grads, state, params, jax.random.key(0))
  # damping enters the aux loss only; with aux lr 0, Q stays Q0 = I / 0.5 (set at init).
  np.testing.assert_allclose(out['dense0']['bias'], grads['dense0']['bias'] / 0.5, rtol=1e-6)
  state.hyperparams['aux_learning_rate'] = jnp.asarray(1e-2)
  _, state2 = update(grads, state, params, jax.random.key(1))
  moved = [
    np.abs(a - b).max()
    for a, b in zip(*map(jax.tree.leaves, (state.inner_state.lam, state2.inner_state.lam)))
  ]
  assert max(moved) > 0


def test_state_round_trips_through_orbax(tmp_path):
  params, grads, nll = quadratic_problem()
  tx = fishleg.fishleg(0.1, damping=0.1, aux_every=1)
  state = tx.init(params)
  _, state = tx.update(grads, state, params, nll_fn=nll, key=jax.random.key(0))
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(1, state, {'round': 1})
  restored, _ = ckpt.restore(1, tx.init(params))
  ckpt.close()
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, b)


def test_cached_factors_follow_lambda_and_give_q_times_gradient():
  params, grads, nll = quadratic_problem()
  tx = fishleg.scale_by_fishleg(damping=0.1, aux_learning_rate=1e-2, aux_every=2)
  q = fishleg.inverse_fisher(params)
  state = tx.init(params)
  update = jax.jit(lambda g, s, k: tx.update(g, s, params, nll_fn=nll, key=k))
  for i in range(5):  # aux steps at counts 0, 2, 4; cached steps in between
    out, state = update(grads, state, jax.random.key(i))
    for a, b in zip(*map(jax.tree.leaves, (state.q_cache, q.prepare(state.lam)))):
      np.testing.assert_allclose(a, b, rtol=1e-6)
    want = q.dense(state.lam) @ ravel_pytree(grads)[0]
    np.testing.assert_allclose(ravel_pytree(out)[0], want, rtol=1e-5)


def test_momentum_on_gradient_preconditions_the_averaged_gradient():
  params, grads, nll = quadratic_problem()
  g = ravel_pytree(grads)[0]
  lr, beta, scale = 0.05, 0.9, 0.2
  kw = dict(momentum=beta, initial_scale=scale, aux_learning_rate=0.0, damping=0.1)
  by_gradient = fishleg.fishleg(lr, momentum_on='gradient', **kw)
  state = by_gradient.init(params)
  grads2 = jax.tree.map(lambda x: -2.0 * x, grads)
  for gi in (grads, grads2):
    step, state = by_gradient.update(gi, state, params, nll_fn=nll, key=jax.random.key(0))
  # ḡ₁ = (1-β) g, ḡ₂ = β ḡ₁ + (1-β)(-2g); with Q = Q0 = s·I the step is -η s ḡ₂.
  g_bar = beta * (1 - beta) * g + (1 - beta) * (-2.0 * g)
  np.testing.assert_allclose(ravel_pytree(step)[0], -lr * scale * g_bar, rtol=1e-5)
  known = "momentum_on='nesterov' is unknown; known: update, gradient"
  with pytest.raises(ConfigError, match=known):
    fishleg.fishleg(lr, momentum_on='nesterov')


def test_module_docstring_example_runs():
  result = doctest.testmod(fishleg, raise_on_error=False)
  assert result.attempted > 5 and result.failed == 0


def test_kronecker_q_equals_the_matrix_built_from_its_factors():
  """Q = D_A (LᵀL ⊗ RᵀR) D_A on U = [kernel; bias], written entry by entry:
  Q[(i, j), (k, l)] = A[i, j] · (LᵀL)[i, k] · (RᵀR)[j, l] · A[k, l]."""
  params = {'dense0': {'bias': jnp.zeros(3), 'kernel': jnp.zeros((4, 3))}}
  q = fishleg.inverse_fisher(params)
  (group,) = q.groups
  assert group.kind == 'kron'
  rng = np.random.default_rng(0)
  L, R, A = rng.normal(size=(5, 5)), rng.normal(size=(3, 3)), rng.normal(size=(5, 3))
  lam = (fishleg.fishleg_blocks.KronFactors(*(jnp.asarray(a, jnp.float32) for a in (L, R, A))),)
  LL, RR = L.T @ L, R.T @ R
  Q = np.zeros((15, 15))
  for i in range(5):
    for j in range(3):
      for k in range(5):
        for m in range(3):
          Q[i * 3 + j, k * 3 + m] = A[i, j] * LL[i, k] * RR[j, m] * A[k, m]
  kernel, bias = rng.normal(size=(4, 3)), rng.normal(size=3)
  u = np.concatenate([kernel, bias[None]]).reshape(-1)  # rows of the kernel, then the bias
  v = {
    'dense0': {'bias': jnp.asarray(bias, jnp.float32), 'kernel': jnp.asarray(kernel, jnp.float32)}
  }
  got = q.matvec(lam, v)['dense0']
  want = (Q @ u).reshape(5, 3)
  np.testing.assert_allclose(got['kernel'], want[:4], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got['bias'], want[4], rtol=1e-4, atol=1e-4)
  diag = q.diagonal(lam)['dense0']
  np.testing.assert_allclose(diag['kernel'], np.diag(Q).reshape(5, 3)[:4], rtol=1e-4)


def test_fishleg_alias_under_inject_hyperparams_with_a_learning_rate_schedule():
  """optax users schedule any alias with inject_hyperparams; with aux lr 0 and no momentum
  Q stays Q0 = I/damping, so the update is exactly −η_t·g/damping."""
  params, grads, nll = quadratic_problem()
  schedule = optax.linear_schedule(0.1, 0.0, transition_steps=4)
  static = (
    'momentum_on',
    'u_sampling',
    'blocks',
    'block_size',
    'max_factor_size',
    'precondition_aux',
  )
  tx = optax.inject_hyperparams(fishleg.fishleg, static_args=static)(
    learning_rate=schedule, momentum=0.0, damping=0.5, aux_learning_rate=0.0, aux_every=1
  )
  state = tx.init(params)
  update = jax.jit(lambda g, s, p, k: tx.update(g, s, p, nll_fn=nll, key=k))
  for t in range(5):
    out, state = update(grads, state, params, jax.random.key(t))
    lr = float(schedule(t))
    assert float(state.hyperparams['learning_rate']) == pytest.approx(lr, abs=1e-7)
    for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
      np.testing.assert_allclose(o, -lr * g / 0.5, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
  'kwargs,match',
  [
    ({'damping': 0.0}, 'damping=0.0 must be a finite number > 0'),
    ({'aux_every': 0}, 'aux_every=0 must be a finite number > 0'),
    ({'aux_every': 2.5}, 'aux_every=2.5 must be a positive integer'),
    ({'initial_scale': -1.0}, 'initial_scale=-1.0 must be'),
    ({'momentum': 1.0}, r'momentum=1.0 must be in \[0, 1\)'),
  ],
)
def test_bad_hyperparameters_fail_at_once(kwargs, match):
  with pytest.raises(ConfigError, match=match):
    fishleg.fishleg(0.1, **kwargs)
