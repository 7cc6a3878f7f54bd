"""OBS algebra against hand computations on exact quadratics (compression.md §2.3, §3.4, §3.7)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedcomp.compression import pruning
from fedcomp.compression.pruning import obs_algebra

jax.config.update('jax_enable_x64', False)


def spd(n, seed, cond=50.0):
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  return (q * np.geomspace(1.0, cond, n)) @ q.T


def test_single_weight_removal_raises_the_loss_by_its_score_and_zeroes_it():
  f = spd(6, 0)
  finv = np.linalg.inv(f)
  theta = np.random.default_rng(1).normal(size=6)
  loss = lambda w: 0.5 * (w - theta) @ f @ (w - theta)  # noqa: E731  minimum at theta
  score = np.asarray(obs_algebra.scores(jnp.asarray(theta), jnp.diag(finv)))
  for i in range(6):
    removed = np.arange(6) == i
    delta = obs_algebra.independent_update(
      lambda v: jnp.asarray(finv, jnp.float32) @ v, jnp.asarray(theta, jnp.float32),
      jnp.asarray(removed), jnp.asarray(np.diag(finv), jnp.float32),
    )  # fmt: skip
    w = theta + np.asarray(delta, np.float64)
    assert abs(w[i]) < 1e-5
    np.testing.assert_allclose(loss(w), score[i], rtol=1e-4)


def test_exact_multi_weight_update_is_the_constrained_least_squares_solution():
  n, f = 8, spd(8, 2)
  theta = np.random.default_rng(3).normal(size=n)
  removed = np.zeros(n, bool)
  removed[[1, 4, 6]] = True
  delta = np.asarray(
    obs_algebra.exact_update(
      jnp.asarray(np.linalg.inv(f)), jnp.asarray(theta), jnp.asarray(removed)
    )
  )
  # Reference: minimise ½ δᵀFδ subject to δ_P = −θ_P, by eliminating δ_P (a KKT solve).
  keep = ~removed
  ref = np.zeros(n)
  ref[removed] = -theta[removed]
  ref[keep] = np.linalg.solve(f[np.ix_(keep, keep)], -f[np.ix_(keep, removed)] @ ref[removed])
  np.testing.assert_allclose(delta, ref, atol=1e-4)


def test_independent_update_equals_oberts_formula_and_woodbury_equals_the_inverse():
  rng = np.random.default_rng(4)
  m, b, lam = 40, 5, 1e-2
  grads = rng.normal(size=(m, 2, b)).astype(np.float32)
  finv = obs_algebra.woodbury_init(2, b, lam)
  for g in grads:
    finv = obs_algebra.woodbury_add(finv, jnp.asarray(g), m)
  for k in range(2):  # F = λI + (1/m) Σ g gᵀ per block
    f = lam * np.eye(b) + grads[:, k].T @ grads[:, k] / m
    np.testing.assert_allclose(finv[k], np.linalg.inv(f), rtol=2e-3, atol=2e-3)
  # oBERT's mask update: Σ over pruned i of θ_i / [F⁻¹]_ii · F⁻¹ e_i, subtracted.
  theta = rng.normal(size=(2, b)).astype(np.float32)
  removed = rng.random((2, b)) < 0.4
  got = obs_algebra.independent_update(
    lambda v: obs_algebra.block_matvec(finv, v), jnp.asarray(theta), jnp.asarray(removed),
    obs_algebra.block_diagonal(finv),
  )  # fmt: skip
  fi = np.asarray(finv)
  ref = np.zeros((2, b))
  for k in range(2):
    for i in np.nonzero(removed[k])[0]:
      ref[k] -= theta[k, i] / fi[k, i, i] * fi[k][:, i]
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('sparsity', [0.5, 0.7, 0.9])
def test_quality_order_on_an_anisotropic_quadratic(sparsity):
  """compression.md §3.7: magnitude is misleading (weights ∝ 1/scale of their input)."""
  rng = np.random.default_rng(0)
  d = 200
  scales = np.exp(rng.uniform(np.log(0.1), np.log(10.0), d))
  mix = np.eye(d) + 0.3 * rng.normal(size=(d, d)) / np.sqrt(d)
  x = rng.normal(size=(2000, d)) @ mix * scales
  f = x.T @ x / len(x)
  f += 1e-4 * np.trace(f) / d * np.eye(d)
  finv = np.linalg.inv(f)
  w_star = rng.normal(size=d) / scales
  loss = lambda w: 0.5 * (w - w_star) @ f @ (w - w_star)  # noqa: E731

  params = {'w': jnp.asarray(w_star.reshape(20, 10), jnp.float32)}
  pruner = pruning.make_pruner('magnitude', sparsity)
  targets = pruner.targets(params)
  masks = pruning.targets.dense_masks(targets)

  def pruned(scores):
    new = pruning.masks_from_scores(
      targets, {'w': jnp.asarray(scores.reshape(20, 10))}, masks, sparsity
    )
    return ~np.asarray(new['w']).ravel()

  removed_mag = pruned(np.abs(w_star))
  removed_obd = pruned(0.5 * np.diag(f) * w_star**2)
  removed_obs = pruned(w_star**2 / (2 * np.diag(finv)))
  for r in (removed_mag, removed_obd, removed_obs):
    assert r.sum() == round(sparsity * d)
  fi32 = jnp.asarray(finv, jnp.float32)
  indep = np.asarray(
    obs_algebra.independent_update(
      lambda v: fi32 @ v, jnp.asarray(w_star, jnp.float32), jnp.asarray(removed_obs),
      jnp.diag(fi32),
    ), np.float64,
  )  # fmt: skip
  exact = np.asarray(
    obs_algebra.exact_update(jnp.asarray(finv), jnp.asarray(w_star), jnp.asarray(removed_obs))
  )
  zero = loss(np.zeros(d))
  l_mag = loss(np.where(removed_mag, 0, w_star)) / zero
  l_obd = loss(np.where(removed_obd, 0, w_star)) / zero
  w_indep = np.where(removed_obs, 0, w_star + indep)
  l_indep = loss(w_indep) / zero
  l_exact = loss(w_star + exact) / zero
  assert l_mag > 1.5 * l_obd  # magnitude clearly worst
  assert abs(l_indep - l_obd) < 0.25 * l_obd  # OBD ≈ independent OBS
  assert l_exact < l_indep  # the exact joint update is better
  assert np.abs((w_star + exact)[removed_obs]).max() < 1e-4
