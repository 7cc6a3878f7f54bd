"""Dream Distillation metadata: per-class k-means centroids of a layer's activations and the
principal directions of the activations around them, computed centrally or per client and
merged on the server, and activation targets sampled from it.

Per class c, on the (weighted) rows of that class:
  - k-means (weighted Lloyd's, weighted k-means++ init) gives centroids μ_cj and counts n_cj;
  - residuals z = x − μ_c,a(x) to the assigned centroid give the within-class covariance
    Σ_c = Σ_x w_x z zᵀ / Σ_x w_x, released as its top r eigenpairs (λ_cm, v_cm);
  - a target of class c is t = μ_cj + spread · Σ_m ε_m √λ_cm v_cm, ε ~ N(0, 1), with j drawn
    with probability n_cj / n_c.
Federated: each client releases its metadata (no data leaves it) and the server pools them
with the law of total covariance (`merge`). Everything is a pure function of arrays with
static shapes (classes, clients and Lloyd iterations are vmapped or lax loops), jittable with
the sizes (num_classes, k, r, iters, n, classes) static.

References: Bhardwaj, Suda, Marculescu 2019, "Dream Distillation: A Data-Independent Model
Compression Framework" (arXiv 1905.07072); Arthur & Vassilvitskii 2007, "k-means++";
Lloyd 1982, "Least squares quantization in PCM".
"""

import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


class Metadata(NamedTuple):
  """Per-class activation metadata (a pytree; stacks over clients with a leading axis).

  centroids: (C, k, D) k-means centroids of each class (zeros for an absent class).
  counts: (C, k) total weight (examples) assigned to each centroid; 0 for an empty cluster.
  components: (C, r, D) orthonormal principal directions of the within-class residuals
    x − (assigned centroid), rows by decreasing variance.
  variances: (C, r) residual variance along each direction (>= 0).
  total: (C,) total weight (examples) of each class.
  """

  centroids: jax.Array
  counts: jax.Array
  components: jax.Array
  variances: jax.Array
  total: jax.Array


def _draw(key: jax.Array, p: jax.Array, axis: int = -1) -> jax.Array:
  """An index drawn with probability ∝ p >= 0 along `axis` (uniform where p sums to 0)."""
  positive = p > 0
  logits = jnp.where(positive, jnp.log(jnp.where(positive, p, 1.0)), -jnp.inf)
  logits = jnp.where(jnp.any(positive, axis=axis, keepdims=True), logits, 0.0)
  return jax.random.categorical(key, logits, axis=axis)


def _sq_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
  """(N, k) squared Euclidean distances."""
  cross = jnp.matmul(x, centroids.T, precision=_HIGHEST)
  d2 = jnp.sum(x * x, axis=1)[:, None] - 2.0 * cross + jnp.sum(centroids**2, axis=1)[None]
  return jnp.maximum(d2, 0.0)


