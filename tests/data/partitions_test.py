"""Tests for fedcomp.data.partitions."""

import numpy as np
import pytest

from fedcomp.data import PARTITIONS, earth_movers_distance
from fedcomp.data.partitions import shards
from fedcomp.data.partitions._util import sizes_from_weights
from fedcomp.registry import ConfigError

KWARGS = {
  'iid': {},
  'shards': {'classes_per_client': 2},
  'dirichlet': {'alpha': 0.5},
  'quantity': {'sigma': 1.0},
}


def _classes(ds, parts):
  return [len(np.unique(ds.train_y[p])) for p in parts]


def _mean_emd(ds, parts):
  hist = np.stack([np.bincount(ds.train_y[p], minlength=ds.num_classes) for p in parts])
  return earth_movers_distance(hist).mean()


@pytest.mark.parametrize('name', sorted(KWARGS))
def test_covers_every_example_once_and_is_deterministic(name, balanced):
  fn = PARTITIONS[name]
  parts = fn(balanced, 10, np.random.default_rng(3), **KWARGS[name])
  assert len(parts) == 10
  assert all(p.dtype == np.int64 for p in parts)
  allidx = np.concatenate(parts)
  np.testing.assert_array_equal(np.sort(allidx), np.arange(200))
  again = fn(balanced, 10, np.random.default_rng(3), **KWARGS[name])
  for a, b in zip(parts, again, strict=True):
    np.testing.assert_array_equal(a, b)
  other = fn(balanced, 10, np.random.default_rng(4), **KWARGS[name])
  assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_sizes_equal_as_possible(make_dataset):
  ds = make_dataset((7,) * 3)  # 21 examples
  sizes = [len(p) for p in PARTITIONS['iid'](ds, 4, np.random.default_rng(0))]
  assert sorted(sizes) == [5, 5, 5, 6]


@pytest.mark.parametrize('k', [1, 2])
def test_shards_zhao_k_classes_per_client(k, balanced):
  for seed in range(5):
    parts = PARTITIONS['shards'](balanced, 10, np.random.default_rng(seed), classes_per_client=k)
    assert _classes(balanced, parts) == [k] * 10
    assert [len(p) for p in parts] == [20] * 10


def test_shards_one_class_per_client_on_unbalanced_classes(make_dataset):
  ds = make_dataset((10, 12, 14, 16, 18, 20, 22, 24, 26, 28))
  parts = PARTITIONS['shards'](ds, 10, np.random.default_rng(0), classes_per_client=1)
  assert _classes(ds, parts) == [1] * 10
  assert sorted(len(p) for p in parts) == list(range(10, 30, 2))
  # McMahan's equal-size cut straddles class boundaries instead.
  parts = PARTITIONS['shards'](
    ds, 10, np.random.default_rng(0), classes_per_client=1, equal_size=True
  )
  assert sorted(len(p) for p in parts) == [19] * 10
  assert max(_classes(ds, parts)) > 1


def test_shards_many_clients_get_distinct_classes(make_dataset):
  ds = make_dataset((60,) * 10)
  parts = PARTITIONS['shards'](ds, 50, np.random.default_rng(1), classes_per_client=3)
  assert _classes(ds, parts) == [3] * 50


def test_make_distinct_fixes_duplicates():
  labels = np.repeat(np.arange(4), 2)  # 8 shards, 2 per label
  assign = np.array([[0, 1], [2, 3], [4, 5], [6, 7]])  # every client has 2 of one label
  fixed = shards.make_distinct(assign, labels, np.random.default_rng(0))
  np.testing.assert_array_equal(np.sort(fixed.ravel()), np.arange(8))
  assert all(len(set(labels[row])) == 2 for row in fixed)


def test_shards_too_many_shards(balanced):
  with pytest.raises(ConfigError, match=r'config\.partition\.classes_per_client=3') as e:
    PARTITIONS['shards'](balanced, 100, np.random.default_rng(0), classes_per_client=3)
  assert '\n' not in str(e.value)


def test_dirichlet_small_alpha_skews_more(make_dataset):
  ds = make_dataset((100,) * 10)
  emd = {
    a: np.mean(
      [
        _mean_emd(ds, PARTITIONS['dirichlet'](ds, 10, np.random.default_rng(s), alpha=a))
        for s in range(3)
      ]
    )
    for a in (0.05, 1.0, 100.0)
  }
  assert emd[0.05] > emd[1.0] > emd[100.0]
  assert emd[0.05] > 1.2 and emd[100.0] < 0.3


