"""Random inputs of a given shape, grouped into clients of given sizes: throughput workloads.

It reproduces the synthetic data of ../shared/peers/common.py (the scripts that measure
FedJAX, Flower and a PyTorch loop on the same workloads): client sizes drawn once from a
seeded log-uniform [min_examples, max_examples] (all equal when min == max), inputs uniform
in [0, 1), labels uniform over the classes. Each client is a group, so the `natural`
partition gives exactly these clients. Real data with the same configs: `data_name=tfds`.
"""

from collections.abc import Sequence

import numpy as np

from fedcomp.data._checks import check_int
from fedcomp.data.dataset import Dataset
from fedcomp.registry import ConfigError


def client_sizes(num_clients: int, min_examples: int, max_examples: int, seed: int) -> np.ndarray:
  """Examples per client: seeded log-uniform in [min, max] (rounded), or all equal."""
  if min_examples == max_examples:
    return np.full(num_clients, min_examples, np.int64)
  u = np.random.default_rng([seed, 1]).uniform(
    np.log(min_examples), np.log(max_examples), num_clients
  )
  return np.rint(np.exp(u)).astype(np.int64)


def load(
  *,
  seed: int,
  num_clients: int = 200,
  min_examples: int = 128,
  max_examples: int = 128,
  shape: Sequence[int] = (28, 28, 1),
  num_classes: int = 62,
  test_examples: int = 1000,
  dtype: str = 'float32',
) -> Dataset:
  """Random train examples grouped by client, and a random test set.

  Args:
    seed: the generator's seed (the peers' scripts use 0).
    num_clients: number of client groups (config.data.num_clients).
    min_examples: smallest client (config.data.min_examples).
    max_examples: largest client (config.data.max_examples).
    shape: shape of one input (config.data.shape).
    num_classes: label range (config.data.num_classes).
    test_examples: size of the test set (config.data.test_examples).
    dtype: 'float32' (uniform in [0, 1), as the peers' scripts) or 'uint8' (uniform
      0..255; a quarter of the memory, scaled to [0, 1] when a cohort is gathered).

  Returns:
    A Dataset with `groups` = client id of each train example.
  """
  for key, value in (
    ('num_clients', num_clients),
    ('min_examples', min_examples),
    ('num_classes', num_classes),
    ('test_examples', test_examples),
  ):
    check_int(value, f'data.{key}', min_value=1)
  if max_examples < min_examples:
    raise ConfigError(
      f'config.data.max_examples={max_examples} is below config.data.min_examples={min_examples}'
    )
  sizes = client_sizes(num_clients, min_examples, max_examples, seed)
  n = int(sizes.sum())
  if dtype not in ('float32', 'uint8'):
    raise ConfigError(f'config.data.dtype={dtype!r} is unknown; known: float32, uint8')
  rng = np.random.default_rng(seed)
  if dtype == 'uint8':
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
  else:
    x = rng.random((n, *shape), dtype=np.float32)
  y = rng.integers(0, num_classes, n, dtype=np.int32)
  test_rng = np.random.default_rng([seed, 2])
  test_x = test_rng.random((test_examples, *shape), dtype=np.float32)
  test_y = test_rng.integers(0, num_classes, test_examples, dtype=np.int32)
  groups = np.repeat(np.arange(num_clients, dtype=np.int32), sizes)
  return Dataset.from_arrays(x, y, test_x, test_y, num_classes=num_classes, groups=groups)
