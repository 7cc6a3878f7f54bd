"""The globally shared data strategy: split sizes, no double counting, merging."""

import numpy as np
import pytest

from fedcomp.data import build_federated_data
from fedcomp.data.shared import carve_shared, merge_shared
from fedcomp.data.subset import subsample
from fedcomp.registry import ConfigError


def test_carve_sizes_balance_and_disjointness(balanced):
  rest, g = carve_shared(balanced, beta=0.1, seed=0)  # |G| = 0.1 * 200 = 20
  gx, gy = g['x'], g['y']
  assert len(gy) == 20 and len(rest.train_y) == 180
  np.testing.assert_array_equal(np.bincount(gy, minlength=10), [2] * 10)  # class-balanced
  ids_g = set(gx[:, 0].astype(int))
  ids_rest = set(rest.train_x[:, 0].astype(int))
  assert not ids_g & ids_rest and len(ids_g | ids_rest) == 200  # a split, nothing lost
  np.testing.assert_array_equal(gy, gx[:, 1])  # labels follow their rows


def test_carve_quota_when_classes_run_short(make_dataset):
  ds = make_dataset(per_class=(1, 10, 10))
  gy = carve_shared(ds, beta=0.5, seed=0)[1]['y']  # |G| = round(0.5 * 21) = 10
  assert len(gy) == 10
  counts = np.bincount(gy, minlength=3)
  assert counts[0] == 1 and abs(counts[1] - counts[2]) <= 1


def test_merge_gives_each_client_its_alpha_share(balanced):
  rest, g = carve_shared(balanced, beta=0.1, seed=0)
  gx = g['x']
  fd = build_federated_data(rest, 'shards', {'num_clients': 10, 'classes_per_client': 1}, 0)
  merged = merge_shared(fd, g, alpha=0.5, seed=0)  # 10 of G's 20 examples each
  np.testing.assert_array_equal(merged.client_sizes, fd.client_sizes + 10)
  g_ids = set(gx[:, 0].astype(int))
  seen_own = []
  for c in range(10):
    own = merged.x[merged.offsets[c] : merged.offsets[c] + fd.client_sizes[c]]
    extra = merged.x[merged.offsets[c] + fd.client_sizes[c] : merged.offsets[c + 1]]
    np.testing.assert_array_equal(own, fd.x[fd.offsets[c] : fd.offsets[c + 1]])
    assert set(extra[:, 0].astype(int)) <= g_ids and len(set(extra[:, 0])) == 10  # no repeats
    seen_own += list(own[:, 0].astype(int))
  # G's examples are not double-counted: no client holds one as its own data.
  assert not g_ids & set(seen_own)
  np.testing.assert_array_equal(merged.test['x'], fd.test['x'])  # local test splits unchanged
  # Different clients get different random shares.
  firsts = [tuple(merged.x[merged.offsets[c + 1] - 10 : merged.offsets[c + 1], 0]) for c in (0, 1)]
  assert firsts[0] != firsts[1]
  assert merge_shared(fd, g, alpha=0.0, seed=0) is fd


@pytest.mark.parametrize(
  'fn,match',
  [
    (lambda ds: carve_shared(ds, beta=1.0, seed=0), r'shared_data\.beta=1\.0 must be in \(0, 1\)'),
    (lambda ds: carve_shared(ds, beta=0.001, seed=0), 'gives an empty G'),
    (lambda ds: subsample(ds, 0, seed=0), r'train_examples=0 must be an int in \[1, 200\]'),
  ],
)
def test_bad_values(balanced, fn, match):
  with pytest.raises(ConfigError, match=match):
    fn(balanced)


def test_subsample_is_a_seeded_subset(balanced):
  a, b = subsample(balanced, 50, seed=1), subsample(balanced, 50, seed=1)
  np.testing.assert_array_equal(a.train_x, b.train_x)
  assert len(a.train_y) == 50 and len(set(a.train_x[:, 0])) == 50
  np.testing.assert_array_equal(a.train_y, a.train_x[:, 1])
  assert subsample(balanced, 200, seed=1) is balanced
