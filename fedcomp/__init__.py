"""fedcomp: federated learning and model compression for edge devices, in JAX."""

from fedcomp.errors import ConfigError, TrainingDivergedError
from fedcomp.registry import lookup

__all__ = ['ConfigError', 'TrainingDivergedError', 'lookup']
__version__ = '0.1.0'
