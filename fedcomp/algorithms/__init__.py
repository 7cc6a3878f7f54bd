"""Federated algorithms by name; each file's `make` returns a FederatedAlgorithm.

`make(ctx, **kwargs)`: ctx is the fedcomp.core.AlgorithmContext (model, task, client
optimizer step, server optimizer, aggregator, cohort fraction); kwargs come from
config.algorithm and are checked against the signature.
"""

from fedcomp.algorithms import fed_avg, fed_per, fed_prox, hovefl, scaffold

ALGORITHMS = {
  'fed_avg': fed_avg.make,
  'fed_per': fed_per.make,
  'fed_prox': fed_prox.make,
  'hovefl': hovefl.make,
  'scaffold': scaffold.make,
}

# Checks of the rest of the config an algorithm needs (its partition, cohort), run by
# experiments.federated.build_algorithm with the built model, before anything compiles.
CONFIG_CHECKS = {'hovefl': hovefl.check_config}

__all__ = ['ALGORITHMS', 'CONFIG_CHECKS']
