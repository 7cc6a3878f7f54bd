"""Dream Distillation metadata (k-means, principal directions, federated merge, target
sampling, files) against numpy hand computations on tiny data sets."""

import json
import os

import jax
import numpy as np

from fedcomp.compression.distillation import metadata

kmeans = jax.jit(metadata.kmeans, static_argnames=('k', 'iters'))
principal_directions = jax.jit(metadata.principal_directions, static_argnames=('r',))
class_metadata = jax.jit(
  metadata.class_metadata, static_argnames=('num_classes', 'k', 'r', 'iters', 'class_batch')
)
merge = jax.jit(metadata.merge, static_argnames=('k', 'r', 'iters', 'class_batch'))
sample_targets = jax.jit(metadata.sample_targets, static_argnames=('n', 'classes'))


def orthonormal(d, seed):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
  return q.T  # rows


def eig_desc(cov):
  """numpy's eigenpairs by decreasing eigenvalue: (components rows, values)."""
  values, vectors = np.linalg.eigh(cov)
  return vectors[:, ::-1].T, values[::-1]


def assert_same_directions(got, want, atol=1e-4):
  """Rows equal up to sign."""
  got, want = np.asarray(got), np.asarray(want)
  np.testing.assert_allclose(np.abs(np.sum(got * want, axis=-1)), 1.0, atol=atol)


