"""The federated round engine: algorithm interface, client table, mesh, rounds."""

from fedcomp.core.algorithm import ClientOutput, FederatedAlgorithm
from fedcomp.core.engine import RoundEngine, local_batches
from fedcomp.core.losses import (
  classification_loss,
  classification_sampled_nll,
  evaluate_clients_fn,
  evaluate_fn,
)

__all__ = [
  'ClientOutput',
  'FederatedAlgorithm',
  'RoundEngine',
  'classification_loss',
  'classification_sampled_nll',
  'evaluate_clients_fn',
  'evaluate_fn',
  'local_batches',
]
