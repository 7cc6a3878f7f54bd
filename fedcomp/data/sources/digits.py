"""scikit-learn's 8x8 handwritten digits (1,797 real images; UCI optdigits test set)."""

import numpy as np

from fedcomp.data._checks import check_float, check_int
from fedcomp.data.dataset import Dataset


def stratified_split(
  y: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """Splits indices so each class keeps round(test_fraction * n_c) examples for the test set.

  Args:
    y: (N,) integer labels.
    test_fraction: share of each class that goes to the test set.
    rng: randomness for which examples are picked.

  Returns:
    (train_idx, test_idx), each sorted ascending, int64.
  """
  perm = rng.permutation(len(y))
  order = perm[np.argsort(y[perm], kind='stable')]  # grouped by class, random within a class
  counts = np.bincount(y)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  sorted_y = y[order]
  rank = np.arange(len(y)) - starts[sorted_y]
  is_test = rank < np.rint(test_fraction * counts)[sorted_y]
  return np.sort(order[~is_test]).astype(np.int64), np.sort(order[is_test]).astype(np.int64)


def load(*, seed: int, test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
  """Loads sklearn `load_digits` with a fixed stratified train/test split.

  Args:
    seed: run seed; unused, so the split is the same for every run.
    test_fraction: share of each class held out as the global test set.
    split_seed: seed of the train/test split.

  Returns:
    Dataset with x (N, 8, 8, 1) float32 = pixel / 16, 10 classes.
  """
  del seed
  test_fraction = check_float(
    test_fraction, 'data.test_fraction', min_value=0, max_value=1, min_open=True, max_open=True
  )
  split_seed = check_int(split_seed, 'data.split_seed', min_value=0)
  from sklearn.datasets import load_digits

  digits = load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]
  y = digits.target.astype(np.int32)
  train, test = stratified_split(y, test_fraction, np.random.default_rng(split_seed))
  return Dataset.from_arrays(x[train], y[train], x[test], y[test], num_classes=10)
