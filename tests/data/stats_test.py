"""Tests for fedcomp.data.stats."""

import json

import numpy as np

from fedcomp.data import (
  build_federated_data,
  earth_movers_distance,
  label_histograms,
  partition_summary,
)


def test_label_histograms():
  y = np.array([0, 0, 2, 1, 1, 1, 2])
  offsets = np.array([0, 3, 3, 7])  # client 1 is empty
  hist = label_histograms(y, offsets, 3)
  assert hist.dtype == np.int64
  np.testing.assert_array_equal(hist, [[2, 0, 1], [0, 0, 0], [0, 3, 1]])


def test_emd_hand_example():
  hist = np.array([[2, 0], [1, 1]])  # population [3/4, 1/4]
  np.testing.assert_allclose(earth_movers_distance(hist), [0.5, 0.5])
  # Against a uniform population: |1 - .5| + |0 - .5| = 1 and 0.
  np.testing.assert_allclose(earth_movers_distance(hist, np.array([5, 5])), [1.0, 0.0])
  np.testing.assert_allclose(earth_movers_distance(np.array([[0, 3], [3, 0]])), [1.0, 1.0])
  assert np.isnan(earth_movers_distance(np.array([[0, 0], [1, 1]]))[0])


def test_partition_summary(balanced):
  fd = build_federated_data(balanced, 'shards', {'num_clients': 10, 'classes_per_client': 1}, 0)
  summary = json.loads(json.dumps(partition_summary(fd)))
  assert summary['num_clients'] == 10 and summary['client_sizes'] == [16] * 10
  assert summary['test_sizes'] == [4] * 10 and summary['num_train'] == 160
  # One class per client against a uniform population: |1 - .1| + 9 * .1 = 1.8.
  np.testing.assert_allclose(summary['emd'], [1.8] * 10)
  assert summary['emd_mean'] == summary['emd_max'] == summary['emd_weighted_mean']
  np.testing.assert_allclose(summary['emd_mean'], 1.8)
  assert summary['classes_per_client_mean'] == 1.0
  assert np.array(summary['histograms']).sum() == 160
