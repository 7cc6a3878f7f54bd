"""fedcomp: federated learning and model compression for edge devices, in JAX.

Importing fedcomp adds its default XLA flags (fedcomp.utils.xla_flags) to XLA_FLAGS unless
they are set already: JAX reads them when its backend starts, at the first computation.
"""

from fedcomp.utils.xla_flags import set_default_xla_flags

set_default_xla_flags()

from fedcomp.errors import ConfigError, TrainingDivergedError  # noqa: E402
from fedcomp.registry import lookup  # noqa: E402

__all__ = ['ConfigError', 'TrainingDivergedError', 'lookup']
__version__ = '0.1.0'
