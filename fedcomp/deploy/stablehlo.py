"""JAX function -> serialized StableHLO (jax.export) with a symbolic batch dimension.

The artifact is the compiled-from program itself: any JAX (or a StableHLO consumer such as
IREE) can load it without fedcomp or the model's Python code, for the platforms it was
exported for.

References: JAX documentation, "Exporting and serializing staged-out computations"
(jax.export).
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import export

from fedcomp.errors import ConfigError

PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')


def check_platforms(platforms: Sequence[str], key: str = 'platforms') -> tuple[str, ...]:
  """The platforms as a tuple; unknown ones fail in one line."""
  platforms = tuple(platforms)
  unknown = [p for p in platforms if p not in PLATFORMS]
  if not platforms or unknown:
    raise ConfigError(f'config.{key}={list(platforms)}: known platforms are {", ".join(PLATFORMS)}')
  return platforms


def export_stablehlo(
  fn: Callable, input_shape: Sequence[int], platforms: Sequence[str] = ('cpu',)
) -> bytes:
  """Serializes jit(fn) for float32 batches (b, *input_shape), b symbolic.

  Args:
    fn: a pure JAX function of one batch.
    input_shape: the shape of one example.
    platforms: the platforms the artifact runs on (lowered for each).

  Returns:
    The serialized jax.export.Exported.
  """
  (batch,) = export.symbolic_shape('b')
  spec = jax.ShapeDtypeStruct((batch, *[int(d) for d in input_shape]), jnp.float32)
  exported = export.export(jax.jit(fn), platforms=check_platforms(platforms))(spec)
  return bytes(exported.serialize())


def load_stablehlo(blob: bytes) -> Callable:
  """The callable of a serialized export: f(x) runs it (jit-compiled on first call)."""
  return export.deserialize(bytearray(blob)).call