def test_kmeans_recovers_separated_blobs_ignores_padding_and_computes_weighted_means():
  centers = np.array([[0.0, 0.0], [6.0, 5.0], [-5.0, 5.0]])
  offsets = np.array([[0.1, 0.0], [0.0, 0.2], [-0.3, 0.1]])
  sizes = (2, 4, 6)  # ± pairs of offsets: every blob's mean is its center
  blobs = [c + s * offsets[i % 3] for c, n in zip(centers, sizes) for i in range(n // 2)
           for s in (1, -1)]  # fmt: skip
  x = np.array(blobs + [[100.0, 100.0], [-80.0, 40.0]], np.float32)  # two padding rows
  w = np.array([1.0] * 12 + [0.0, 0.0], np.float32)
  order = np.lexsort(centers.T[::-1])
  for seed in range(3):
    cent, counts, assign = kmeans(x, w, 3, jax.random.key(seed), 10)
    cent, counts = np.asarray(cent), np.asarray(counts)
    got = np.lexsort(cent.T[::-1])
    np.testing.assert_allclose(cent[got], centers[order], atol=1e-5)
    np.testing.assert_allclose(counts[got], np.array(sizes, float)[order])
    np.testing.assert_array_equal(np.asarray(assign)[:12], np.argmin(
      ((x[:12, None] - cent[None]) ** 2).sum(-1), axis=1))  # fmt: skip

  # k = 1 with weights: the weighted mean.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(7, 3)).astype(np.float32)
  w = np.array([0.5, 0.0, 2.0, 1.0, 0.0, 3.0, 0.25], np.float32)
  cent, counts, _ = kmeans(x, w, 1, jax.random.key(0), 3)
  np.testing.assert_allclose(cent[0], (w[:, None] * x).sum(0) / w.sum(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(counts, [w.sum()], rtol=1e-6)


def test_kmeans_with_fewer_weighted_rows_than_clusters_is_deterministic_with_empty_extras():
  x = np.arange(12, dtype=np.float32).reshape(6, 2) ** 2
  w = np.array([0.0, 2.0, 0.0, 0.0, 3.0, 0.0], np.float32)
  cent, counts, _ = kmeans(x, w, 4, jax.random.key(1), 5)
  cent, counts = np.asarray(cent), np.asarray(counts)
  np.testing.assert_allclose(np.sort(counts), [0.0, 0.0, 2.0, 3.0])
  np.testing.assert_allclose(cent[counts == 2.0][0], x[1])
  np.testing.assert_allclose(cent[counts == 3.0][0], x[4])
  for c in cent[counts == 0]:  # copies of occupied centroids, never of padding rows
    assert any(np.allclose(c, x[i]) for i in (1, 4))
  again = kmeans(x, w, 4, jax.random.key(1), 5)
  np.testing.assert_array_equal(np.asarray(again[0]), cent)


def test_principal_directions_recover_known_directions_and_match_numpy():
  q = orthonormal(4, 0)
  var = np.array([4.0, 1.0, 0.25, 0.0625])
  # ±2√λ_m q_m, 8 rows of weight 1: Σ w z zᵀ / Σ w = Σ_m λ_m q_m q_mᵀ exactly.
  a = 2.0 * np.sqrt(var)[:, None] * q
  z = np.concatenate([a, -a]).astype(np.float32)
  comps, values = principal_directions(z, np.ones(8, np.float32), 2)
  assert_same_directions(comps, q[:2])
  np.testing.assert_allclose(values, var[:2], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(comps) @ np.asarray(comps).T, np.eye(2), atol=1e-6)

  # Weighted, against np.cov (rows centred to weighted mean 0 so np.cov's centring is moot).
  rng = np.random.default_rng(1)
  z = rng.normal(size=(30, 4)) * np.array([3.0, 1.5, 0.7, 0.2])
  w = rng.uniform(0.0, 2.0, size=30)
  w[::7] = 0.0
  z = (z - (w[:, None] * z).sum(0) / w.sum()).astype(np.float32)
  comps, values = principal_directions(z, w.astype(np.float32), 4)
  want_c, want_v = eig_desc(np.cov(z.T.astype(np.float64), aweights=w, bias=True))
  assert_same_directions(comps, want_c)
  np.testing.assert_allclose(values, want_v, rtol=1e-4, atol=1e-6)

  _, values = principal_directions(z, np.zeros(30, np.float32), 3)
  np.testing.assert_array_equal(values, np.zeros(3))


def labelled_data(n, seed):
  """(x, y): 3 classes of 3-D points with different means and anisotropic covariances."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 3, size=n)
  means = np.array([[1.0, -2.0, 0.5], [-3.0, 1.0, 2.0], [0.0, 4.0, -1.0]])
  x = np.stack([means[c] + (rng.normal(size=3) * [2.0, 1.0, 0.4]) @ orthonormal(3, c)
                for c in y])  # fmt: skip
  return x.astype(np.float32), y.astype(np.int32)


def numpy_class_stats(x, y, c):
  """Mean, count and (components, variances) of the biased covariance of class c's rows."""
  rows = x[y == c].astype(np.float64)
  return rows.mean(0), len(rows), eig_desc(np.cov(rows.T, bias=True))


def test_class_metadata_with_one_centroid_is_numpy_class_means_and_covariances():
  x, y = labelled_data(40, 0)
  x = np.concatenate([x, np.full((4, 3), 50.0, np.float32)])  # padding rows, label 0
  y = np.concatenate([y, np.zeros(4, np.int32)])
  w = np.concatenate([np.ones(40), np.zeros(4)]).astype(np.float32)
  for class_batch in (None, 2):
    meta = class_metadata(x, y, w, 4, 1, 3, jax.random.key(0), 3, class_batch)
    assert meta.centroids.shape == (4, 1, 3) and meta.components.shape == (4, 3, 3)
    for c in range(3):
      mean, count, (comps, var) = numpy_class_stats(x[:40], y[:40], c)
      np.testing.assert_allclose(meta.centroids[c, 0], mean, atol=1e-5)
      np.testing.assert_allclose(meta.counts[c], [count])
      np.testing.assert_allclose(meta.total[c], count)
      assert_same_directions(meta.components[c], comps)
      np.testing.assert_allclose(meta.variances[c], var, rtol=1e-4, atol=1e-6)
    # Class 3 is absent.
    np.testing.assert_array_equal(meta.total[3], 0.0)
    np.testing.assert_array_equal(meta.counts[3], [0.0])
    np.testing.assert_array_equal(meta.centroids[3], np.zeros((1, 3)))
    np.testing.assert_array_equal(meta.variances[3], np.zeros(3))


def test_merged_client_metadata_equals_central_metadata_with_one_centroid_and_full_rank():
  """3 clients hold disjoint parts of one data set (client 0: classes 0 and 1; client 1: all
  three; client 2: classes 1 and 2, none of class 0), each padded to 40 rows with weight 0,
  plus a spare slot with no examples. Each computes class_metadata with k=1, r=D=3 (vmapped
  over clients); merge(stacked, k=1, r=3) equals the numpy class statistics of the pooled
  data and class_metadata on it: centroids, counts, totals and variances to ~1e-4,
  components up to sign."""
  x, y = labelled_data(90, 1)
  rng = np.random.default_rng(2)
  allowed = {0: (0, 1), 1: (0, 1, 2), 2: (1, 2)}  # class -> clients holding some of it
  client = np.array([rng.choice(allowed[c]) for c in y])
  for i, classes in enumerate([(0, 1), (0, 1, 2), (1, 2)]):
    assert set(y[client == i].tolist()) == set(classes)
  xs, ys, ws = [], [], []
  for i in range(4):
    rows = client == i
    pad = 40 - rows.sum()
    xs.append(np.concatenate([x[rows], np.full((pad, 3), 9.0, np.float32)]))
    ys.append(np.concatenate([y[rows], np.full(pad, i % 3, np.int32)]))
    ws.append(np.concatenate([np.ones(rows.sum()), np.zeros(pad)]).astype(np.float32))
  keys = jax.random.split(jax.random.key(0), 4)
  local = jax.jit(
    jax.vmap(lambda x, y, w, k: metadata.class_metadata(x, y, w, 3, 1, 3, k, 3))
  )(np.stack(xs), np.stack(ys), np.stack(ws), keys)  # fmt: skip
  assert local.total.shape == (4, 3) and float(local.total[2, 0]) == 0.0
  merged = merge(local, 1, 3, jax.random.key(1), 3)
  pooled = class_metadata(x, y, np.ones(90, np.float32), 3, 1, 3, jax.random.key(2), 3)
  for c in range(3):
    mean, count, (comps, var) = numpy_class_stats(x, y, c)
    for meta in (merged, pooled):
      np.testing.assert_allclose(meta.centroids[c, 0], mean, atol=1e-4)
      np.testing.assert_allclose(meta.counts[c], [count])
      np.testing.assert_allclose(meta.total[c], count)
      assert_same_directions(meta.components[c], comps)
      np.testing.assert_allclose(meta.variances[c], var, rtol=1e-4, atol=1e-5)


def test_merge_with_low_rank_factors_and_two_centroids_follows_the_pooled_covariance_formula():
  q = orthonormal(3, 5)
  stacked = metadata.Metadata(
    centroids=np.array([[[[0.0, 0, 0], [10, 0, 0]]], [[[0.5, 0, 0], [10, 1, 0]]]], np.float32),
    counts=np.array([[[3.0, 1.0]], [[2.0, 2.0]]], np.float32),
    components=np.array([[q[:2]], [q[1:]]], np.float32),
    variances=np.array([[[2.0, 0.5]], [[1.0, 0.25]]], np.float32),
    total=np.array([[4.0], [4.0]], np.float32),
  )
  merged = merge(stacked, 2, 2, jax.random.key(0), 5)
  cent, counts = np.asarray(merged.centroids[0]), np.asarray(merged.counts[0])
  order = np.argsort(cent[:, 0])
  # Hand computation: groups {client 0 j=0, client 1 j=0} and {client 0 j=1, client 1 j=1}.
  m0 = (3 * np.array([0.0, 0, 0]) + 2 * np.array([0.5, 0, 0])) / 5
  m1 = (1 * np.array([10.0, 0, 0]) + 2 * np.array([10.0, 1, 0])) / 3
  np.testing.assert_allclose(cent[order], [m0, m1], atol=1e-5)
  np.testing.assert_allclose(counts[order], [5.0, 3.0])
  within = 4 * (2.0 * np.outer(q[0], q[0]) + 0.5 * np.outer(q[1], q[1]))
  within += 4 * (1.0 * np.outer(q[1], q[1]) + 0.25 * np.outer(q[2], q[2]))
  assigned = [(3, [0.0, 0, 0], m0), (2, [0.5, 0, 0], m0), (1, [10.0, 0, 0], m1),
              (2, [10.0, 1, 0], m1)]  # fmt: skip
  between = sum(n * np.outer(np.subtract(mu, m), np.subtract(mu, m)) for n, mu, m in assigned)
  comps, var = eig_desc((within + between) / 8)
  assert_same_directions(merged.components[0], comps[:2])
  np.testing.assert_allclose(merged.variances[0], var[:2], rtol=1e-5)
  np.testing.assert_allclose(merged.total, [8.0])


def hand_metadata():
  q = orthonormal(3, 3)
  return (
    metadata.Metadata(
      centroids=np.array(
        [[[1, 2, 3], [100, 100, 100]], [[0, 0, 0], [0, 0, 0]], [[-1, 0, 1], [5, 5, 5]]], np.float32
      ),  # fmt: skip
      counts=np.array([[4, 0], [0, 0], [1, 3]], np.float32),
      components=np.stack([q[:2], q[:2], q[1:]]).astype(np.float32),
      variances=np.array([[4.0, 1.0], [0.0, 0.0], [2.0, 0.5]], np.float32),
      total=np.array([4, 0, 4], np.float32),
    ),
    q,
  )


def test_sample_targets_draws_present_classes_clusters_by_count_and_the_component_covariance():
  meta, q = hand_metadata()
  targets, labels = sample_targets(meta, jax.random.key(0), 4000, spread=0.0)
  targets, labels = np.asarray(targets), np.asarray(labels)
  assert labels.dtype == np.int32 and set(labels.tolist()) == {0, 2}  # class 1 is absent
  assert abs((labels == 0).mean() - 0.5) < 0.05
  assert np.all(targets[labels == 0] == [1, 2, 3])  # the count-0 cluster is never drawn
  two = targets[labels == 2]
  is_second = np.all(two == [5, 5, 5], axis=1)
  assert np.all(is_second | np.all(two == [-1, 0, 1], axis=1))
  assert abs(is_second.mean() - 0.75) < 0.05  # counts 1 : 3

  _, labels = sample_targets(meta, jax.random.key(1), 200, classes=(2, 1))
  assert set(np.asarray(labels).tolist()) == {1, 2}  # original ids, requested ones only

  targets, labels = sample_targets(meta, jax.random.key(2), 20000, classes=(0,), spread=1.0)
  targets = np.asarray(targets, np.float64)
  assert np.all(np.asarray(labels) == 0)
  want = q[:2].T @ np.diag([4.0, 1.0]) @ q[:2]
  np.testing.assert_allclose(targets.mean(0), [1, 2, 3], atol=0.06)
  np.testing.assert_allclose(np.cov(targets.T, bias=True), want, atol=0.15)


def test_save_and_load_round_trip_and_report_the_file_size(tmp_path):
  meta, _ = hand_metadata()
  path = os.fspath(tmp_path / 'meta.npz')
  extra = {'layer': 'dense1', 'input_range': [0.0, 1.0]}
  size = metadata.save(path, meta, extra)
  assert isinstance(size, int) and size == os.path.getsize(path) > 0
  loaded, loaded_extra = metadata.load(path)
  for got, want in zip(loaded, meta):
    np.testing.assert_array_equal(got, want)
    assert np.asarray(got).dtype == want.dtype
  assert loaded_extra == json.loads(json.dumps(extra))
