"""FedProx: FedAvg whose clients minimise loss + μ/2·‖w − w_server‖².

References: Li et al. 2020, "Federated Optimization in Heterogeneous Networks"
(MLSys).
"""

from collections.abc import Callable

import optax

from fedcomp.algorithms import fed_avg
from fedcomp.core.algorithm import FederatedAlgorithm


def make(
  *,
  loss_fn: Callable,
  client_tx: optax.GradientTransformation,
  server_tx: optax.GradientTransformation,
  mu: float = 0.01,
  weighting: str = 'examples',
  sampled_nll: Callable | None = None,
) -> FederatedAlgorithm:
  """Builds FedProx.

  Args:
    loss_fn: loss_fn(params, batch, key) -> (mean loss, sums).
    client_tx: the local optimizer.
    server_tx: the server optimizer.
    mu: the proximal coefficient μ ≥ 0 (μ = 0 is FedAvg).
    weighting: 'examples' or 'uniform'.
    sampled_nll: passed to fed_avg.make (curvature-aware client optimizers).

  Returns:
    The FederatedAlgorithm.
  """
  return fed_avg.make(
    loss_fn=loss_fn,
    client_tx=client_tx,
    server_tx=server_tx,
    weighting=weighting,
    proximal_mu=mu,
    sampled_nll=sampled_nll,
  )
