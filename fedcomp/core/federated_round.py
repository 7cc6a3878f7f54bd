"""The federated round: the client-map primitive plus the server update, one jitted call.

Each client of the cohort runs `client_init`, its local minibatch steps
(fedcomp.core.local_steps) and `client_final`; the client-map primitive reduces the
clients' outputs with the algorithm's reducer and the step sums with a plain sum, both in
the canonical order; the server applies `server_update`. A per-client state table (one
pytree row per client) is gathered by the cohort's ids before the clients run and
scattered back after. State buffers are donated, and the second round reuses the first
round's executable.

References: McMahan et al. 2017 (FedAvg); FedJAX's for_each_client (Ro et al. 2021).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedcomp.core import multihost
from fedcomp.core.algorithm import FederatedAlgorithm
from fedcomp.core.client_map import ClientMap, bit_reversed, varying
from fedcomp.core.local_steps import run_local_steps
from fedcomp.core.reducers import combine, total
from fedcomp.tasks.base import metrics_from_sums

PyTree = Any


def all_finite(tree: PyTree) -> jax.Array:
  """True if every float leaf of `tree` is finite (non-float leaves are ignored)."""
  checks = [
    jnp.isfinite(a).all()
    for a in jax.tree.leaves(tree)
    if jnp.issubdtype(jnp.result_type(a), jnp.floating)
  ]
  return jnp.stack(checks).all() if checks else jnp.asarray(True)


class FederatedRound:
  """Compiles and runs federated rounds of one algorithm.

  Args:
    algorithm: the FederatedAlgorithm.
    client_map: the ClientMap (mesh, strategy, chunking, canonical width).
    num_clients: size of the per-client state table.
    local_epochs: local epochs per round.
    batch_size: local minibatch size.
    pad_to: examples per client after padding.
    unroll: `lax.scan` unroll of the local steps; 0 unrolls them fully.
    dynamic_steps: each client runs only its own steps (a while_loop) and the cohort is
      ordered by size, so that chunks of short clients stop early (ragged clients).
  """

  def __init__(
    self,
    algorithm: FederatedAlgorithm,
    client_map: ClientMap,
    *,
    num_clients: int,
    local_epochs: int,
    batch_size: int,
    pad_to: int,
    unroll: int = 1,
    dynamic_steps: bool = False,
  ):
    if unroll < 0:
      raise ValueError(f'unroll={unroll} must be >= 0')
    multihost.check_mesh(client_map.mesh)
    self.algorithm = algorithm
    self.client_map = client_map
    self.num_clients = num_clients
    self.local_epochs = local_epochs
    self.batch_size = batch_size
    self.pad_to = pad_to
    self.unroll = unroll
    self.dynamic_steps = dynamic_steps
    self.reducer = combine(algorithm.reducer, total())
    rep = client_map.replicated
    # Explicit output shardings keep the state's sharding identical from round to round,
    # so the second round reuses the first round's executable.
    self.round = jax.jit(self._round, donate_argnums=(0, 1), out_shardings=(rep, rep, rep))

  @property
  def mesh(self) -> jax.sharding.Mesh:
    return self.client_map.mesh

  # ------------------------------------------------------------------ state
  def init(self, params: PyTree, model_state: PyTree | None = None) -> tuple[PyTree, PyTree]:
    """(server_state, client_table) for initial params and model state, on the mesh."""
    model_state = {} if model_state is None else model_state
    server = self.algorithm.server_init(params, model_state)
    row = self.algorithm.client_state_init(params, model_state)
    table = jax.tree.map(lambda a: jnp.broadcast_to(a, (self.num_clients, *jnp.shape(a))), row)
    if self.algorithm.client_table is not None:
      table = self.algorithm.client_table(table, self.num_clients)
    # Fresh, strongly typed copies: the round donates these buffers (the caller's params
    # must survive), and a weak-typed leaf would make the second round's inputs differ in
    # type from the first's and recompile.
    server, table = jax.tree.map(
      lambda a: jnp.array(a, dtype=jnp.asarray(a).dtype), (server, table)
    )
    rep = self.client_map.replicated
    return multihost.put(server, rep), multihost.put(table, rep)

  def chunk(self, cohort_size: int) -> int:
    """How many clients a device runs at once (one vmap) for a cohort of this size."""
    cm = self.client_map
    per_leaf = cm.layout(cohort_size).per_leaf
    if cm.strategy == 'vmap':
      return per_leaf
    return 1 if cm.strategy == 'loop' else min(cm.chunk_size or 1, per_leaf)

  def cohort_order(self, sizes: np.ndarray) -> np.ndarray:
    """The order clients take in the layout (which fills leaves in this order).

    Without dynamic_steps, the cohort's own order. With it, the clients ranked by size,
    largest first, fill the leaves' chunks pass by pass: pass p gives every leaf its p-th
    chunk (as many clients as that chunk holds, so a chunk's while loop stops soon after
    its own similar-sized clients), visiting the leaves in bit-reversed order (0, 4, 2, 6,
    1, ...) and reversing it every pass, so every device, for any device count that divides
    the width, gets large and small clients alike. A function of the sizes only.
    """
    if not self.dynamic_steps:
      return np.arange(len(sizes))
    k = len(sizes)
    layout = self.client_map.layout(k)
    room = np.bincount(layout.slots // layout.per_leaf, minlength=self.client_map.width)
    deal = bit_reversed(self.client_map.width)
    ranked = np.argsort(-np.asarray(sizes), kind='stable')
    leaves = [[] for _ in deal]
    chunk, start, p = self.chunk(k), 0, 0
    while start < k:
      for leaf in deal if p % 2 == 0 else deal[::-1]:
        take = min(chunk, room[leaf] - len(leaves[leaf]))  # >= 0: a leaf never overfills
        leaves[leaf].extend(ranked[start : start + take])
        start += take
      p += 1
    return np.concatenate([np.asarray(leaf, np.int64) for leaf in leaves])

  def slot_ids(self, ids: np.ndarray) -> np.ndarray:
    """Client id of every slot of the cohort's layout; spare slots hold num_clients."""
    layout = self.client_map.layout(len(ids))
    out = np.full(layout.size, self.num_clients, np.int32)
    out[layout.slots] = ids
    return out

  def local_slots(self, cohort_size: int) -> np.ndarray:
    """The slots of a cohort's layout that this process's devices own.

    With several processes, a process gathers only these slots' data and passes it to
    `put`; with one process, every slot.

    Args:
      cohort_size: K, the clients of the cohort.

    Returns:
      (n,) int64 sorted slot indices into `slot_ids(ids)`.
    """
    size = self.client_map.layout(cohort_size).size
    return multihost.local_rows(self.client_map.sharded, size)

  def put(self, slot_ids: np.ndarray, data: dict, mask: np.ndarray):
    """Transfers a laid-out cohort (see slot_ids), sharded over 'clients'.

    Args:
      slot_ids: (size,) client id of every slot of the layout (every process passes all).
      data: name -> (size, pad, ...) arrays of every slot, or, with several processes,
        of this process's slots only (`local_slots` order): (n, pad, ...).
      mask: (size, pad) or (n, pad), as `data`.

    Returns:
      (slot_ids, data, mask, valid) on the mesh: the arguments of `round` after the state.
    """
    valid = slot_ids < self.num_clients
    by_leaf = valid.reshape(self.client_map.width, -1)
    if (by_leaf[:, 1:] & ~by_leaf[:, :-1]).any():
      raise ValueError('a leaf of the layout has a real client after a spare slot')
    size, sharded = len(slot_ids), self.client_map.sharded
    rows = None  # data and mask hold every slot
    if len(mask) != size:
      rows = size
      mine = len(multihost.local_rows(sharded, size))
      if len(mask) != mine:
        raise ValueError(
          f'cohort data has {len(mask)} slots; expected all {size} or the {mine} of this process'
        )
    ids, valid = multihost.put((slot_ids.astype(np.int32), valid), sharded)
    data, mask = multihost.put((data, mask), sharded, rows)
    return ids, data, mask, valid

  def put_cohort(self, ids: np.ndarray, data: dict, mask: np.ndarray):
    """Lays out and transfers a cohort given in cohort order: ids (K,), data (K, pad, ...)."""
    order = self.cohort_order(mask.sum(1))
    ids = np.asarray(ids)[order]
    data, mask = self.client_map.place(
      ({k: np.asarray(v)[order] for k, v in data.items()}, mask[order])
    )
    slots = self.slot_ids(ids)
    slots, valid = multihost.put((slots, slots < self.num_clients), self.client_map.sharded)
    return slots, data, mask, valid

  # ------------------------------------------------------------------ round
  def _client(self, server, client):
    """One client's local work; returns ((ClientOutput, step sums), new table row)."""
    alg = self.algorithm
    row, data, mask, key = client
    k_local, k_init = jax.random.split(key)
    # Constants an algorithm creates (step counters, zeros) must vary over clients like
    # the rest of the local state, or the local-step loop's carry types would not match.
    local = varying(alg.client_init(server, row, k_init))
    local, sums = run_local_steps(
      alg.client_step,
      local,
      data,
      mask,
      k_local,
      epochs=self.local_epochs,
      batch_size=self.batch_size,
      unroll=self.unroll,
      dynamic=self.dynamic_steps,
    )
    out = alg.client_final(server, local, row, mask.sum())
    return (out, sums), out.state

  def _round(self, server, table, ids, data, mask, valid, round_key):
    rows = jax.tree.map(lambda t: jnp.take(t, ids, axis=0, mode='clip'), table)
    keys = jax.vmap(lambda c: jax.random.fold_in(round_key, c))(ids)
    (aggregate, sums), new_rows = self.client_map(
      self._client, server, (rows, data, mask, keys), valid, self.reducer
    )
    server = self.algorithm.server_update(server, aggregate)
    table = jax.tree.map(lambda t, r: t.at[ids].set(r, mode='drop'), table, new_rows)
    metrics = metrics_from_sums(sums, 'train')
    # What a checkpoint of this round would hold must be finite: the server state and the
    # rows just written (the rest of the table was checked when it was written).
    metrics['finite'] = all_finite(server) & all_finite(jax.tree.map(lambda r: jnp.where(
      valid.reshape(valid.shape + (1,) * (r.ndim - 1)), r, 0), new_rows))  # fmt: skip
    return server, table, metrics
