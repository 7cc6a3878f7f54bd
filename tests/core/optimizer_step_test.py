"""The one optimizer step: extra arguments, the post-update hook, and every caller's use of it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedcomp.core import OptimizerStep, train_step
from fedcomp.optim import fishleg


def test_plain_step_is_sgd_by_hand():
  step = OptimizerStep(optax.sgd(0.5))
  params = {'w': jnp.array([1.0, 2.0])}
  new, _ = step({'w': jnp.array([0.2, -0.4])}, step.init(params), params)
  np.testing.assert_allclose(new['w'], [0.9, 2.2])


def test_post_update_hook_sees_the_new_params_and_state():
  """A pruning-style hook: zero the entries a mask in the optimizer state marks."""
  mask = {'w': jnp.array([1.0, 0.0, 1.0])}
  seen = []

  def keep_masked(params, opt_state):
    seen.append(opt_state)
    return jax.tree.map(jnp.multiply, params, mask)

  step = OptimizerStep(optax.sgd(1.0), post_update=keep_masked)
  params = {'w': jnp.array([1.0, 1.0, 1.0])}
  new, _ = step({'w': jnp.array([0.5, 0.5, 0.5])}, step.init(params), params)
  np.testing.assert_allclose(new['w'], [0.5, 0.0, 0.5])
  assert len(seen) == 1


def test_extra_arguments_reach_fishleg_and_plain_transforms_ignore_them():
  params = {'w': jnp.ones(3)}
  nll = lambda p, k: 0.5 * jnp.sum(p['w'] ** 2)  # noqa: E731  (Fisher = I)
  for tx in (fishleg(0.1, damping=0.5, aux_every=1), optax.adam(0.1), optax.sgd(0.1)):
    step = OptimizerStep(tx)
    new, _ = step({'w': jnp.ones(3)}, step.init(params), params, nll_fn=nll, key=jax.random.key(0))
    assert np.all(np.asarray(new['w']) < 1.0)
  with pytest.raises(ValueError, match='nll_fn'):
    step = OptimizerStep(fishleg(0.1))
    step({'w': jnp.ones(3)}, step.init(params), params)


def test_train_step_adds_the_extra_loss_and_corrects_gradients():
  """loss = ½‖w‖² + extra ½μ‖w − a‖²; correction + c: w ← w − η(w + μ(w − a) + c)."""

  def loss_fn(p, s, batch, key):
    loss = 0.5 * jnp.sum(p['w'] ** 2)
    return loss, ({'loss': loss, 'count': jnp.ones(())}, s)

  step = OptimizerStep(optax.sgd(0.1))
  w, a, c, mu = jnp.array([1.0, -2.0]), jnp.array([0.5, 0.5]), jnp.array([0.3, 0.0]), 2.0
  params = {'w': w}
  new, state, _, sums, raw = train_step(
    loss_fn, step, params, {}, step.init(params), {}, jax.random.key(0),
    extra_loss=lambda p: 0.5 * mu * jnp.sum((p['w'] - a) ** 2),
    correct_grads=lambda g: {'w': g['w'] + c},
  )  # fmt: skip
  np.testing.assert_allclose(raw['w'], w + mu * (w - a), rtol=1e-6)
  np.testing.assert_allclose(new['w'], w - 0.1 * (w + mu * (w - a) + c), rtol=1e-6)
  assert float(sums['loss']) == pytest.approx(2.5)
