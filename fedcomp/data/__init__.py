"""Data: sources (centralised datasets), partitions, and the packed federated view."""

from collections.abc import Mapping
from typing import Any

from fedcomp.data.dataset import Dataset
from fedcomp.data.federated import FederatedData, build_federated_data
from fedcomp.data.partitions import PARTITIONS
from fedcomp.data.sources import SOURCES
from fedcomp.data.stats import earth_movers_distance, label_histograms, partition_summary
from fedcomp.registry import ConfigError, check_kwargs, lookup


def load_source(name: str, kwargs: Mapping[str, Any] | None, seed: int) -> Dataset:
  """Loads data source `name` (config.data_name) with its set kwargs (config.data).

  Args:
    name: a key of SOURCES.
    kwargs: the source's kwargs; None-valued entries are dropped.
    seed: run seed.

  Returns:
    The Dataset.
  """
  fn = lookup(SOURCES, name, 'data_name')
  kwargs = check_kwargs(fn, kwargs or {}, 'data', f'data source {name!r}')
  if 'seed' in kwargs:
    raise ConfigError('config.data.seed is set, but data sources take the run seed; unset it')
  return fn(seed=seed, **kwargs)


__all__ = [
  'PARTITIONS',
  'SOURCES',
  'Dataset',
  'FederatedData',
  'build_federated_data',
  'earth_movers_distance',
  'label_histograms',
  'load_source',
  'partition_summary',
]
