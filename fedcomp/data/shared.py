"""The globally shared data strategy of Zhao et al. 2018 for non-IID federated learning.

A class-balanced set G is carved out of the training data before it is
partitioned, with |G| = β·|D| where D is the source's whole training set. The
server trains a warm-up model on G; each client then receives its own random α
share of G (α·|G| examples, drawn independently per client) merged into its
local training data. G's examples are therefore never part of a client's own
partitioned data: a client holds them only as the shared copies.

References: Zhao, Li, Lai, Suda, Civin, Chandra 2018, "Federated Learning with
Non-IID Data" (arXiv 1806.00582), Section 4.
"""

import dataclasses

import numpy as np

from fedcomp.data.dataset import Dataset
from fedcomp.data.federated import FederatedData
from fedcomp.errors import ConfigError


def carve_shared(dataset: Dataset, beta: float, seed: int) -> tuple[Dataset, dict[str, np.ndarray]]:
  """Removes a class-balanced shared set G with round(β·N) examples from the train set.

  Args:
    dataset: the source's dataset (N train examples, labelled).
    beta: |G| / N (config.shared_data.beta), in (0, 1).
    seed: run seed.

  Returns:
    (the dataset without G, G: name -> array, every per-example array of the train set).
    Classes share |G| as evenly as their sizes allow; ties go to the lower class ids.
  """
  if not 0.0 < beta < 1.0:
    raise ConfigError(f'config.shared_data.beta={beta} must be in (0, 1) (0 disables)')
  if dataset.groups is not None:
    raise ConfigError('config.shared_data needs a dataset without natural client groups')
  y = dataset.train_y
  size = int(round(beta * len(y)))
  if size < 1:
    raise ConfigError(f'config.shared_data.beta={beta} gives an empty G on {len(y)} examples')
  rng = np.random.default_rng([seed, 7])
  counts = np.bincount(y, minlength=dataset.num_classes)
  quota = _balanced_quota(counts, size)
  chosen = np.concatenate(
    [rng.choice(np.flatnonzero(y == c), q, replace=False) for c, q in enumerate(quota) if q]
  )
  keep = np.ones(len(y), bool)
  keep[chosen] = False
  chosen = rng.permutation(chosen)
  return dataset.select_train(np.flatnonzero(keep)), {
    k: v[chosen] for k, v in dataset.train.items()
  }


def _balanced_quota(counts: np.ndarray, size: int) -> np.ndarray:
  """Per-class counts summing to `size`, as equal as the class sizes allow."""
  quota = np.zeros_like(counts)
  left = size
  while left > 0:
    open_ = np.flatnonzero(quota < counts)
    share = max(left // len(open_), 1)
    for c in open_:
      take = min(share, counts[c] - quota[c], left)
      quota[c] += take
      left -= take
      if left == 0:
        break
  return quota


def merge_shared(
  fd: FederatedData, shared: dict[str, np.ndarray], alpha: float, seed: int
) -> FederatedData:
  """Appends to each client's train data its own random α share of G.

  Args:
    fd: the partitioned data (clients' own examples, without G).
    shared: G's per-example arrays (the keys of fd.train).
    alpha: the share of G each client receives (config.shared_data.alpha), in [0, 1].
    seed: run seed.

  Returns:
    A FederatedData whose client c holds its own rows followed by round(α·|G|) rows of
    G; local test splits and the global test set are unchanged.
  """
  if not 0.0 <= alpha <= 1.0:
    raise ConfigError(f'config.shared_data.alpha={alpha} must be in [0, 1]')
  count = len(shared['x'])
  share = int(round(alpha * count))
  if share == 0:
    return fd
  rng = np.random.default_rng([seed, 8])
  picks = np.stack([rng.choice(count, share, replace=False) for _ in range(fd.num_clients)])
  train = {}
  for name, packed in fd.train.items():
    parts = []
    for c in range(fd.num_clients):  # host-side assembly, once per run
      parts += [packed[fd.offsets[c] : fd.offsets[c + 1]], shared[name][picks[c]]]
    train[name] = np.concatenate(parts).astype(packed.dtype, copy=False)
  offsets = np.concatenate([[0], np.cumsum(fd.client_sizes + share)]).astype(np.int64)
  return dataclasses.replace(fd, train=train, offsets=offsets)
