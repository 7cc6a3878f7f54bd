"""Tests for fedcomp.data.federated."""

import numpy as np
import pytest

from fedcomp.data import build_federated_data
from fedcomp.data.federated import local_test_sizes
from fedcomp.registry import ConfigError


def _build(ds, name='iid', seed=0, **kw):
  return build_federated_data(ds, name, {'num_clients': 10, **kw}, seed)


def test_packing_covers_train_set(balanced):
  fd = _build(balanced, 'shards', classes_per_client=2, local_test_fraction=None)
  assert fd.num_clients == 10
  assert fd.offsets.dtype == np.int64 and fd.offsets.shape == (11,)
  np.testing.assert_array_equal(fd.client_sizes, [16] * 10)  # 20 each, 0.2 * 20 = 4 test
  np.testing.assert_array_equal(fd.test_sizes, [4] * 10)
  ids = np.concatenate([fd.x[:, 0], fd.test['x'][:, 0]]).astype(int)
  np.testing.assert_array_equal(np.sort(ids), np.arange(200))  # every example once
  np.testing.assert_array_equal(fd.y, fd.x[:, 1])  # rows keep their labels
  np.testing.assert_array_equal(fd.test['y'], fd.test['x'][:, 1])
  for c in range(10):  # a client's local test data shares its classes
    train = set(fd.y[fd.offsets[c] : fd.offsets[c + 1]])
    test = set(fd.test['y'][fd.test_offsets[c] : fd.test_offsets[c + 1]])
    assert len(train) == 2 and test <= train
  assert fd.global_test['x'].shape == (5, 2) and fd.feature_shape == (2,)
  assert fd.max_client_size == 16 and fd.y.dtype == np.int32


def test_deterministic(balanced):
  a, b = _build(balanced, 'dirichlet', seed=5), _build(balanced, 'dirichlet', seed=5)
  np.testing.assert_array_equal(a.x, b.x)
  np.testing.assert_array_equal(a.test_offsets, b.test_offsets)
  assert not np.array_equal(a.x, _build(balanced, 'dirichlet', seed=6).x)


def test_local_test_sizes():
  sizes = np.array([0, 1, 2, 3, 10, 12, 100])
  np.testing.assert_array_equal(local_test_sizes(sizes, 0.2), [0, 0, 1, 1, 2, 2, 20])
  np.testing.assert_array_equal(local_test_sizes(sizes, 0.0), [0] * 7)
  np.testing.assert_array_equal(local_test_sizes(sizes, 0.9), [0, 0, 1, 2, 9, 11, 90])


def test_gather_pads_and_masks(balanced):
  fd = _build(balanced, 'quantity', sigma=1.0)
  ids = np.array([3, 10, 0, 12])  # 10 and 12 are padding clients
  pad = fd.max_client_size + 2
  g, mask = fd.gather(ids, pad)
  x, y = g['x'], g['y']
  assert x.shape == (4, pad, 2) and y.shape == (4, pad) and mask.shape == (4, pad)
  assert x.dtype == np.float32 and y.dtype == np.int32 and mask.dtype == bool
  np.testing.assert_array_equal(mask.sum(1), [fd.client_sizes[3], 0, fd.client_sizes[0], 0])
  for k, c in enumerate(ids):
    if c < fd.num_clients:
      rows = slice(fd.offsets[c], fd.offsets[c + 1])
      np.testing.assert_array_equal(x[k][mask[k]], fd.x[rows])
      np.testing.assert_array_equal(y[k][mask[k]], fd.y[rows])
  assert not x[~mask].any() and not y[~mask].any()
  tg, tmask = fd.gather(ids, fd.max_test_size, split='test')
  tx = tg['x']
  np.testing.assert_array_equal(tmask.sum(1), [fd.test_sizes[3], 0, fd.test_sizes[0], 0])
  np.testing.assert_array_equal(
    tx[0][tmask[0]], fd.test['x'][fd.test_offsets[3] : fd.test_offsets[4]]
  )


def test_gather_errors_and_empty_test(balanced):
  fd = _build(balanced, local_test_fraction=0.0)
  assert fd.test_sizes.sum() == 0
  g, mask = fd.gather(np.array([0, 11]), 4, split='test')
  x = g['x']
  assert x.shape == (2, 4, 2) and not mask.any()
  with pytest.raises(ValueError, match='pad_to=3 < size 20'):
    fd.gather(np.array([0]), 3)
  with pytest.raises(ValueError, match='split='):
    fd.gather(np.array([0]), 30, split='val')


def test_bad_config(balanced):
  cases = [
    ({'num_clients': 0}, r'^config\.partition\.num_clients=0 must be >= 1$'),
    ({'num_clients': 2.5}, r'^config\.partition\.num_clients=2\.5 must be an integer$'),
    ({}, r'^config\.partition\.num_clients is not set$'),
    ({'num_clients': 3, 'local_test_fraction': 1.0}, r'^config\.partition\.local_test_fraction'),
    ({'num_clients': 3, 'alpha': 0.1}, r"^config\.partition\.alpha is set but partition 'iid'"),
    ({'num_clients': 300}, r"^config\.partition: client 200 has no examples; 'iid'"),
  ]
  for kwargs, pattern in cases:
    with pytest.raises(ConfigError, match=pattern) as e:
      build_federated_data(balanced, 'iid', kwargs, 0)
    assert '\n' not in str(e.value)
  with pytest.raises(ConfigError, match=r"^config\.partition_name='nope' is unknown; known: "):
    build_federated_data(balanced, 'nope', {'num_clients': 3}, 0)
  # None-valued kwargs of other partitions are dropped.
  fd = build_federated_data(balanced, 'iid', {'num_clients': 3, 'alpha': None}, 0)
  assert fd.num_clients == 3


def test_any_per_example_arrays_travel_with_their_examples(balanced):
  """Data beyond x and y (soft targets, feature slices) is partitioned and gathered too."""
  from fedcomp.data import Dataset

  soft = np.stack([balanced.train_x[:, 0], -balanced.train_x[:, 0]], 1)
  ds = Dataset(
    {**balanced.train, 'soft': soft},
    {**balanced.test, 'soft': soft[:5]},
    balanced.num_classes,
  )
  fd = _build(ds, 'dirichlet', alpha=0.5)
  assert fd.keys == ('soft', 'x', 'y')
  np.testing.assert_array_equal(fd.train['soft'][:, 0], fd.x[:, 0])  # rows stay together
  g, mask = fd.gather(np.array([1, 3]), fd.max_client_size)
  np.testing.assert_array_equal(g['soft'][..., 1][mask], -g['x'][..., 0][mask])


def test_unlabelled_data_and_label_checks(balanced):
  from fedcomp.data import Dataset

  unlabelled = Dataset({'x': balanced.train_x}, {'x': balanced.test_x})
  fd = _build(unlabelled, 'iid')
  assert fd.y is None and fd.num_classes is None
  with pytest.raises(ConfigError, match='needs labelled data'):
    _build(unlabelled, 'shards', classes_per_client=1)
  with pytest.raises(ConfigError, match=r'train labels span \[0, 9\], outside \[0, 5\)'):
    Dataset.from_arrays(balanced.train_x, balanced.train_y, balanced.test_x, balanced.test_y, 5)
