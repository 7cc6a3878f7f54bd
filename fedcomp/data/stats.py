"""Label statistics of a partition: per-client histograms and earth mover's distance."""

from typing import Any

import numpy as np


def label_histograms(y: np.ndarray, offsets: np.ndarray, num_classes: int) -> np.ndarray:
  """Counts each client's labels.

  Args:
    y: (n,) labels packed by client.
    offsets: (num_clients + 1,) row offsets; client c owns y[offsets[c]:offsets[c + 1]].
    num_classes: number of classes.

  Returns:
    (num_clients, num_classes) int64 counts.
  """
  num_clients = len(offsets) - 1
  client_of = np.repeat(np.arange(num_clients), np.diff(offsets))
  flat = client_of * num_classes + np.asarray(y, np.int64)
  return np.bincount(flat, minlength=num_clients * num_classes).reshape(num_clients, num_classes)


def earth_movers_distance(hist: np.ndarray, population: np.ndarray | None = None) -> np.ndarray:
  """Per-client EMD between its label distribution and the population's.

  EMD_k = sum_i |p_k(i) - p(i)|, in [0, 2], as in Zhao et al.

  References: Y. Zhao, M. Li, L. Lai, N. Suda, D. Civin, V. Chandra, "Federated Learning with
  Non-IID Data", arXiv 1806.00582, 2018.

  Args:
    hist: (num_clients, num_classes) label counts.
    population: (num_classes,) population counts or probabilities; None: hist.sum(0).

  Returns:
    (num_clients,) float64 EMD; NaN for clients with no examples.
  """
  hist = np.asarray(hist, np.float64)
  population = hist.sum(axis=0) if population is None else np.asarray(population, np.float64)
  p = population / population.sum()
  totals = hist.sum(axis=1, keepdims=True)
  with np.errstate(invalid='ignore', divide='ignore'):
    p_k = hist / totals
  return np.abs(p_k - p).sum(axis=1)


def _describe(emd: np.ndarray, weights: np.ndarray) -> dict[str, float]:
  ok = ~np.isnan(emd)
  if not ok.any():
    return {'mean': float('nan'), 'max': float('nan'), 'weighted_mean': float('nan')}
  return {
    'mean': float(emd[ok].mean()),
    'max': float(emd[ok].max()),
    'weighted_mean': float(np.average(emd[ok], weights=weights[ok])),
  }


def partition_summary(fd) -> dict[str, Any]:
  """A JSON-serialisable summary of a FederatedData's label skew.

  EMDs are against the label distribution of all local train data together.

  Args:
    fd: the FederatedData.

  Returns:
    dict with num_clients, num_classes, client_sizes, test_sizes, size stats and, for
    labelled data, histograms (train, per client), emd (per client) and emd_mean, emd_max
    and emd_weighted_mean (weighted by client train size).
  """
  sizes = fd.client_sizes
  summary = {
    'num_clients': int(fd.num_clients),
    'num_classes': None if fd.num_classes is None else int(fd.num_classes),
    'num_train': int(sizes.sum()),
    'num_local_test': int(fd.test_sizes.sum()),
    'num_global_test': int(len(fd.global_test['x'])),
    'client_sizes': sizes.tolist(),
    'test_sizes': fd.test_sizes.tolist(),
    'size_min': int(sizes.min()),
    'size_max': int(sizes.max()),
    'size_mean': float(sizes.mean()),
    'size_std': float(sizes.std()),
  }
  if fd.y is None:  # unlabelled data: sizes only
    return summary
  hist = label_histograms(fd.y, fd.offsets, fd.num_classes)
  emd = earth_movers_distance(hist)
  stats = _describe(emd, sizes.astype(np.float64))
  return {
    **summary,
    'classes_per_client_mean': float((hist > 0).sum(axis=1).mean()),
    'histograms': hist.tolist(),
    'emd': [None if np.isnan(e) else float(e) for e in emd],
    'emd_mean': stats['mean'],
    'emd_max': stats['max'],
    'emd_weighted_mean': stats['weighted_mean'],
  }
