"""The in-memory dataset every data source returns: per-example arrays by name."""

import dataclasses
from collections.abc import Mapping

import numpy as np

from fedcomp.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A centralised dataset: a train set (to be partitioned) and a global test set.

  Each split is a dict of per-example arrays with the same length: 'x' (the inputs) is
  required; 'y' (integer labels in [0, num_classes)) is present for labelled data; any
  other key (soft targets, feature slices, ...) travels with the examples through
  partitioning and into the clients' batches.

  Attributes:
    train: name -> (N, ...) array. 'x' is float32 (images NHWC scaled to [0, 1]) or uint8
      (0..255, kept as is: FederatedData scales only the gathered cohort, so large image
      sets cost a quarter of the memory).
    test: name -> (M, ...) array, the same keys as train.
    num_classes: number of classes of 'y', or None for unlabelled data.
    groups: (N,) int32 natural client id of each train example (synthetic data), or None.
  """

  train: Mapping[str, np.ndarray]
  test: Mapping[str, np.ndarray]
  num_classes: int | None = None
  groups: np.ndarray | None = None

  def __post_init__(self):
    for split, arrays in (('train', self.train), ('test', self.test)):
      if 'x' not in arrays:
        raise ValueError(f'the {split} split has no inputs "x"; keys: {sorted(arrays)}')
      lengths = {k: len(v) for k, v in arrays.items()}
      if len(set(lengths.values())) > 1:
        raise ValueError(f'{split} arrays differ in length: {lengths}')
    if set(self.train) != set(self.test):
      raise ValueError(f'train keys {sorted(self.train)} differ from test keys {sorted(self.test)}')
    if self.train['x'].shape[1:] != self.test['x'].shape[1:]:
      raise ConfigError(
        f'train examples have shape {self.train["x"].shape[1:]} but test examples '
        f'{self.test["x"].shape[1:]}; they must match'
      )
    if 'y' in self.train:
      self._check_labels()
    if self.groups is not None and len(self.groups) != len(self.train['x']):
      raise ValueError(f'groups has {len(self.groups)} entries for {len(self.train["x"])} examples')

  def _check_labels(self):
    if self.num_classes is None:
      raise ValueError('labelled data ("y") needs num_classes')
    for split, arrays in (('train', self.train), ('test', self.test)):
      y = arrays['y']
      if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f'{split} labels must be a 1-D integer array, got {y.dtype} {y.shape}')
      if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
        raise ConfigError(
          f'{split} labels span [{y.min()}, {y.max()}], outside [0, {self.num_classes}) '
          f'for num_classes={self.num_classes}'
        )

  @classmethod
  def from_arrays(
    cls,
    train_x: np.ndarray,
    train_y: np.ndarray | None,
    test_x: np.ndarray,
    test_y: np.ndarray | None,
    num_classes: int | None = None,
    groups: np.ndarray | None = None,
  ) -> 'Dataset':
    """A dataset of inputs and (optional) integer labels."""
    train, test = {'x': train_x}, {'x': test_x}
    if train_y is not None:
      train['y'], test['y'] = train_y, test_y
    return cls(train, test, num_classes, groups)

  @property
  def train_x(self) -> np.ndarray:
    return self.train['x']

  @property
  def train_y(self) -> np.ndarray:
    """The train labels; a ConfigError for unlabelled data."""
    return self.labels('train')

  @property
  def test_x(self) -> np.ndarray:
    return self.test['x']

  @property
  def test_y(self) -> np.ndarray:
    return self.labels('test')

  @property
  def num_train(self) -> int:
    return len(self.train['x'])

  @property
  def feature_shape(self) -> tuple[int, ...]:
    """Shape of one example, e.g. (28, 28, 1)."""
    return tuple(self.train['x'].shape[1:])

  def labels(self, split: str) -> np.ndarray:
    arrays = self.train if split == 'train' else self.test
    if 'y' not in arrays:
      raise ConfigError('this needs labelled data ("y"), and the data source has none')
    return arrays['y']

  def select_train(self, rows: np.ndarray) -> 'Dataset':
    """The same dataset with only the train examples `rows` (groups follow them)."""
    groups = None if self.groups is None else self.groups[rows]
    train = {k: v[rows] for k, v in self.train.items()}
    return dataclasses.replace(self, train=train, groups=groups)
