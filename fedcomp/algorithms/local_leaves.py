"""Parameters that stay on the client: a mask over leaves, splitting and merging.

FedPer keeps its personalisation layers on each client and FedBN its normalisation layers
(with their statistics); both split the model into shared leaves, averaged by the server,
and local leaves, kept in the client's row of the per-client state table.

References: Arivazhagan et al. 2019 (FedPer, arXiv 1912.00818); Li, Jiang, Zhang, Kamp,
Dou 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch Normalization"
(ICLR).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


class LocalLeaves(NamedTuple):
  """Which parameter leaves (jax.tree.leaves order) stay local, and whether the model state does.

  Attributes:
    mask: one bool per parameter leaf, or None when no parameter is local.
    state: whether the model state (BatchNorm statistics) stays local.
  """

  mask: tuple[bool, ...] | None = None
  state: bool = False

  @property
  def any(self) -> bool:
    return self.state or (self.mask is not None and any(self.mask))

  def take(self, params: PyTree) -> list:
    """The local leaves of `params`, in leaf order."""
    if self.mask is None:
      return []
    return [leaf for leaf, m in zip(jax.tree.leaves(params), self.mask) if m]

  def merge(self, params: PyTree, local: list) -> PyTree:
    """`params` with its local leaves replaced by `local`."""
    if self.mask is None:
      return params
    leaves, treedef = jax.tree.flatten(params)
    own = iter(local)
    return jax.tree.unflatten(treedef, [next(own) if m else p for p, m in zip(leaves, self.mask)])

  def zero_local(self, tree: PyTree) -> PyTree:
    """A params-shaped tree with its local leaves set to zero (what the server must not see)."""
    if self.mask is None:
      return tree
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(
      treedef, [jnp.zeros_like(x) if m else x for x, m in zip(leaves, self.mask)]
    )
