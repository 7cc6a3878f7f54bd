"""FedPer: FedAvg on the base layers; personalisation layers stay on each client.

Each client keeps its own copy of the personal layers (the "head") in its row of
the per-client state table. In a round it combines the server's base with its
head, trains both locally, sends back only the base's pseudo-gradient and keeps
the new head. The server averages bases only; heads are never aggregated and
persist across rounds and checkpoints (they are part of the table).

Evaluation: `personal_params` is a client's own model (server base + its head);
`global_params` is the server base with the example-unweighted mean of all
clients' heads, assembled for evaluation only (training never sends heads).

References: Arivazhagan et al. 2019, "Federated Learning with Personalization
Layers" (arXiv 1912.00818).
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from fedcomp.algorithms import fed_avg
from fedcomp.core.algorithm import ClientOutput, FederatedAlgorithm
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
  *,
  loss_fn: Callable,
  client_tx: optax.GradientTransformation,
  server_tx: optax.GradientTransformation,
  personal_layers: Sequence[str] | None = None,
  num_personal_layers: int = 1,
  weighting: str = 'examples',
  sampled_nll: Callable | None = None,
) -> FederatedAlgorithm:
  """Builds FedPer.

  Args:
    loss_fn: loss_fn(params, batch, key) -> (mean loss, sums).
    client_tx: the local optimizer (its state is reset every round).
    server_tx: the server optimizer applied to the mean base pseudo-gradient.
    personal_layers: regexes over parameter paths (e.g. ['dense1/.*']) choosing the
      personal leaves (config.algorithm.personal_layers).
    num_personal_layers: with personal_layers unset, the last this many layers are
      personal (config.algorithm.num_personal_layers; K_P in the paper).
    weighting: 'examples' or 'uniform' aggregation of the bases.
    sampled_nll: passed to fed_avg.make (curvature-aware client optimizers).

  Returns:
    The FederatedAlgorithm; its table row is the list of personal leaves.
  """
  if isinstance(personal_layers, str):
    personal_layers = [personal_layers]
  if not isinstance(num_personal_layers, int) or num_personal_layers < 1:
    raise ConfigError(
      f'config.algorithm.num_personal_layers={num_personal_layers!r} must be an int >= 1'
    )
  base = fed_avg.make(
    loss_fn=loss_fn,
    client_tx=client_tx,
    server_tx=server_tx,
    weighting=weighting,
    sampled_nll=sampled_nll,
  )

  def mask_of(params):
    return personal_mask(params, personal_layers, num_personal_layers)

  def head(params):
    return [leaf for leaf, m in zip(jax.tree.leaves(params), mask_of(params)) if m]

  def merge(params, row):
    leaves, treedef = jax.tree.flatten(params)
    own = iter(row)
    mask = mask_of(params)
    return jax.tree.unflatten(treedef, [next(own) if m else p for p, m in zip(leaves, mask)])

  def client_init(server, row, key):
    del key
    params = merge(server.params, row)
    return fed_avg.LocalState(params, client_tx.init(params), server.params)

  def client_final(server, local, row, num_examples):
    del row
    delta = jax.tree.map(lambda s, p: s - p, server.params, local.params)
    leaves, treedef = jax.tree.flatten(delta)
    base_only = [jnp.zeros_like(d) if m else d for d, m in zip(leaves, mask_of(server.params))]
    weight = fed_avg.client_weight(weighting, num_examples)
    return ClientOutput(jax.tree.unflatten(treedef, base_only), weight, head(local.params))

  def personal_params(server, row):
    return merge(server.params, row)

  def global_params(server, table):
    return merge(server.params, [t.mean(0) for t in table])

  return base._replace(
    client_state_init=head,
    client_init=client_init,
    client_final=client_final,
    personal_params=personal_params,
    global_params=global_params,
  )
