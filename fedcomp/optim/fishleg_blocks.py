"""Per-layer parameterisations of FishLeg's inverse-Fisher model Q(λ).

A block covers a group of parameter leaves (a dense or conv kernel with its
bias, or a single leaf) and offers:
  init(shapes, scale)  -> λ with Q(λ) = scale·I,
  prepare(λ)           -> the factors of Q(λ) that do not depend on v (Gram
                          matrices LᵀL, squares), computed once per λ,
  apply(cache, vs)     -> Q·v from prepare's output,
  matvec(λ, vs)        -> Q(λ)·v = apply(prepare(λ), vs) for the group's leaves vs,
  diagonal(λ, shapes)  -> diag(Q(λ)) in closed form, shaped like the leaves,
  dense(λ, shapes)     -> Q(λ) as an (n, n) matrix over the leaves flattened
                          and concatenated in order (for tests and small layers).
Every Q(λ) is symmetric positive semi-definite by construction.

Blocks:
  kron:  a kernel (..., n_out) reshaped to (m, n_out), its bias appended as an
         extra input row: U of shape (m', n_out). Q·U = A ⊙ (LᵀL (A ⊙ U) RᵀR) with
         L (m'×m'), R (n_out×n_out) and an elementwise rescaling A (m'×n_out), i.e.
         Q = D_A (LᵀL ⊗ RᵀR) D_A, as the official FishLinear/FishConv2d layers.
  kdiag: the kron block with a diagonal input factor: Q·U = A ⊙ (diag(l²) (A ⊙ U) RᵀR),
         l of length m'. For kernels whose input side is too wide for an m'×m' factor
         (a dense layer after a flatten): memory m' + n_out² + m'·n_out.
  diag:  Q = diag(d²), d shaped like the leaf.
  full:  Q = LᵀL over the group's flattened parameters.
  block: block-diagonal Q = blockdiag(L_kᵀ L_k) over consecutive chunks of
         `block_size` flattened parameters (the last chunk zero-padded).

References: Garcia et al. 2023, "Fisher-Legendre (FishLeg) optimization of deep
neural networks" (ICLR), Section 3 and the official code's layers
(mtkresearch/FishLeg).
"""

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any
Shapes = Sequence[tuple[int, ...]]


def _sizes(shapes: Shapes) -> list[int]:
  return [math.prod(s) for s in shapes]


def _flat(vs) -> jax.Array:
  return jnp.concatenate([jnp.ravel(v) for v in vs])


def _unflat(x: jax.Array, shapes: Shapes) -> list[jax.Array]:
  out, start = [], 0
  for shape, size in zip(shapes, _sizes(shapes)):
    out.append(x[start : start + size].reshape(shape))
    start += size
  return out


# ------------------------------------------------------------------------------ kron
def _kron_dims(shapes: Shapes) -> tuple[int, int, bool]:
  """(m', n_out, has_bias) of a kernel group [kernel] or [kernel, bias]."""
  kernel = shapes[0]
  n = kernel[-1]
  m = math.prod(kernel[:-1])
  if len(shapes) == 2:
    if tuple(shapes[1]) != (n,):
      raise ValueError(f'kron block: bias shape {shapes[1]} does not match kernel {kernel}')
    return m + 1, n, True
  if len(shapes) != 1:
    raise ValueError(f'kron block takes a kernel and an optional bias, got shapes {shapes}')
  return m, n, False


def _to_matrix(vs, shapes: Shapes) -> jax.Array:
  m, n, has_bias = _kron_dims(shapes)
  rows = vs[0].reshape(-1, n)
  return jnp.concatenate([rows, vs[1].reshape(1, n)]) if has_bias else rows


def _from_matrix(u: jax.Array, shapes: Shapes) -> list[jax.Array]:
  out = [u[: math.prod(shapes[0][:-1])].reshape(shapes[0])]
  if len(shapes) == 2:
    out.append(u[-1])
  return out


class KronFactors(NamedTuple):
  L: jax.Array  # (m', m') input-side factor
  R: jax.Array  # (n, n) output-side factor
  A: jax.Array  # (m', n) elementwise rescaling


def kron_init(shapes: Shapes, scale) -> KronFactors:
  m, n, _ = _kron_dims(shapes)
  return KronFactors(jnp.eye(m), jnp.eye(n), jnp.full((m, n), jnp.sqrt(scale), jnp.float32))


class KronGrams(NamedTuple):
  left: jax.Array  # LᵀL
  right: jax.Array  # RᵀR
  A: jax.Array


def kron_prepare(lam: KronFactors) -> KronGrams:
  return KronGrams(lam.L.T @ lam.L, lam.R.T @ lam.R, lam.A)


def kron_apply(cache: KronGrams, vs, shapes: Shapes) -> list[jax.Array]:
  w = cache.A * _to_matrix(vs, shapes)
  return _from_matrix(cache.A * ((cache.left @ w) @ cache.right), shapes)


def kron_diagonal(lam: KronFactors, shapes: Shapes) -> list[jax.Array]:
  left = jnp.sum(lam.L**2, axis=0)  # (LᵀL)_ii
  right = jnp.sum(lam.R**2, axis=0)  # (RᵀR)_jj
  return _from_matrix(lam.A**2 * jnp.outer(left, right), shapes)


def kron_dense(lam: KronFactors, shapes: Shapes) -> jax.Array:
  a = lam.A.reshape(-1)  # row-major vec(U) = kernel rows, then the bias row
  core = jnp.kron(lam.L.T @ lam.L, lam.R.T @ lam.R)
  return a[:, None] * core * a[None, :]