def test_dirichlet_splits_each_class_over_clients(make_dataset):
  """The convention: class c's examples go to clients in proportions p_c ~ Dir(α·1_M).

  Then client sizes vary, with Var(size) = C·n²·Var(p) and Var(p) = (1/M)(1 − 1/M)/(Mα + 1)
  (C classes of n examples, M clients). The other convention found in the literature (each
  client's label mix ~ Dir(α·1_C), clients of equal size) gives every client the same size.
  """
  classes, n, m, alpha = 10, 400, 40, 0.5
  ds = make_dataset((n,) * classes)
  want = np.sqrt(classes * n**2 * (1 / m) * (1 - 1 / m) / (m * alpha + 1))
  stds = []
  for seed in range(5):
    parts = PARTITIONS['dirichlet'](ds, m, np.random.default_rng(seed), alpha=alpha, min_size=0)
    stds.append(np.std([len(p) for p in parts]))
  assert 0.75 * want < np.mean(stds) < 1.25 * want  # about 77 examples; 0 for equal sizes
  # Every class is spread over the clients as one Dirichlet draw: its share at a client
  # averages 1/M over classes and seeds.
  hist = np.stack([np.bincount(ds.train_y[p], minlength=classes) for p in parts]) / n
  np.testing.assert_allclose(hist.sum(0), 1.0)


def test_dirichlet_min_size(balanced):
  parts = PARTITIONS['dirichlet'](balanced, 10, np.random.default_rng(0), alpha=0.3, min_size=5)
  assert min(len(p) for p in parts) >= 5
  with pytest.raises(ConfigError, match=r'^config\.partition\.min_size=20:') as e:
    PARTITIONS['dirichlet'](balanced, 10, np.random.default_rng(0), alpha=0.01, min_size=20)
  assert '\n' not in str(e.value)
  with pytest.raises(ConfigError, match=r'config\.partition\.alpha=0\.0 must be in'):
    PARTITIONS['dirichlet'](balanced, 10, np.random.default_rng(0), alpha=0.0)


def test_quantity_sizes_vary_and_labels_iid(make_dataset):
  ds = make_dataset((100,) * 10)
  parts = PARTITIONS['quantity'](ds, 20, np.random.default_rng(0), sigma=1.5)
  sizes = np.array([len(p) for p in parts])
  assert sizes.min() >= 1 and sizes.sum() == 1000
  assert sizes.max() > 4 * sizes.min()
  equal = PARTITIONS['quantity'](ds, 20, np.random.default_rng(0), sigma=0.0)
  assert {len(p) for p in equal} == {50}
  with pytest.raises(ConfigError, match=r'config\.partition\.num_clients=2000 exceeds'):
    PARTITIONS['quantity'](ds, 2000, np.random.default_rng(0))


def test_quantity_labels_follow_the_population(make_dataset):
  """Sizes differ but every client's labels are a uniform sample: a large client's label
  histogram is close to the population's (L1 distance of a 200-example sample of 10 equal
  classes: about 0.18), where a label-skewed partition would give about 1.6."""
  ds = make_dataset((1000,) * 10)
  parts = PARTITIONS['quantity'](ds, 20, np.random.default_rng(1), sigma=1.0)
  large = [p for p in parts if len(p) >= 200]
  assert len(large) >= 5
  emd = [np.abs(np.bincount(ds.train_y[p], minlength=10) / len(p) - 0.1).sum() for p in large]
  assert max(emd) < 0.45 and np.mean(emd) < 0.3
  # ... and not the class-sorted order: the first client's examples are not all class 0.
  assert len(set(ds.train_y[parts[0]])) == 10


def test_sizes_from_weights():
  np.testing.assert_array_equal(sizes_from_weights(np.array([1.0, 1.0, 2.0]), 10), [3, 3, 4])
  np.testing.assert_array_equal(sizes_from_weights(np.array([1e-9, 1.0]), 5), [1, 4])


def test_natural(make_dataset, balanced):
  groups = np.array([2, 0, 2, 1] * 50, np.int32)
  ds = make_dataset(groups=groups)
  parts = PARTITIONS['natural'](ds, 3, np.random.default_rng(0))
  for c, g in enumerate([0, 1, 2]):
    np.testing.assert_array_equal(parts[c], np.flatnonzero(groups == g))
  with pytest.raises(ConfigError, match=r'^config\.partition\.num_clients=4 but the data has 3'):
    PARTITIONS['natural'](ds, 4, np.random.default_rng(0))
  with pytest.raises(ConfigError, match=r"^config\.partition_name='natural' needs"):
    PARTITIONS['natural'](balanced, 3, np.random.default_rng(0))
