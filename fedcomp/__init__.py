"""fedcomp: federated learning and model compression for edge devices, in JAX."""

from fedcomp.registry import ConfigError, lookup

__all__ = ['ConfigError', 'lookup']
__version__ = '0.1.0'
