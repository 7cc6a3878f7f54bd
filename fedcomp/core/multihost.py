"""Multi-process (multi-host) helpers: the slots a process feeds, global arrays, host copies.

fedcomp runs multi-host as multi-controller JAX: every process (one per TPU VM worker, GPU
node or GPU) runs the same program on the same config, and `jax.distributed.initialize()`
(launch/main.py) connects them. A mesh over all devices then spans processes: an array
sharded over the mesh axis 'clients' has its rows on devices of several processes, and
each process may only read and write the rows its own devices hold.

- Cohort data: a process gathers only the slots of the cohort layout its devices own
  (`local_rows`) and `put` assembles the global array from every process's slice
  (`jax.make_array_from_process_local_data`). Values every process holds in full (slot ids,
  evaluation data, the initial state) go through `put` as well, each process placing only
  its own devices' part.
- Results: `fetch` copies a global array to every host (`process_allgather`).
- Files: only the primary process (`is_primary`) writes metrics, JSON files and summaries;
  checkpoints are written by every process through orbax (fedcomp.utils.checkpoint).

With one process every helper reduces to the single-process call (`jax.device_put`,
`jax.device_get`), so single-process runs do exactly what they did before.
"""

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from fedcomp.errors import ConfigError

PyTree = Any


def process_count() -> int:
  """The number of processes of the run (1 unless jax.distributed was initialized)."""
  return jax.process_count()


def is_multi_process() -> bool:
  """Whether the run spans more than one process."""
  return process_count() > 1


def is_primary() -> bool:
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def check_mesh(mesh: jax.sharding.Mesh) -> None:
  """Refuses a mesh that a multi-process run cannot feed: every process needs the same
  number of its devices in it (all devices: leave config.num_devices unset).

  Args:
    mesh: the run's mesh.

  Raises:
    ConfigError: some process has fewer mesh devices than another.
  """
  if not is_multi_process():
    return
  counts = np.bincount([d.process_index for d in mesh.devices.flat], minlength=process_count())
  if counts.min() != counts.max():
    raise ConfigError(
      f'a mesh of {mesh.devices.size} of the {jax.device_count()} devices has '
      f'{counts.min()} to {counts.max()} per process; a multi-process run needs the same '
      'number from every process (leave config.num_devices unset: all devices)'
    )


def local_rows(sharding: jax.sharding.Sharding, size: int) -> np.ndarray:
  """The rows of a (size, ...) array with `sharding` that this process's devices hold.

  Args:
    sharding: a sharding of the leading axis (e.g. ClientMap.sharded).
    size: the array's leading size.

  Returns:
    (n,) int64 sorted row indices; all rows with one process. Rows a process holds on
    several devices (replication) appear once. This is the order in which
    `jax.make_array_from_process_local_data` expects a process's slice.
  """
  if not is_multi_process():
    return np.arange(size, dtype=np.int64)
  index_map = sharding.addressable_devices_indices_map((size,))
  rows = [np.arange(size, dtype=np.int64)[index[0]] for index in index_map.values()]
  if not rows:
    return np.zeros(0, np.int64)
  return np.unique(np.concatenate(rows))


def _global_leaf(leaf, sharding: jax.sharding.Sharding, global_rows: int | None) -> jax.Array:
  """One leaf as a global array (see `put`)."""
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    return jax.device_put(leaf, sharding)  # already global: a reshard, every process calls it
  local = np.asarray(leaf)
  shape = local.shape if global_rows is None else (global_rows, *local.shape[1:])
  return jax.make_array_from_process_local_data(sharding, local, shape)


def put(tree: PyTree, sharding: jax.sharding.Sharding, global_rows: int | None = None) -> PyTree:
  """Puts host values on the mesh as global arrays with `sharding`.

  With one process this is `jax.device_put(tree, sharding)`. With several, every process
  calls it (a collective) and transfers only its own devices' part; no value crosses
  processes.

  Args:
    tree: a pytree of arrays (numpy, or jax arrays on this process's devices, or global
      arrays, which are resharded).
    sharding: the target sharding (the same on every process).
    global_rows: None: every process passes the whole array (identical on every
      process). An int: each leaf holds only this process's rows of a (global_rows, ...)
      array, `local_rows(sharding, global_rows)` in that order.

  Returns:
    The pytree of global jax Arrays.
  """
  if not is_multi_process():
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda a: _global_leaf(a, sharding, global_rows), tree)


def _host_leaf(leaf) -> np.ndarray:
  """One leaf on this host in full (see `fetch`)."""
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    if leaf.is_fully_replicated:
      return np.asarray(leaf.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
  return np.asarray(jax.device_get(leaf))


def fetch(tree: PyTree) -> PyTree:
  """Every leaf in full on this host, as numpy (a collective with several processes).

  Args:
    tree: a pytree of jax arrays (global or local) or numpy arrays.

  Returns:
    The same pytree of numpy arrays (`jax.device_get` with one process).
  """
  if not is_multi_process():
    return jax.device_get(tree)
  return jax.tree.map(_host_leaf, tree)


def sync(name: str) -> None:
  """Waits until every process reached this point (a no-op with one process).

  Args:
    name: the barrier's name; every process must pass the same name.
  """
  if is_multi_process():
    multihost_utils.sync_global_devices(name)
