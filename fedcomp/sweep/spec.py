"""Sweep specifications: the list of config overrides a sweep runs, built from axes.

A config file may define `get_sweep(arg)` next to `get_config(arg)`; it returns a list of
override dicts (dotted config keys -> values), one per run, built with these helpers:

    from fedcomp.sweep import spec as sw

    def get_sweep(arg=None):
      return sw.product(
        sw.axis('algorithm_name', ['fed_avg', 'fed_prox']),
        sw.axis('client_tx.learning_rate', [0.03, 0.1]),
        sw.seeds(3),
      )

References: big_vision's `get_hyper(hyper)` with `hyper.product`, `hyper.zipit` and
`hyper.sweep` (the shape of a sweep as a list of override dicts).
"""

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from fedcomp.errors import ConfigError

Overrides = dict[str, Any]


def axis(key: str, values: Iterable[Any]) -> list[Overrides]:
  """One swept key: [{key: v} for v in values].

  Args:
    key: a dotted config key, e.g. 'client_tx.learning_rate'.
    values: its values (at least one).

  Returns:
    The runs of this axis.
  """
  values = list(values)
  if not isinstance(key, str) or not key:
    raise ConfigError(f'sweep axis key {key!r} must be a dotted config key')
  if not values:
    raise ConfigError(f'sweep axis {key!r} has no values')
  return [{key: v} for v in values]


def seeds(n: int, start: int = 0) -> list[Overrides]:
  """The axis 'seed' over start, start + 1, ..., start + n - 1."""
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ConfigError(f'seeds(n={n!r}): n must be a positive integer')
  return axis('seed', range(start, start + n))


def _merge(parts: Sequence[Mapping[str, Any]]) -> Overrides:
  out: Overrides = {}
  for part in parts:
    for key, value in part.items():
      if key in out:
        raise ConfigError(f'sweep: key {key!r} is set by two combined axes')
      out[key] = value
  return out


def product(*axes: Sequence[Overrides]) -> list[Overrides]:
  """Every combination of the axes' runs (the last axis varies fastest)."""
  for a in axes:
    check(a)
  return [_merge(combo) for combo in itertools.product(*axes)]


def zipped(*axes: Sequence[Overrides]) -> list[Overrides]:
  """The axes' runs taken side by side (all axes have the same length)."""
  lengths = {len(check(a)) for a in axes}
  if len(lengths) > 1:
    raise ConfigError(f'sweep zipped(): the axes have different lengths {sorted(lengths)}')
  return [_merge(parts) for parts in zip(*axes, strict=True)]


def check(sweep: Any) -> list[Overrides]:
  """The sweep as a list of dicts; a one-line ConfigError if it is not one."""
  if not isinstance(sweep, Sequence) or isinstance(sweep, str):
    raise ConfigError(f'a sweep must be a list of override dicts, got {type(sweep).__name__}')
  if not sweep:
    raise ConfigError('the sweep is empty: it lists no runs')
  for i, run in enumerate(sweep):
    if not isinstance(run, Mapping) or not all(isinstance(k, str) and k for k in run):
      raise ConfigError(f'sweep run {i} must be a dict of dotted config keys, got {run!r}')
  return [dict(run) for run in sweep]


class Run(NamedTuple):
  """One run of a sweep: its directory name under the sweep's workdir and its overrides."""

  name: str
  overrides: Overrides


def expand(sweep: Sequence[Overrides] | None, num_seeds: int = 0) -> list[Run]:
  """The named runs of a sweep (or of one run), with `num_seeds` seeds added.

  Args:
    sweep: the config's get_sweep() list, or None (a config without a sweep: one run).
    num_seeds: if > 0, every run is repeated with seeds 0..num_seeds-1 (the sweep must
      not set 'seed' itself).

  Returns:
    The runs, named by their swept values (e.g. 'learning_rate=0.1,seed=2').
  """
  runs = [{}] if sweep is None else check(sweep)
  if num_seeds:
    if any('seed' in run for run in runs):
      raise ConfigError('--seeds adds seeds to a sweep that has none, but this one sets seed')
    runs = product(runs, seeds(num_seeds))
  names = run_names(runs)
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise ConfigError(f'the sweep lists the same run twice: {dupes[0]}')
  return [Run(n, r) for n, r in zip(names, runs, strict=True)]


def run_names(runs: Sequence[Overrides]) -> list[str]:
  """A directory name per run: its key=value pairs, keys shortened where unambiguous."""
  keys = list(dict.fromkeys(k for run in runs for k in run))
  last = [k.rsplit('.', 1)[-1] for k in keys]
  short = {k: s if last.count(s) == 1 else k for k, s in zip(keys, last, strict=True)}
  return [
    ','.join(f'{short[k]}={format_value(v)}' for k, v in run.items()) or 'run' for run in runs
  ]


def format_value(value: Any) -> str:
  """A value as it appears in a run name (safe in a file name)."""
  if isinstance(value, float) and math.isfinite(value):
    text = repr(value)
  elif isinstance(value, list | tuple):
    text = '-'.join(format_value(v) for v in value)
  else:
    text = str(value)
  return re.sub(r'[^A-Za-z0-9._+-]', '_', text)
