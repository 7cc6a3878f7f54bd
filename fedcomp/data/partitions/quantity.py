"""Quantity (size) skew: lognormal client sizes, IID labels.

References: Q. Li, Y. Diao, Q. Chen, B. He, "Federated Learning on Non-IID Data Silos: An
Experimental Study" (NIID-Bench), ICDE 2022 (arXiv 2102.02079), quantity skew.
"""

import numpy as np

from fedcomp.data._checks import check_float
from fedcomp.data.dataset import Dataset
from fedcomp.data.partitions._util import sizes_from_weights
from fedcomp.registry import ConfigError


def partition(
  dataset: Dataset, num_clients: int, rng: np.random.Generator, *, sigma: float = 1.0
) -> list[np.ndarray]:
  """Gives client k a share of the shuffled train set proportional to w_k ~ lognormal(0, sigma).

  Sizes are 1 + the largest-remainder rounding of (N - num_clients) * w_k / sum(w), so each
  client gets at least one example; labels are IID within each client.

  Args:
    dataset: the data.
    num_clients: number of clients.
    rng: randomness.
    sigma: log-scale std of the size weights (0 gives equal sizes).

  Returns:
    num_clients int64 index arrays into dataset.train_x.
  """
  sigma = check_float(sigma, 'partition.sigma', min_value=0)
  n = dataset.num_train
  if num_clients > n:
    raise ConfigError(f'config.partition.num_clients={num_clients} exceeds the {n} train examples')
  sizes = sizes_from_weights(rng.lognormal(0, sigma, num_clients), n)
  perm = rng.permutation(n).astype(np.int64)
  return np.split(perm, np.cumsum(sizes)[:-1])
