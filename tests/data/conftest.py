"""Shared fixtures for the data tests."""

import numpy as np
import pytest

from fedcomp.data import Dataset


def _make_dataset(per_class=(20,) * 10, groups=None) -> Dataset:
  """A toy dataset: x[i] = [i, label] as float32 so rows can be traced back."""
  y = np.repeat(np.arange(len(per_class)), per_class).astype(np.int32)
  x = np.stack([np.arange(len(y)), y], axis=1).astype(np.float32)
  return Dataset.from_arrays(x, y, x[:5], y[:5], num_classes=len(per_class), groups=groups)


@pytest.fixture
def make_dataset():
  """The toy dataset factory: make_dataset(per_class=(20,) * 10, groups=None)."""
  return _make_dataset


@pytest.fixture
def balanced() -> Dataset:
  """10 classes x 20 examples."""
  return _make_dataset()
