"""Shared helpers for partitions."""

import numpy as np


def split_by_client(client_of: np.ndarray, indices: np.ndarray, num_clients: int) -> list:
  """Groups `indices` by `client_of` (same length), keeping their order within a client.

  Args:
    client_of: (n,) client id of each index.
    indices: (n,) example indices.
    num_clients: number of clients.

  Returns:
    num_clients int64 index arrays.
  """
  order = np.argsort(client_of, kind='stable')
  cuts = np.cumsum(np.bincount(client_of, minlength=num_clients))[:-1]
  return np.split(indices[order].astype(np.int64), cuts)


def class_sorted(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Returns all indices sorted by label, in random order within a label."""
  perm = rng.permutation(len(y))
  return perm[np.argsort(y[perm], kind='stable')].astype(np.int64)


def sizes_from_weights(weights: np.ndarray, total: int) -> np.ndarray:
  """Splits `total` into len(weights) sizes >= 1 proportional to weights (largest remainder).

  Args:
    weights: (M,) positive weights, M <= total.
    total: the sum of the sizes.

  Returns:
    (M,) int64 sizes, each >= 1, summing to total.
  """
  extra = total - len(weights)
  share = weights / weights.sum() * extra
  sizes = np.floor(share).astype(np.int64)
  left = extra - sizes.sum()
  sizes[np.argsort(sizes - share, kind='stable')[:left]] += 1
  return sizes + 1
