"""The interface every federated algorithm implements: pure functions on pytrees.

An algorithm never loops over clients: the round engine maps `client_init`,
`client_step` (over local minibatches) and `client_final` over the cohort, then
aggregates the updates with the weights the algorithm returns and calls
`server_update` once.

References: the client_init/client_step/client_final split of FedJAX
(Ro et al. 2021, arXiv 2108.02117).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

PyTree = Any


class ClientOutput(NamedTuple):
  """What one client sends back at the end of its local work.

  Attributes:
    update: the pytree the server averages (e.g. server params - local params).
    weight: scalar aggregation weight (e.g. number of local examples); 0 drops it.
    state: the client's new row of the per-client state table.
  """

  update: PyTree
  weight: jax.Array
  state: PyTree


class FederatedAlgorithm(NamedTuple):
  """Pure functions that define a federated algorithm.

  Attributes:
    server_init: params -> server state.
    client_state_init: params -> one row of the per-client state table (a
      pytree without the client axis; `{}` for stateless clients).
    client_init: (server_state, client_row, key) -> local training state.
    client_step: (local_state, batch, key) -> (local_state, step_stats); batch is
      a dict with 'x', 'y', 'mask'; step_stats are sums over the batch's valid
      examples ('loss', 'accuracy', 'count').
    client_final: (server_state, local_state, client_row, num_examples) ->
      ClientOutput.
    server_update: (server_state, mean_update) -> server state.
    server_params: server_state -> the global model params to evaluate.
    personal_params: optional (server_state, client_row) -> the params a client
      deploys (personalised algorithms); None when every client uses the global model.
    global_params: optional (server_state, client_table) -> the global model to
      evaluate when it is assembled from client state (e.g. FedPer's averaged head);
      None means server_params.
  """

  server_init: Callable[[PyTree], PyTree]
  client_state_init: Callable[[PyTree], PyTree]
  client_init: Callable[[PyTree, PyTree, jax.Array], PyTree]
  client_step: Callable[[PyTree, dict, jax.Array], tuple[PyTree, dict]]
  client_final: Callable[[PyTree, PyTree, PyTree, jax.Array], ClientOutput]
  server_update: Callable[[PyTree, PyTree], PyTree]
  server_params: Callable[[PyTree], PyTree]
  personal_params: Callable[[PyTree, PyTree], PyTree] | None = None
  global_params: Callable[[PyTree, PyTree], PyTree] | None = None
