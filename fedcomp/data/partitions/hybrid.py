"""HoVeFL's hybrid partition: a share of the train set to horizontal clients as label-sorted
shards (non-IID), the rest IID to vertical groups.

Clients 0..H-1 are the horizontal clients, H..H+G-1 the vertical groups (a group's parties
hold the feature slices of the same examples, so a group is one client of the partition;
the split model cuts the features). The train set is shuffled first (the authors' code takes
the first 40,000 MNIST images, whose stored order is already mixed).

References: Li et al. 2025, HoVeFL (arXiv 2410.01644), `main_fed.py` and
`utils/sampling.py` of its public code (`mnist_noniid` 2-shard, `mnist_iid`).
"""

import numpy as np

from fedcomp.data._checks import check_float, check_int
from fedcomp.data.dataset import Dataset
from fedcomp.data.partitions import iid, shards
from fedcomp.registry import ConfigError


def default_fraction(num_horizontal: int, num_groups: int) -> float:
  """Every client lane (a horizontal client or a vertical group) gets an equal share: the
  authors' settings (4 horizontal + 2 groups on 40,000/60,000; 8 + 2 with 0.8) follow it."""
  return num_horizontal / (num_horizontal + num_groups)


def partition(
  dataset: Dataset,
  num_clients: int,
  rng: np.random.Generator,
  *,
  num_horizontal: int = 0,
  horizontal_fraction: float | None = None,
  classes_per_client: int = 2,
) -> list[np.ndarray]:
  """Horizontal clients then vertical groups.

  Args:
    dataset: the data (labelled).
    num_clients: H + G (horizontal clients + vertical groups).
    rng: randomness.
    num_horizontal: H (config.partition.num_horizontal).
    horizontal_fraction: the share of the train set for the horizontal clients (None:
      H / (H + G)).
    classes_per_client: shards per horizontal client (2: the authors' 2-shard non-IID).

  Returns:
    num_clients int64 index arrays into the train set.
  """
  h = check_int(num_horizontal, 'partition.num_horizontal', min_value=0)
  groups = num_clients - h
  if groups < 0:
    raise ConfigError(f'config.partition.num_horizontal={h} exceeds num_clients={num_clients}')
  if horizontal_fraction is None:
    horizontal_fraction = default_fraction(h, groups)
  f = check_float(horizontal_fraction, 'partition.horizontal_fraction', min_value=0, max_value=1)
  n = dataset.num_train
  cut = int(round(f * n))
  if (h == 0) != (cut == 0) or (groups == 0) != (cut == n):
    raise ConfigError(
      f'config.partition.horizontal_fraction={f} gives {cut} of {n} examples to '
      f'{h} horizontal client(s) and {n - cut} to {groups} vertical group(s): a population '
      'gets data exactly when it has clients'
    )
  if groups > n - cut:
    raise ConfigError(
      f'{groups} vertical groups need at least one example each; the vertical share has '
      f'{n - cut} (lower the vertical devices or horizontal_fraction)'
    )
  perm = rng.permutation(n).astype(np.int64)
  head, tail = perm[:cut], perm[cut:]
  parts = []
  if h:
    y = dataset.train_y[head]
    labels = Dataset(
      train={'x': np.zeros((cut, 1), np.uint8), 'y': y},
      test={'x': np.zeros((0, 1), np.uint8), 'y': y[:0]},
      num_classes=dataset.num_classes,
    )
    k = check_int(classes_per_client, 'partition.classes_per_client', min_value=1)
    parts += [head[p] for p in shards.partition(labels, h, rng, classes_per_client=k)]
  if groups:
    fake = Dataset(train={'x': np.zeros((len(tail), 1), np.uint8)},
                   test={'x': np.zeros((0, 1), np.uint8)})  # fmt: skip
    parts += [tail[p] for p in iid.partition(fake, groups, rng)]
  return parts
