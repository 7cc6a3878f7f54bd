"""Test setup: 8 fake CPU devices and JAX's persistent compilation cache."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault(
  'JAX_COMPILATION_CACHE_DIR',
  os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.jax_cache'),
)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
