"""A random subset of a source's training set (smaller runs of the same data)."""

import numpy as np

from fedcomp.data.dataset import Dataset
from fedcomp.errors import ConfigError


def subsample(dataset: Dataset, size: int, seed: int) -> Dataset:
  """A uniformly random subset of `size` train examples (config.train_examples)."""
  n = dataset.num_train
  if not isinstance(size, int) or not 0 < size <= n:
    raise ConfigError(f'config.train_examples={size!r} must be an int in [1, {n}]')
  if size == n:
    return dataset
  rows = np.sort(np.random.default_rng([seed, 6]).choice(n, size, replace=False))
  return dataset.select_train(rows)
