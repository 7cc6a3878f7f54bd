"""The in-memory dataset every data source returns."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A centralised dataset: a train set (to be partitioned) and a global test set.

  Attributes:
    train_x: (N, *feature_shape) float32; images are NHWC (H, W, C) scaled to [0, 1].
      uint8 (0..255) is accepted too and kept as is: FederatedData scales only the
      gathered cohort, so large image sets cost a quarter of the memory.
    train_y: (N,) int32 labels in [0, num_classes).
    test_x: (M, *feature_shape) float32.
    test_y: (M,) int32.
    num_classes: number of classes.
    groups: (N,) int32 natural client id of each train example (synthetic data), else None.
  """

  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int
  groups: np.ndarray | None = None

  def __post_init__(self):
    if len(self.train_x) != len(self.train_y) or len(self.test_x) != len(self.test_y):
      raise ValueError(
        f'x/y lengths differ: train {len(self.train_x)}/{len(self.train_y)}, '
        f'test {len(self.test_x)}/{len(self.test_y)}'
      )
    if self.groups is not None and len(self.groups) != len(self.train_y):
      raise ValueError(f'groups has {len(self.groups)} entries for {len(self.train_y)} examples')

  @property
  def feature_shape(self) -> tuple[int, ...]:
    """Shape of one example, e.g. (28, 28, 1)."""
    return tuple(self.train_x.shape[1:])
