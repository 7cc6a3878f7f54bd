"""FedProx: FedAvg whose clients minimise loss + μ/2·‖w − w_server‖².

References: Li et al. 2020, "Federated Optimization in Heterogeneous Networks" (MLSys).
"""

from fedcomp.algorithms import fed_avg
from fedcomp.core.algorithm import AlgorithmContext, FederatedAlgorithm


def make(
  ctx: AlgorithmContext,
  /,
  *,
  mu: float = 0.01,
  weighting: str = 'examples',
  keep_client_opt_state: bool = False,
  local_batch_norm: bool = False,
) -> FederatedAlgorithm:
  """Builds FedProx.

  Args:
    ctx: the algorithm context.
    mu: the proximal coefficient μ >= 0 (config.algorithm.mu).
    weighting: 'examples' or 'uniform'.
    keep_client_opt_state: see fed_avg.make.
    local_batch_norm: see fed_avg.make (FedBN).

  Returns:
    The FederatedAlgorithm.
  """
  return fed_avg.build(
    ctx,
    weighting=weighting,
    proximal_mu=mu,
    keep_client_opt_state=keep_client_opt_state,
    local=fed_avg.batch_norm_leaves(ctx, local_batch_norm),
  )
