"""Federated view of a dataset: each client's local train and test data, packed by client."""

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedcomp.data._checks import check_float, check_int
from fedcomp.data.dataset import Dataset
from fedcomp.data.partitions import PARTITIONS
from fedcomp.registry import ConfigError, check_kwargs, lookup

DEFAULT_LOCAL_TEST_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class FederatedData:
  """Client data packed by client: client c owns rows offsets[c]:offsets[c + 1].

  Attributes:
    x: (sum of client train sizes, *feature_shape) float32 local train data.
    y: (sum of client train sizes,) int32.
    offsets: (num_clients + 1,) int64 row offsets of each client's train data.
    test_x: each client's local test split, packed the same way.
    test_y: int32 labels of test_x.
    test_offsets: (num_clients + 1,) int64 row offsets into test_x.
    global_test_x: the source's test set.
    global_test_y: its int32 labels.
    num_classes: number of classes.
  """

  x: np.ndarray
  y: np.ndarray
  offsets: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  test_offsets: np.ndarray
  global_test_x: np.ndarray
  global_test_y: np.ndarray
  num_classes: int

  @property
  def num_clients(self) -> int:
    return len(self.offsets) - 1

  @property
  def client_sizes(self) -> np.ndarray:
    """(num_clients,) int64 number of local train examples."""
    return np.diff(self.offsets).astype(np.int64)

  @property
  def test_sizes(self) -> np.ndarray:
    """(num_clients,) int64 number of local test examples."""
    return np.diff(self.test_offsets).astype(np.int64)

  @property
  def feature_shape(self) -> tuple[int, ...]:
    return tuple(self.x.shape[1:])

  @property
  def max_client_size(self) -> int:
    return int(self.client_sizes.max(initial=0))

  @property
  def max_test_size(self) -> int:
    return int(self.test_sizes.max(initial=0))

  def gather(
    self, client_ids: np.ndarray, pad_to: int, split: str = 'train'
  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns the data of `client_ids`, each padded to `pad_to` rows (one fancy-index).

    Args:
      client_ids: (K,) client ids; ids >= num_clients are padding clients (all masked).
      pad_to: rows per client; must be >= the size of every real client asked for.
      split: 'train' (local train data) or 'test' (local test data).

    Returns:
      x (K, pad_to, *feature_shape) float32 (uint8 storage scaled to [0, 1]) with zero
      padding rows, y (K, pad_to) int32 (0 where padded), mask (K, pad_to) bool (True on
      real rows).
    """
    if split == 'train':
      x, y, offsets = self.x, self.y, self.offsets
    elif split == 'test':
      x, y, offsets = self.test_x, self.test_y, self.test_offsets
    else:
      raise ValueError(f"split={split!r}; expected 'train' or 'test'")
    ids = np.asarray(client_ids, np.int64).reshape(-1)
    if (ids < 0).any():
      raise ValueError(f'negative client ids: {ids[ids < 0][:5]}')
    if pad_to < 0:
      raise ValueError(f'pad_to={pad_to} < 0')
    real = ids < self.num_clients
    safe = np.where(real, ids, 0)
    starts = np.where(real, offsets[safe], 0)
    sizes = np.where(real, offsets[safe + 1] - offsets[safe], 0)
    if (sizes > pad_to).any():
      worst = int(np.argmax(sizes))
      raise ValueError(f'pad_to={pad_to} < size {sizes[worst]} of client {ids[worst]} ({split})')
    pos = np.arange(pad_to)
    mask = pos[None, :] < sizes[:, None]
    # A client's rows are one contiguous slice of the packed arrays: copy only those
    # (host memcpy per client, 4-5x faster than a fancy index over the padded rows).
    gx = np.zeros((len(ids), pad_to, *x.shape[1:]), np.float32)
    gy = np.zeros((len(ids), pad_to), np.int32)
    for i, (start, size) in enumerate(zip(starts.tolist(), sizes.tolist())):
      gx[i, :size] = as_float(x[start : start + size])
      gy[i, :size] = y[start : start + size]
    return gx, gy, mask


def as_float(x: np.ndarray) -> np.ndarray:
  """float32 inputs: uint8 storage (0..255) is scaled to [0, 1]; float32 passes through."""
  if x.dtype == np.uint8:
    return x.astype(np.float32) * np.float32(1 / 255)
  return x.astype(np.float32, copy=False)


def local_test_sizes(sizes: np.ndarray, fraction: float) -> np.ndarray:
  """Local test size per client: round(fraction * n), at least 1 if n >= 2, at most n - 1.

  Args:
    sizes: (num_clients,) client sizes (train + test).
    fraction: share kept aside for the local test set; 0 keeps none.

  Returns:
    (num_clients,) int64 test sizes.
  """
  if fraction == 0:
    return np.zeros_like(sizes, dtype=np.int64)
  test = np.floor(fraction * sizes + 0.5).astype(np.int64)
  return np.clip(test, np.minimum(sizes - 1, 1), np.maximum(sizes - 1, 0))


def build_federated_data(
  dataset: Dataset, partition_name: str, partition_kwargs: Mapping[str, Any], seed: int
) -> FederatedData:
  """Partitions the train set and splits each client's data into local train and test.

  Args:
    dataset: the data.
    partition_name: a key of PARTITIONS (config.partition_name).
    partition_kwargs: config.partition: num_clients, local_test_fraction (None or absent:
      0.2) and the partition's own kwargs; None-valued entries are dropped.
    seed: seed; the partition uses default_rng([seed, 1]), the local test split
      default_rng([seed, 2]).

  Returns:
    The FederatedData.
  """
  fn = lookup(PARTITIONS, partition_name, 'partition_name')
  kwargs = dict(partition_kwargs or {})
  num_clients = kwargs.pop('num_clients', None)
  if num_clients is None:
    raise ConfigError('config.partition.num_clients is not set')
  num_clients = check_int(num_clients, 'partition.num_clients', min_value=1)
  fraction = kwargs.pop('local_test_fraction', None)
  fraction = DEFAULT_LOCAL_TEST_FRACTION if fraction is None else fraction
  fraction = check_float(
    fraction, 'partition.local_test_fraction', min_value=0, max_value=1, max_open=True
  )
  rng = np.random.default_rng([seed, 1])
  own = check_kwargs(
    functools.partial(fn, dataset, num_clients, rng),
    kwargs,
    'partition',
    f'partition {partition_name!r}',
  )
  parts = fn(dataset, num_clients, rng, **own)
  sizes = np.array([len(p) for p in parts], np.int64)
  empty = np.flatnonzero(sizes == 0)
  if len(empty):
    raise ConfigError(
      f'config.partition: client {empty[0]} has no examples; {partition_name!r} with '
      f'num_clients={num_clients} on {len(dataset.train_y)} examples leaves '
      f'{len(empty)} client(s) empty; lower num_clients or change the partition kwargs'
    )
  indices = np.concatenate(parts).astype(np.int64)
  if len(parts) != num_clients or (np.bincount(indices, minlength=len(dataset.train_y)) != 1).any():
    raise RuntimeError(f'partition {partition_name!r} does not cover each example exactly once')
  client_of = np.repeat(np.arange(num_clients), sizes)
  # Random order within each client; the first test_sizes[c] rows of client c are its test set.
  order = np.lexsort((np.random.default_rng([seed, 2]).random(len(indices)), client_of))
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  test_sizes = local_test_sizes(sizes, fraction)
  is_test = np.arange(len(indices)) - starts[client_of] < test_sizes[client_of]
  if test_sizes.any():
    train_rows, test_rows = indices[order[~is_test]], indices[order[is_test]]
  else:  # no local test split: keep the partition's order (the engine shuffles per epoch)
    train_rows, test_rows = indices, indices[:0]
  # A partition that keeps every example in place (e.g. `natural` on grouped data)
  # shares the source's arrays instead of copying them: data sets of many clients
  # then cost their size once in host memory.
  in_place = np.array_equal(train_rows, np.arange(len(dataset.train_y)))

  def offsets(s):
    return np.concatenate([[0], np.cumsum(s)]).astype(np.int64)

  return FederatedData(
    x=dataset.train_x if in_place else dataset.train_x[train_rows],
    y=dataset.train_y[train_rows].astype(np.int32, copy=False),
    offsets=offsets(sizes - test_sizes),
    test_x=as_float(dataset.train_x[test_rows]),
    test_y=dataset.train_y[test_rows].astype(np.int32),
    test_offsets=offsets(test_sizes),
    global_test_x=as_float(dataset.test_x),
    global_test_y=dataset.test_y.astype(np.int32),
    num_classes=dataset.num_classes,
  )
