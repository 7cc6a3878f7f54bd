"""The random throughput workloads reproduce the peers' client sizes."""

import numpy as np
import pytest

from fedcomp.data import build_federated_data, load_source
from fedcomp.errors import ConfigError


def test_sizes_shapes_and_groups():
  d = load_source(
    'random',
    {
      'num_clients': 50,
      'min_examples': 10,
      'max_examples': 400,
      'shape': (4, 4, 1),
      'num_classes': 62,
      'test_examples': 7,
    },
    seed=0,
  )
  sizes = np.bincount(d.groups)
  assert len(sizes) == 50 and sizes.min() >= 10 and sizes.max() <= 400 and sizes.std() > 10
  assert d.train_x.shape == (sizes.sum(), 4, 4, 1) and d.test_x.shape == (7, 4, 4, 1)
  assert d.train_x.min() >= 0 and d.train_x.max() < 1 and d.train_y.max() < 62
  # The same sizes as ../shared/peers/common.py's client_sizes (seeded log-uniform).
  u = np.random.default_rng([0, 1]).uniform(np.log(10), np.log(400), 50)
  np.testing.assert_array_equal(sizes, np.rint(np.exp(u)))
  fd = build_federated_data(d, 'natural', {'num_clients': 50, 'local_test_fraction': 0.0}, seed=0)
  np.testing.assert_array_equal(fd.client_sizes, sizes)


def test_equal_sizes_and_errors():
  d = load_source('random', {'num_clients': 3, 'min_examples': 5, 'max_examples': 5}, seed=0)
  np.testing.assert_array_equal(np.bincount(d.groups), [5, 5, 5])
  with pytest.raises(ConfigError, match=r'config.data.max_examples=2 is below'):
    load_source('random', {'min_examples': 5, 'max_examples': 2}, seed=0)


def test_uint8_storage_is_shared_and_gathered_as_float():
  d = load_source(
    'random',
    {
      'num_clients': 4,
      'min_examples': 3,
      'max_examples': 3,
      'shape': (2, 2, 1),
      'dtype': 'uint8',
      'test_examples': 2,
    },
    seed=0,
  )
  assert d.train_x.dtype == np.uint8
  fd = build_federated_data(d, 'natural', {'num_clients': 4, 'local_test_fraction': 0.0}, seed=0)
  assert fd.x is d.train_x  # no copy of the examples
  assert fd.global_test['x'].dtype == np.float32
  g, mask = fd.gather(np.array([2, 4]), pad_to=4)
  x = g['x']
  assert x.dtype == np.float32 and mask.sum() == 3
  np.testing.assert_allclose(x[0, :3], d.train_x[6:9].astype(np.float32) / 255, rtol=1e-6)
  assert not x[1].any()
