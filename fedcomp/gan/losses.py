"""FSL-GAN's losses as pure functions: each user's discriminator on its real shard and the
server's fakes, and the server generator's loss summed over every user's discriminator.

The discriminators are stacked over users (a leading axis of their params) and vmapped, so a
step's users run as one client map inside one compiled function; the generator's gradient
is the gradient of the sum, which equals the sum of the per-user gradients (tested).

References: Goodfellow et al. 2014 (the non-saturating GAN losses); Kortoçi et al. 2022,
"Federated Split GANs" (arXiv 2207.01750): "the generator loss is summed over all
discriminators".
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def pure(module: nnx.Module) -> tuple[Callable, dict, dict]:
  """(apply(params, state, x, *, train, key) -> (out, new_state), params, state) of a module
  called as module(x, train=..., key=...), with params and state as plain nested dicts (as
  fedcomp.models.build_model does, so they trace, stack and differentiate freely)."""
  graphdef, p, s = nnx.split(module, nnx.Param, ...)
  p_def, s_def = jax.tree.structure(p), jax.tree.structure(s)
  params, state = nnx.to_pure_dict(p), nnx.to_pure_dict(s)
  state_def = jax.tree.structure(state)

  def apply(params, state, x, *, train=False, key=None):
    # Pure dicts and nnx states flatten in the same sorted-key order.
    m = nnx.merge(graphdef, jax.tree.unflatten(p_def, jax.tree.leaves(params)),
                  jax.tree.unflatten(s_def, jax.tree.leaves(state)))  # fmt: skip
    out = m(x, train=train, key=key)
    new = jax.tree.leaves(nnx.state(m, nnx.Not(nnx.Param)))
    return out, jax.tree.unflatten(state_def, new)

  return apply, params, state


def bce(logits: jax.Array, target: float) -> jax.Array:
  """Per-example binary cross-entropy of logits against a constant 0/1 target."""
  return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target))


def discriminator_loss(d_apply, d_params, d_state, real, real_mask, fakes, key):
  """BCE(D(real), 1) averaged over the real rows where mask + BCE(D(fakes), 0) averaged.

  Args:
    d_apply: the discriminator's pure apply; d_params, d_state: one user's.
    real: (B, ...) the user's real images; real_mask: (B,) which rows are real data.
    fakes: (F, ...) the server's generated images (no gradient flows to the generator).
    key: dropout randomness.

  Returns:
    The scalar loss.
  """
  kr, kf = jax.random.split(key)
  r = d_apply(d_params, d_state, real, train=True, key=kr)[0]
  f = d_apply(d_params, d_state, jax.lax.stop_gradient(fakes), train=True, key=kf)[0]
  m = real_mask.astype(r.dtype)
  return (bce(r, 1.0) * m).sum() / jnp.maximum(m.sum(), 1.0) + bce(f, 0.0).mean()


def generator_loss(g_apply, g_params, g_state, d_apply, d_params_stacked, d_state_stacked, z,
                   key):  # fmt: skip
  """Σ_users mean BCE(D_u(G(z)), 1): the server generator's loss over every discriminator.

  Args:
    g_apply, g_params, g_state: the server's generator.
    d_apply: the discriminator's pure apply; d_params_stacked, d_state_stacked: every user's
      (leading axis: users).
    z: (F, noise_dim) noise.
    key: dropout randomness (one key per user, folded in).

  Returns:
    (loss, new generator state (BatchNorm statistics of this batch)).
  """
  fakes, g_state = g_apply(g_params, g_state, z, train=True)
  users = jax.tree.leaves(d_params_stacked)[0].shape[0]
  keys = jax.vmap(lambda u: jax.random.fold_in(key, u))(jnp.arange(users))

  def one(p, s, k):
    return bce(d_apply(p, s, fakes, train=True, key=k)[0], 1.0).mean()

  return jax.vmap(one)(d_params_stacked, d_state_stacked, keys).sum(), g_state
