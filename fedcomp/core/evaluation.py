"""Evaluation of a model (or of each client's own model) with a task's per-example metrics.

Results do not depend on the device count: every device evaluates batches of the same
fixed size (XLA:CPU's matmul kernels round differently for different batch sizes), the
per-example values come back to the host, and the host sums them in float64 in example
order.

Nor on the process count: with several processes (fedcomp.core.multihost) each process
puts only its own devices' share of the examples on the mesh, every process receives all
per-example values (`process_allgather`), and every process sums them in the same order,
so all processes get the numbers one process would.
"""

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fedcomp.core import multihost
from fedcomp.core.client_map import AXIS

PyTree = Any


def host_means(values: dict, mask: np.ndarray) -> dict[str, float]:
  """Means of per-example values over the real rows, summed in float64 on the host."""
  n = int(mask.sum())
  out = {}
  for name, v in values.items():
    v = np.asarray(v, np.float64).reshape(-1)[mask.reshape(-1)]
    out[name] = float(v.sum()) / max(n, 1)
  return out


def make_evaluator(task, apply: Callable, batch_size: int, mesh: jax.sharding.Mesh) -> Callable:
  """An evaluator of a model on a dataset with the task's per-example metrics.

  Args:
    task: the Task (its per_example metrics are averaged).
    apply: the model's apply.
    batch_size: examples per device and call of the model.
    mesh: the 1-D mesh with axis 'clients'; each step splits batch_size x devices examples
      over the devices.

  Returns:
    evaluate(params, model_state, arrays) -> {metric: mean over examples} as Python
    floats; arrays: name -> (N, ...) numpy arrays, any N (padded and masked here).
  """
  devices = int(mesh.devices.size)

  def per_device(params, state, data):
    def chunk(batch):
      return task.per_example(apply, params, state, batch)

    return jax.lax.map(chunk, data)

  sharded = jax.jit(
    jax.shard_map(
      per_device, mesh=mesh, in_specs=(P(), P(), P(None, AXIS)), out_specs=P(None, AXIS)
    )
  )
  split = NamedSharding(mesh, P(None, AXIS))

  def evaluate(params, model_state, arrays: dict) -> dict[str, float]:
    n = len(arrays['x'])
    step = batch_size * devices
    steps = max(1, -(-n // step))
    pad = steps * step - n
    data = {
      k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]).reshape(
        steps, step, *v.shape[1:]
      )
      for k, v in arrays.items()
    }
    mask = (np.arange(steps * step) < n).reshape(steps, step)
    data['mask'] = mask
    values = sharded(params, model_state, multihost.put(data, split))
    return host_means(multihost.fetch(values), mask)

  return evaluate


def make_client_evaluator(
  task, apply: Callable, client_model: Callable, mesh: jax.sharding.Mesh
) -> Callable:
  """An evaluator of each client's own model on that client's own data.

  Clients run one after another (`lax.map`), each as a plain batch through its own
  params, so convolutions stay ordinary convolutions; clients are split over the devices.

  Args:
    task: the Task.
    apply: the model's apply.
    client_model: (server_state, client_row) -> (params, model_state) of that client
      (FederatedAlgorithm.personal_model).
    mesh: the 1-D mesh; the client axis must be a multiple of its size.

  Returns:
    evaluate(server_state, rows, data, mask) -> {metric: (K, P) per-example values} as numpy
    arrays, for rows (K, ...) and padded client data (K, P, ...), mask (K, P) on the mesh;
    with several processes, every process receives every client's values.
  """

  def per_device(server, rows, data, mask):
    def one(args):
      row, client_data, client_mask = args
      params, state = client_model(server, row)
      return task.per_example(apply, params, state, {**client_data, 'mask': client_mask})

    return jax.lax.map(one, (rows, data, mask))

  axis = P(AXIS)
  run = jax.jit(
    jax.shard_map(per_device, mesh=mesh, in_specs=(P(), axis, axis, axis), out_specs=axis)
  )

  def evaluate(server, rows, data, mask):
    return multihost.fetch(run(server, rows, data, mask))

  return evaluate
