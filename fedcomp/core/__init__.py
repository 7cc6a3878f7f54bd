"""The core: client-map primitive, reducers, local steps, optimizer step, round, trainer."""

from fedcomp.core.algorithm import AlgorithmContext, ClientOutput, FederatedAlgorithm
from fedcomp.core.client_map import AXIS, STRATEGIES, ClientMap, cohort_layout
from fedcomp.core.evaluation import make_client_evaluator, make_evaluator
from fedcomp.core.federated_round import FederatedRound
from fedcomp.core.local_steps import local_batches, run_local_steps
from fedcomp.core.optimizer_step import OptimizerStep, train_step
from fedcomp.core.reducers import AGGREGATORS, Reducer
from fedcomp.core.run_dir import RunDir

__all__ = [
  'AGGREGATORS',
  'AXIS',
  'STRATEGIES',
  'AlgorithmContext',
  'ClientMap',
  'ClientOutput',
  'FederatedAlgorithm',
  'FederatedRound',
  'OptimizerStep',
  'Reducer',
  'RunDir',
  'cohort_layout',
  'local_batches',
  'make_client_evaluator',
  'make_evaluator',
  'run_local_steps',
  'train_step',
]
