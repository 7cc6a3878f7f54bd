"""Federated algorithms by name; each file's `make` returns a FederatedAlgorithm.

`make(ctx, **kwargs)`: ctx is the fedcomp.core.AlgorithmContext (model, task, client
optimizer step, server optimizer, aggregator, cohort fraction); kwargs come from
config.algorithm and are checked against the signature.
"""

from fedcomp.algorithms import fed_avg, fed_per, fed_prox, scaffold

ALGORITHMS = {
  'fed_avg': fed_avg.make,
  'fed_per': fed_per.make,
  'fed_prox': fed_prox.make,
  'scaffold': scaffold.make,
}

__all__ = ['ALGORITHMS']
