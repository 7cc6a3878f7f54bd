"""Optimal Brain Surgeon algebra on an inverse-curvature matrix (dense or B×B blocks).

For a quadratic loss model δL = ½ δθᵀ F δθ around trained weights θ:
  - single weight i: score ρ_i = θ_i² / (2 [F⁻¹]_ii), update δθ = −(θ_i / [F⁻¹]_ii) F⁻¹ e_i;
  - a set P removed jointly (exact): δθ = −F⁻¹ E_P (E_Pᵀ F⁻¹ E_P)⁻¹ E_Pᵀ θ, loss increase
    ½ θ_Pᵀ (E_Pᵀ F⁻¹ E_P)⁻¹ θ_P;
  - the independent approximation (oBERT/SparseML): the sum of the single-weight updates,
    δθ = −F⁻¹ (θ ⊙ 1_P / diag F⁻¹).
The empirical Fisher F = λI + (1/m) Σ_k g_k g_kᵀ is inverted block by block with m
Sherman–Morrison (Woodbury rank-1) updates, F⁻¹ ← F⁻¹ − (F⁻¹g)(F⁻¹g)ᵀ / (m + gᵀF⁻¹g),
starting from λ⁻¹I, as SparseML's EmpiricalBlockFisherInverse.

References: Hassibi & Stork 1993, "Second order derivatives for network pruning: Optimal
Brain Surgeon"; Singh & Alistarh 2020, "WoodFisher"; Kurtic et al. 2022, "The Optimal BERT
Surgeon" (arXiv 2203.07259), Eq. 3-5.
"""

import jax
import jax.numpy as jnp


def to_blocks(x: jax.Array, block_size: int) -> jax.Array:
  """A flat vector zero-padded to (k, B)."""
  k = -(-x.shape[0] // block_size)
  return jnp.pad(x, (0, k * block_size - x.shape[0])).reshape(k, block_size)


def woodbury_init(num_blocks: int, block_size: int, damping) -> jax.Array:
  """λ⁻¹ I in every block: (k, B, B)."""
  eye = jnp.eye(block_size, dtype=jnp.float32)
  return jnp.broadcast_to(eye / damping, (num_blocks, block_size, block_size))


def woodbury_add(finv: jax.Array, g: jax.Array, num_grads: int) -> jax.Array:
  """F⁻¹ after adding g gᵀ / m to F, in every block: finv (k, B, B), g (k, B)."""
  fg = jnp.einsum('kij,kj->ki', finv, g)
  denom = num_grads + jnp.einsum('ki,ki->k', g, fg)
  return finv - fg[:, :, None] * fg[:, None, :] / denom[:, None, None]


def block_diagonal(finv: jax.Array) -> jax.Array:
  """diag of every block, (k, B)."""
  return jnp.diagonal(finv, axis1=1, axis2=2)


def block_matvec(finv: jax.Array, v: jax.Array) -> jax.Array:
  return jnp.einsum('kij,kj->ki', finv, v)


def scores(theta: jax.Array, finv_diag: jax.Array) -> jax.Array:
  """ρ = θ² / (2 diag F⁻¹)."""
  return theta**2 / (2.0 * finv_diag)


def independent_update(finv_matvec, theta: jax.Array, removed: jax.Array, finv_diag) -> jax.Array:
  """oBERT's update δθ = −F⁻¹ (θ ⊙ 1_P / diag F⁻¹) (F⁻¹ given as a matvec)."""
  return -finv_matvec(jnp.where(removed, theta / finv_diag, 0.0))


def exact_update(finv: jax.Array, theta: jax.Array, removed: jax.Array) -> jax.Array:
  """The exact joint OBS update for a dense F⁻¹ (n, n) and a boolean set P (n,)."""
  idx = jnp.nonzero(removed, size=int(removed.sum()))[0]
  sub = finv[idx][:, idx]
  return -finv[:, idx] @ jnp.linalg.solve(sub, theta[idx])
