"""Federated algorithms by name; each file's `make` returns a FederatedAlgorithm.

`make(*, loss_fn, client_tx, server_tx, **kwargs)`: loss_fn(params, batch, key) ->
(mean loss, sums) from fedcomp.core.losses; client_tx and server_tx are optax
transformations built from the config.
"""

from fedcomp.algorithms import fed_avg, fed_per, fed_prox, scaffold

ALGORITHMS = {
  'fed_avg': fed_avg.make,
  'fed_per': fed_per.make,
  'fed_prox': fed_prox.make,
  'scaffold': scaffold.make,
}

__all__ = ['ALGORITHMS']
