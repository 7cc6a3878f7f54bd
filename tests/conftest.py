"""Test setup: 8 fake CPU devices and JAX's persistent compilation cache."""

import os

import pytest

# 8 fake CPU devices, set before anything imports fedcomp (which adds its own default flags)
# and before JAX starts its backend.
if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
  ).strip()

from fedcomp.utils.xla_flags import set_default_xla_flags  # noqa: E402

set_default_xla_flags()
os.environ.setdefault(
  'JAX_COMPILATION_CACHE_DIR',
  os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.jax_cache'),
)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')


@pytest.fixture
def mock_tfds(monkeypatch):
  """tensorflow_datasets with `testing.mock_data` usable through `tfds.data_source`.

  TFDS 4.9.10's mock passes the record keys as `self` to its `_getitems`; this
  patches the mock (not fedcomp) so `__getitems__` works as on real data.
  """
  import tensorflow_datasets as tfds
  from tensorflow_datasets.testing import mocking

  def getitems(record_keys, generator, serialized=False):
    assert not serialized
    return [generator[k] for k in record_keys]

  monkeypatch.setattr(mocking, '_getitems', getitems)
  return tfds
