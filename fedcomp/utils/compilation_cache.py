"""JAX's persistent compilation cache for the launchers."""

import os

import jax


def enable() -> None:
  """Keeps compiled programs on disk so re-runs and resumed runs skip compiling.

  JAX_COMPILATION_CACHE_DIR (or jax's own config) wins; the default is
  ~/.cache/fedcomp/jax. Only programs that took over a second to compile are kept.
  """
  if jax.config.jax_compilation_cache_dir:
    return
  default = os.path.join(os.path.expanduser('~'), '.cache', 'fedcomp', 'jax')
  jax.config.update(
    'jax_compilation_cache_dir', os.environ.get('JAX_COMPILATION_CACHE_DIR', default)
  )
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
