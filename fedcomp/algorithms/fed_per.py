"""FedPer: FedAvg on the base layers; personalisation layers stay on each client.

Each client keeps its own copy of the personal layers (the "head") in its row of
the per-client state table. In a round it combines the server's base with its
head, trains both locally, sends back only the base's pseudo-gradient and keeps
the new head. The server averages bases only; heads are never aggregated and
persist across rounds and checkpoints (they are part of the table). It is the
FedAvg family (fedcomp.algorithms.fed_avg.build) with the head as local leaves.

Evaluation: `personal_model` is a client's own model (server base + its head);
`global_model` is the server base with the unweighted mean of all clients' heads,
assembled for evaluation only (training never sends heads).

References: Arivazhagan et al. 2019, "Federated Learning with Personalization
Layers" (arXiv 1912.00818).
"""

from collections.abc import Sequence

from fedcomp.algorithms import fed_avg
from fedcomp.algorithms.local_leaves import LocalLeaves
from fedcomp.core.algorithm import AlgorithmContext, FederatedAlgorithm
from fedcomp.errors import ConfigError
from fedcomp.utils.param_paths import last_layers, leaf_paths, select_leaves


def personal_mask(params, personal_layers: Sequence[str] | None, num_personal_layers: int):
  """One bool per leaf (jax.tree.leaves order): True for personal leaves.

  Args:
    params: the model params (a dict of layers).
    personal_layers: regexes over leaf paths ('dense1/.*'); None: the last
      `num_personal_layers` layers.
    num_personal_layers: used when personal_layers is None.

  Returns:
    The mask as a tuple of bools.

  Raises:
    ConfigError: nothing, or everything, would be personal.
  """
  if personal_layers is None:
    layers = set(last_layers(params, num_personal_layers))
    mask = [p.split('/')[0] in layers for p in leaf_paths(params)]
  else:
    mask = select_leaves(params, personal_layers, 'algorithm.personal_layers')
  if not any(mask):
    raise ConfigError('config.algorithm: FedPer needs at least one personal layer')
  if all(mask):
    raise ConfigError(
      'config.algorithm: every parameter is personal, so FedPer would share nothing; '
      f'paths: {", ".join(leaf_paths(params))}'
    )
  return tuple(mask)


def make(
  ctx: AlgorithmContext,
  /,
  *,
  personal_layers: Sequence[str] | None = None,
  num_personal_layers: int = 1,
  weighting: str = 'examples',
  local_batch_norm: bool = False,
) -> FederatedAlgorithm:
  """Builds FedPer.

  Args:
    ctx: the algorithm context.
    personal_layers: regexes over parameter paths (e.g. ['dense1/.*']) choosing the
      personal leaves (config.algorithm.personal_layers).
    num_personal_layers: with personal_layers unset, the last this many layers are
      personal (config.algorithm.num_personal_layers; K_P in the paper).
    weighting: 'examples' or 'uniform' aggregation of the bases.
    local_batch_norm: also keep the normalisation layers and statistics local (FedBN).

  Returns:
    The FederatedAlgorithm; its table row's 'params' are the personal leaves.
  """
  if isinstance(personal_layers, str):
    personal_layers = [personal_layers]
  if not isinstance(num_personal_layers, int) or num_personal_layers < 1:
    raise ConfigError(
      f'config.algorithm.num_personal_layers={num_personal_layers!r} must be an int >= 1'
    )
  mask = personal_mask(ctx.model.params, personal_layers, num_personal_layers)
  norms = fed_avg.batch_norm_leaves(ctx, local_batch_norm)
  if norms.mask is not None:
    mask = tuple(a or b for a, b in zip(mask, norms.mask))
  return fed_avg.build(ctx, weighting=weighting, local=LocalLeaves(mask, norms.state))
