"""Natural partition: one client per natural group of the data (e.g. synthetic devices)."""

import numpy as np

from fedcomp.data.dataset import Dataset
from fedcomp.registry import ConfigError


def partition(dataset: Dataset, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
  """Gives client c the train examples of the c-th smallest group id in `dataset.groups`.

  Args:
    dataset: the data; needs `groups`.
    num_clients: must equal the number of distinct groups.
    rng: unused (the partition is fixed by the data).

  Returns:
    num_clients int64 index arrays into dataset.train_x, ascending.
  """
  del rng
  if dataset.groups is None:
    raise ConfigError(
      "config.partition_name='natural' needs a data source with natural clients "
      "(dataset.groups), such as 'synthetic'; this one has none"
    )
  names, client_of = np.unique(dataset.groups, return_inverse=True)
  if num_clients != len(names):
    raise ConfigError(
      f'config.partition.num_clients={num_clients} but the data has {len(names)} natural '
      f'clients; set it to {len(names)}'
    )
  return np.split(
    np.argsort(client_of, kind='stable').astype(np.int64),
    np.cumsum(np.bincount(client_of, minlength=num_clients))[:-1],
  )