# ------------------------------------------------------------------------------ kdiag
class KronDiagFactors(NamedTuple):
  l: jax.Array  # noqa: E741 (m',) diagonal input-side factor
  R: jax.Array  # (n, n) output-side factor
  A: jax.Array  # (m', n) elementwise rescaling


def kdiag_init(shapes: Shapes, scale) -> KronDiagFactors:
  m, n, _ = _kron_dims(shapes)
  return KronDiagFactors(jnp.ones(m), jnp.eye(n), jnp.full((m, n), jnp.sqrt(scale), jnp.float32))


def kdiag_prepare(lam: KronDiagFactors) -> KronGrams:
  return KronGrams(lam.l**2, lam.R.T @ lam.R, lam.A)


def kdiag_apply(cache: KronGrams, vs, shapes: Shapes) -> list[jax.Array]:
  w = cache.A * _to_matrix(vs, shapes)
  return _from_matrix(cache.A * ((cache.left[:, None] * w) @ cache.right), shapes)


def kdiag_diagonal(lam: KronDiagFactors, shapes: Shapes) -> list[jax.Array]:
  return _from_matrix(lam.A**2 * jnp.outer(lam.l**2, jnp.sum(lam.R**2, axis=0)), shapes)


def kdiag_dense(lam: KronDiagFactors, shapes: Shapes) -> jax.Array:
  a = lam.A.reshape(-1)
  core = jnp.kron(jnp.diag(lam.l**2), lam.R.T @ lam.R)
  return a[:, None] * core * a[None, :]


# ------------------------------------------------------------------------------ diag
def diag_init(shapes: Shapes, scale) -> list[jax.Array]:
  return [jnp.full(s, jnp.sqrt(scale), jnp.float32) for s in shapes]


def diag_prepare(lam) -> list[jax.Array]:
  return [d**2 for d in lam]


def diag_apply(cache, vs, shapes: Shapes) -> list[jax.Array]:
  del shapes
  return [d2 * v for d2, v in zip(cache, vs)]


def diag_diagonal(lam, shapes: Shapes) -> list[jax.Array]:
  del shapes
  return [d**2 for d in lam]


def diag_dense(lam, shapes: Shapes) -> jax.Array:
  del shapes
  return jnp.diag(_flat([d**2 for d in lam]))


# ------------------------------------------------------------------------------ full
def full_init(shapes: Shapes, scale) -> jax.Array:
  return jnp.sqrt(scale) * jnp.eye(sum(_sizes(shapes)), dtype=jnp.float32)


def full_prepare(lam: jax.Array) -> jax.Array:
  return lam.T @ lam


def full_apply(cache: jax.Array, vs, shapes: Shapes) -> list[jax.Array]:
  return _unflat(cache @ _flat(vs), shapes)


def full_diagonal(lam: jax.Array, shapes: Shapes) -> list[jax.Array]:
  return _unflat(jnp.sum(lam**2, axis=0), shapes)


def full_dense(lam: jax.Array, shapes: Shapes) -> jax.Array:
  del shapes
  return lam.T @ lam


# ------------------------------------------------------------------------------ block
def _chunks(total: int, block_size: int) -> int:
  return -(-total // block_size)


def block_init(shapes: Shapes, scale, block_size: int) -> jax.Array:
  k = _chunks(sum(_sizes(shapes)), block_size)
  eye = jnp.eye(block_size, dtype=jnp.float32)
  return jnp.sqrt(scale) * jnp.broadcast_to(eye, (k, block_size, block_size))


def _padded(vs, lam: jax.Array) -> tuple[jax.Array, int]:
  x = _flat(vs)
  k, b, _ = lam.shape
  return jnp.pad(x, (0, k * b - x.shape[0])).reshape(k, b), x.shape[0]


def block_prepare(lam: jax.Array) -> jax.Array:
  return jnp.einsum('kji,kjl->kil', lam, lam)  # L_kᵀ L_k


def block_apply(cache: jax.Array, vs, shapes: Shapes) -> list[jax.Array]:
  x, total = _padded(vs, cache)
  y = jnp.einsum('kil,kl->ki', cache, x)
  return _unflat(y.reshape(-1)[:total], shapes)


def block_diagonal(lam: jax.Array, shapes: Shapes) -> list[jax.Array]:
  total = sum(_sizes(shapes))
  return _unflat(jnp.sum(lam**2, axis=1).reshape(-1)[:total], shapes)


def block_dense(lam: jax.Array, shapes: Shapes) -> jax.Array:
  total = sum(_sizes(shapes))
  return jax.scipy.linalg.block_diag(*block_prepare(lam))[:total, :total]


class Block(NamedTuple):
  """The functions of one block kind (see the module docstring)."""

  init: Any
  prepare: Any
  apply: Any
  diagonal: Any
  dense: Any
  takes_bias: bool  # a kernel's bias joins its block

  def matvec(self, lam, vs, shapes: Shapes) -> list[jax.Array]:
    """Q(λ)·v for the group's leaves vs."""
    return self.apply(self.prepare(lam), vs, shapes)


BLOCKS = {
  'kron': Block(kron_init, kron_prepare, kron_apply, kron_diagonal, kron_dense, True),
  'kdiag': Block(kdiag_init, kdiag_prepare, kdiag_apply, kdiag_diagonal, kdiag_dense, True),
  'diag': Block(diag_init, diag_prepare, diag_apply, diag_diagonal, diag_dense, False),
  'full': Block(full_init, full_prepare, full_apply, full_diagonal, full_dense, True),
  'block': Block(block_init, block_prepare, block_apply, block_diagonal, block_dense, True),
}
