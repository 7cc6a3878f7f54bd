"""Dirichlet label skew.

References: Q. Li, Y. Diao, Q. Chen, B. He, "Federated Learning on Non-IID Data Silos: An
Experimental Study" (NIID-Bench), ICDE 2022 (arXiv 2102.02079); the same convention as
Flower Datasets' DirichletPartitioner (self_balancing=False) and T.-M. H. Hsu, H. Qi,
M. Brown, arXiv 1909.06335.
"""

import numpy as np

from fedcomp.data._checks import check_float, check_int
from fedcomp.data.dataset import Dataset
from fedcomp.data.partitions._util import class_sorted, split_by_client
from fedcomp.registry import ConfigError

MAX_TRIES = 1000


def partition(
  dataset: Dataset,
  num_clients: int,
  rng: np.random.Generator,
  *,
  alpha: float = 0.5,
  min_size: int = 1,
) -> list[np.ndarray]:
  """Splits each class c among clients by proportions p_c ~ Dir(alpha * 1_num_clients).

  Class c's n_c examples (in random order) are cut at floor(cumsum(p_c) * n_c), as in
  NIID-Bench. All classes are redrawn together until every client has >= min_size
  examples, at most MAX_TRIES times. Small alpha: each class goes to few clients; large
  alpha: close to IID.

  Args:
    dataset: the data.
    num_clients: number of clients.
    rng: randomness.
    alpha: Dirichlet concentration, > 0.
    min_size: fewest train examples a client may get.

  Returns:
    num_clients int64 index arrays into dataset.train_x.
  """
  alpha = check_float(alpha, 'partition.alpha', min_value=0, min_open=True)
  min_size = check_int(min_size, 'partition.min_size', min_value=0)
  y = dataset.train_y
  if num_clients * min_size > len(y):
    raise ConfigError(
      f'config.partition.min_size={min_size} times num_clients={num_clients} exceeds the '
      f'{len(y)} train examples'
    )
  per_class = np.bincount(y, minlength=dataset.num_classes)
  for _ in range(MAX_TRIES):
    p = rng.dirichlet(np.full(num_clients, alpha), size=len(per_class))  # (C, M)
    cuts = np.floor(np.cumsum(p, axis=1) * per_class[:, None]).astype(np.int64)
    cuts[:, -1] = per_class
    counts = np.diff(cuts, axis=1, prepend=0)  # (C, M) examples of class c for client m
    if counts.sum(axis=0).min() >= min_size:
      break
  else:
    raise ConfigError(
      f'config.partition.min_size={min_size}: no Dirichlet draw in {MAX_TRIES} gave every '
      f'client that many examples (alpha={alpha}, num_clients={num_clients}); lower min_size '
      'or num_clients, or raise alpha'
    )
  client_of = np.repeat(np.tile(np.arange(num_clients), len(per_class)), counts.ravel())
  return split_by_client(client_of, class_sorted(y, rng), num_clients)