def kmeans(
  x: jax.Array, weights: jax.Array, k: int, key: jax.Array, iters: int = 20
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Weighted k-means: weighted k-means++ init (D² sampling), then `iters` Lloyd steps.

  Each Lloyd step assigns every row to its nearest centroid (ties to the lowest index) and
  moves each centroid to the weighted mean of its rows; an empty cluster keeps its previous
  centroid and has count 0. The returned centroids are the means of the returned assignment,
  so residuals to the assigned centroid have zero weighted mean in every cluster.
  If fewer than k distinct rows have positive weight, the extra clusters start as copies of
  an occupied centroid (a weighted row) and end with count 0; samplers weight clusters by
  count and never pick them. If all weights are 0, centroids are 0 and counts 0.

  Args:
    x: (N, D) rows.
    weights: (N,) weights >= 0 (0: a padding row, ignored).
    k: number of clusters (static).
    key: PRNG key of the init (deterministic for a given key).
    iters: Lloyd steps (static, >= 1).

  Returns:
    centroids (k, D), counts (k,) (sum of the weights assigned), assign (N,) int32 (the
    nearest centroid; padding rows get one too but count nowhere).
  """
  x = jnp.asarray(x, jnp.float32)
  w = jnp.asarray(weights, jnp.float32)
  keys = jax.random.split(key, k)

  first = x[_draw(keys[0], w)]
  centroids = jnp.broadcast_to(first, (k, x.shape[1]))

  def init_step(j, carry):
    centroids, d2 = carry
    p = w * d2
    p = jnp.where(jnp.sum(p) > 0, p, w)  # all weighted rows already chosen: duplicate one
    c = x[_draw(keys[j], p)]
    return centroids.at[j].set(c), jnp.minimum(d2, jnp.sum((x - c) ** 2, axis=1))

  centroids, _ = jax.lax.fori_loop(1, k, init_step, (centroids, jnp.sum((x - first) ** 2, 1)))

  def lloyd_step(_, carry):
    centroids, _, _ = carry
    assign = jnp.argmin(_sq_distances(x, centroids), axis=1).astype(jnp.int32)
    onehot = jax.nn.one_hot(assign, k, dtype=jnp.float32) * w[:, None]
    counts = jnp.sum(onehot, axis=0)
    sums = jnp.matmul(onehot.T, x, precision=_HIGHEST)
    means = sums / jnp.where(counts > 0, counts, 1.0)[:, None]
    return jnp.where(counts[:, None] > 0, means, centroids), counts, assign

  # The first step outside the loop: the carry then derives from x everywhere (under
  # shard_map, zeros made here would not vary over the mesh as the loop's outputs do).
  first_step = lloyd_step(0, (centroids, None, None))
  centroids, counts, assign = jax.lax.fori_loop(1, iters, lloyd_step, first_step)
  centroids = jnp.where(jnp.sum(w) > 0, centroids, 0.0)
  return centroids, counts, assign


def _top_eigen(cov: jax.Array, r: int) -> tuple[jax.Array, jax.Array]:
  """Top r eigenpairs of a symmetric (D, D) matrix: components (r, D) with the largest-|·|
  entry of each positive, variances (r,) clipped at 0, by decreasing variance."""
  if not 0 < r <= cov.shape[0]:
    raise ValueError(f'r={r} principal directions need 0 < r <= D={cov.shape[0]}')
  evals, evecs = jnp.linalg.eigh(0.5 * (cov + cov.T))
  variances = jnp.maximum(evals[::-1][:r], 0.0)
  components = evecs[:, ::-1][:, :r].T
  pivot = jnp.take_along_axis(components, jnp.argmax(jnp.abs(components), 1)[:, None], 1)
  return components * jnp.where(pivot < 0, -1.0, 1.0), variances


def principal_directions(
  residuals: jax.Array, weights: jax.Array, r: int
) -> tuple[jax.Array, jax.Array]:
  """Top r eigenpairs (jnp.linalg.eigh) of the weighted second moment of residuals.

  Args:
    residuals: (N, D) rows z_i (already centred, e.g. minus the assigned centroid).
    weights: (N,) weights w_i >= 0.
    r: number of directions (static, <= D).

  Returns:
    components (r, D) orthonormal rows (sign: largest-magnitude entry positive) and
    variances (r,) >= 0, decreasing, of S = Σ_i w_i z_i z_iᵀ / Σ_i w_i (S = 0 if Σ w = 0).
  """
  z = jnp.asarray(residuals, jnp.float32)
  w = jnp.asarray(weights, jnp.float32)
  total = jnp.sum(w)
  cov = jnp.matmul((z * w[:, None]).T, z, precision=_HIGHEST) / jnp.where(total > 0, total, 1.0)
  return _top_eigen(cov, r)


def _over_classes(fn, args, class_batch: int | None):
  """fn vmapped over the leading (class) axis of args, or lax.map'd class_batch at a time."""
  if class_batch is None:
    return jax.vmap(fn)(*args)
  return jax.lax.map(lambda a: fn(*a), args, batch_size=class_batch)


def class_metadata(
  features: jax.Array,
  labels: jax.Array,
  weights: jax.Array,
  num_classes: int,
  k: int,
  r: int,
  key: jax.Array,
  iters: int = 20,
  class_batch: int | None = None,
) -> Metadata:
  """Metadata of one party's examples: per class, k-means then principal directions.

  Every class sees all N rows with the other classes' weights zeroed (static shapes; cost
  O(C·N·k·D) per Lloyd step and C covariances (D, D) in memory at once unless class_batch).

  Args:
    features: (N, D) activations at the chosen layer.
    labels: (N,) int class ids in [0, num_classes).
    weights: (N,) weights >= 0 (0 for padding rows).
    num_classes, k, r: classes C, centroids per class, principal directions (static).
    key: PRNG key (one k-means++ init per class, from split(key, C)).
    iters: Lloyd steps (static).
    class_batch: None vmaps all classes at once; an int lax.maps that many at a time.

  Returns:
    Metadata with shapes (C, k, D), (C, k), (C, r, D), (C, r), (C,).
  """
  x = jnp.asarray(features, jnp.float32)
  w = jnp.asarray(weights, jnp.float32)

  def one(c, key):
    wc = jnp.where(labels == c, w, 0.0)
    centroids, counts, assign = kmeans(x, wc, k, key, iters)
    components, variances = principal_directions(x - centroids[assign], wc, r)
    return Metadata(centroids, counts, components, variances, jnp.sum(wc))

  classes = jnp.arange(num_classes)
  return _over_classes(one, (classes, jax.random.split(key, num_classes)), class_batch)


def merge(
  stacked: Metadata,
  k: int,
  r: int,
  key: jax.Array,
  iters: int = 20,
  class_batch: int | None = None,
) -> Metadata:
  """The server's merge of per-client metadata into global metadata (no data needed).

  Per class, with n_ij, μ_ij client i's counts and centroids and n_i = Σ_j n_ij its total:
  - centroids: weighted k-means (weights n_ij) of the M·k client centroids; a global
    centroid's count is the sum of the counts assigned to it;
  - principal directions: the top r eigenpairs of the pooled within-class covariance by the
    law of total covariance,
      S = (1/n) Σ_i [ n_i Σ_i + Σ_j n_ij (μ_ij − m_a(ij))(μ_ij − m_a(ij))ᵀ ],  n = Σ_i n_i,
    with client i's residual covariance rebuilt from its released factors,
    Σ_i = Σ_m λ_im v_im v_imᵀ, and m_a(ij) the global centroid μ_ij is assigned to.
  Exact (up to float rounding) with k = 1 per class on the clients and the server, clients
  holding disjoint parts of the data and full-rank client factors (r = D): then m is the
  pooled class mean and S the pooled covariance, so the result equals class_metadata on the
  pooled data. Otherwise an approximation: r < D drops each client's residual variance
  outside its top r directions (S is underestimated there), and k > 1 clusters centroids
  instead of points, so the global partition (and its centroids) can differ from k-means on
  the pooled data. Clients with zero counts (absent classes, spare slots) contribute nothing.

  Args:
    stacked: Metadata with a leading client axis M: (M, C, k', D), ... (any k', r').
    k, r: global centroids and directions per class (static; r <= D).
    key: PRNG key (one k-means++ init per class).
    iters: Lloyd steps (static).
    class_batch: as in class_metadata.

  Returns:
    Metadata (C, k, D), (C, k), (C, r, D), (C, r), (C,).
  """
  per_class = Metadata(*(jnp.moveaxis(jnp.asarray(a, jnp.float32), 1, 0) for a in stacked))
  num_classes = per_class.total.shape[0]

  def one(meta: Metadata, key):
    m, kc, d = meta.centroids.shape
    points, n_ij = meta.centroids.reshape(m * kc, d), meta.counts.reshape(m * kc)
    centroids, counts, assign = kmeans(points, n_ij, k, key, iters)
    between = (points - centroids[assign]) * jnp.sqrt(n_ij)[:, None]
    scale = jnp.sqrt(meta.total[:, None] * jnp.maximum(meta.variances, 0.0))
    within = (meta.components * scale[..., None]).reshape(-1, d)
    factors = jnp.concatenate([between, within])  # S = factorsᵀ factors / n
    n = jnp.sum(meta.total)
    cov = jnp.matmul(factors.T, factors, precision=_HIGHEST) / jnp.where(n > 0, n, 1.0)
    components, variances = _top_eigen(cov, r)
    return Metadata(centroids, counts, components, variances, n)

  return _over_classes(one, (per_class, jax.random.split(key, num_classes)), class_batch)


def sample_targets(
  meta: Metadata,
  key: jax.Array,
  n: int,
  classes: tuple[int, ...] | None = None,
  spread: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
  """Activation targets for n dreams: t = μ_cj + spread · Σ_m ε_m √λ_cm v_cm, ε ~ N(0, 1).

  The class is uniform over `classes`, the cluster j within it ∝ its count (count-0 clusters
  are never drawn; a requested class with total 0 gives its zero centroid). Memory O(n·r·D)
  (each target gathers its class's components).

  Args:
    meta: Metadata (unstacked).
    key: PRNG key.
    n: number of targets (static).
    classes: static tuple of class ids; None: the classes with total > 0.
    spread: scale of the deviation along the principal directions (0: the centroids).

  Returns:
    targets (n, D) float32 and labels (n,) int32, the original class ids.
  """
  k_class, k_rest = jax.random.split(key)
  if classes is None:
    present = jnp.asarray(meta.total > 0, jnp.float32)
    labels = _draw(k_class, jnp.broadcast_to(present, (n, present.shape[0])))
  else:
    ids = jnp.asarray(classes, jnp.int32)
    labels = ids[jax.random.randint(k_class, (n,), 0, len(classes))]
  labels = labels.astype(jnp.int32)
  return targets_for_labels(meta, k_rest, labels, spread), labels


def targets_for_labels(meta: Metadata, key: jax.Array, labels: jax.Array, spread: float):
  """(B, D) targets for the given classes (original ids): per label c, a cluster j drawn
  ∝ counts[c, j] (count 0: never), then μ_cj + spread · Σ_m ε_m √λ_cm v_cm, ε ~ N(0, 1)."""
  k_cluster, k_noise = jax.random.split(key)
  cluster = jax.random.categorical(k_cluster, jnp.log(meta.counts[labels]))
  eps = jax.random.normal(k_noise, meta.variances[labels].shape, jnp.float32)
  coef = eps * jnp.sqrt(jnp.maximum(meta.variances[labels], 0.0))
  deviation = jnp.einsum('nr,nrd->nd', coef, meta.components[labels], precision=_HIGHEST)
  return meta.centroids[labels, cluster] + spread * deviation


def save(path: str, meta: Metadata, extra: dict[str, Any] | None = None) -> int:
  """Writes meta (stacked or not) and a small JSON-able dict to a compressed .npz at path.

  Args:
    path: the file (written as given; no suffix is added).
    meta: Metadata.
    extra: e.g. {'layer': ..., 'input_range': ...}.

  Returns:
    The file's size in bytes (what releasing the metadata costs).
  """
  arrays = {name: np.asarray(value) for name, value in meta._asdict().items()}
  with open(path, 'wb') as f:
    np.savez_compressed(f, extra=np.asarray(json.dumps(extra or {})), **arrays)
  return os.path.getsize(path)


def load(path: str) -> tuple[Metadata, dict[str, Any]]:
  """(Metadata, extra) written by `save`."""
  with np.load(path) as f:
    meta = Metadata(**{name: jnp.asarray(f[name]) for name in Metadata._fields})
    return meta, json.loads(str(f['extra']))
