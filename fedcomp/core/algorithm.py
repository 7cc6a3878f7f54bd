"""The interface every federated algorithm implements, and the context it is built from.

An algorithm is pure functions on pytrees. It never loops over clients: the federated
round maps `client_init`, `client_step` (over local minibatches) and `client_final` over
the cohort with the client-map primitive, reduces the clients' outputs with the
algorithm's reducer, and calls `server_update` once. Factories take one explicit
`AlgorithmContext` (the model, the task, the optimizers, the aggregator, the cohort's
share of the population) plus their own config kwargs.

References: the client_init/client_step/client_final split of FedJAX
(Ro et al. 2021, arXiv 2108.02117).
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from fedcomp.core.optimizer_step import OptimizerStep, train_step
from fedcomp.core.reducers import Reducer, weighted_mean
from fedcomp.tasks.base import bind

PyTree = Any


class ClientOutput(NamedTuple):
  """What one client sends back at the end of its local work.

  Attributes:
    update: the pytree the server aggregates (e.g. server params - local params).
    weight: scalar aggregation weight (e.g. number of local examples); 0 drops it.
    state: the client's new row of the per-client state table.
    group: the client's group for grouped reducers (e.g. HoVeFL's horizontal/vertical).
  """

  update: PyTree
  weight: jax.Array
  state: PyTree
  group: Any = 0


class FederatedAlgorithm(NamedTuple):
  """Pure functions that define a federated algorithm.

  Attributes:
    server_init: (params, model_state) -> server state.
    client_state_init: (params, model_state) -> one row of the per-client state table (a
      pytree without the client axis; `{}` for stateless clients).
    client_init: (server_state, client_row, key) -> local training state.
    client_step: (local_state, batch, key) -> (local_state, step sums); batch is a dict of
      the data's arrays and 'mask'; the sums are the task's (with 'count').
    client_final: (server_state, local_state, client_row, num_examples) -> ClientOutput.
    server_update: (server_state, aggregate) -> server state; aggregate is the reducer's
      result over the cohort's ClientOutputs.
    server_model: server_state -> (params, model_state) of the global model.
    reducer: how ClientOutputs are aggregated (default: the weighted mean of updates).
    personal_model: optional (server_state, client_row) -> (params, model_state) a client
      deploys (personalised algorithms); None when every client uses the global model.
    global_model: optional (server_state, client_table) -> (params, model_state) to
      evaluate when the global model is assembled from client state (e.g. FedPer's averaged
      head); None means server_model.
    client_table: optional (table, num_clients) -> table, run once when the per-client state
      table is created from `client_state_init`'s row broadcast to every client: per-client
      attributes that differ between clients (e.g. HoVeFL's population of each client).
  """

  server_init: Callable[[PyTree, PyTree], PyTree]
  client_state_init: Callable[[PyTree, PyTree], PyTree]
  client_init: Callable[[PyTree, PyTree, jax.Array], PyTree]
  client_step: Callable[[PyTree, dict, jax.Array], tuple[PyTree, dict]]
  client_final: Callable[[PyTree, PyTree, PyTree, jax.Array], ClientOutput]
  server_update: Callable[[PyTree, Any], PyTree]
  server_model: Callable[[PyTree], tuple[PyTree, PyTree]]
  reducer: Reducer = weighted_mean()
  personal_model: Callable[[PyTree, PyTree], tuple[PyTree, PyTree]] | None = None
  global_model: Callable[[PyTree, PyTree], tuple[PyTree, PyTree]] | None = None
  client_table: Callable[[PyTree, int], PyTree] | None = None


@dataclasses.dataclass(frozen=True)
class AlgorithmContext:
  """Everything an algorithm factory needs from the run, passed explicitly.

  Attributes:
    model: the BuiltModel (apply, initial params and state, normalisation paths).
    task: the Task (loss, sums, sampled NLL).
    client_optimizer: the clients' OptimizerStep (client_tx and its post-update hook).
    server_tx: the server's optax transformation, applied to the aggregate.
    aggregator: the Reducer of client updates (config.aggregator_name).
    cohort_fraction: the cohort's share of the population, |S| / N (SCAFFOLD).
  """

  model: Any
  task: Any
  client_optimizer: OptimizerStep
  server_tx: optax.GradientTransformation
  aggregator: Reducer = weighted_mean()
  cohort_fraction: float = 1.0

  def local_step(self, params, model_state, opt_state, batch, key, **kwargs):
    """fedcomp.core.optimizer_step.train_step with the task, model and client optimizer."""
    loss_fn, nll_of = bind(self.task, self.model.apply)
    return train_step(
      loss_fn, self.client_optimizer, params, model_state, opt_state, batch, key,
      nll_of=nll_of, **kwargs,
    )  # fmt: skip
