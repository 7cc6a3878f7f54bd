"""IID partition: a random split into equal-as-possible parts."""

import numpy as np

from fedcomp.data.dataset import Dataset


def partition(dataset: Dataset, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
  """Shuffles the train set and cuts it into num_clients parts whose sizes differ by <= 1.

  Args:
    dataset: the data.
    num_clients: number of clients.
    rng: randomness.

  Returns:
    num_clients int64 index arrays into dataset.train_x.
  """
  perm = rng.permutation(dataset.num_train).astype(np.int64)
  return np.array_split(perm, num_clients)
