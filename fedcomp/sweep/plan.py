"""Which runs of a sweep share one compiled program, and which run as separate jobs.

Runs of a federated config that differ only in seeds and in numeric hyperparameters that
the round reads as numbers (the client and server optimizers' and the algorithm's float
options: learning rates, momentum, μ, damping, ...) run as one group: one jitted program
with a leading runs axis (fedcomp.sweep.group). Runs that differ in anything else (model,
partition, algorithm, integer options, the number of rounds) change what is compiled and
run as separate jobs.
"""

from collections.abc import Sequence
from typing import NamedTuple

from fedcomp.errors import ConfigError
from fedcomp.sweep.spec import Run

# Config sections whose float values the round reads as numbers.
VARYING_SECTIONS = ('client_tx', 'server_tx', 'algorithm')


def is_varying(key: str, value) -> bool:
  """True if runs may differ in `key` (set to `value`) inside one program."""
  if key == 'seed':
    return True
  section, _, leaf = key.partition('.')
  return section in VARYING_SECTIONS and bool(leaf) and '.' not in leaf and _is_float(value)


def _is_float(value) -> bool:
  return isinstance(value, float)


class Job(NamedTuple):
  """Runs executed together: one run, or a group sharing one compiled program."""

  runs: tuple[Run, ...]

  @property
  def is_group(self) -> bool:
    return len(self.runs) > 1


def plan_jobs(
  runs: Sequence[Run],
  experiment: str,
  *,
  vmap: bool = True,
  vmap_keys: Sequence[str] | None = None,
) -> list[Job]:
  """Groups a sweep's runs into jobs.

  Args:
    runs: the sweep's runs (fedcomp.sweep.spec.expand).
    experiment: the config's experiment; only 'federated' runs are grouped.
    vmap: False runs every run as its own job.
    vmap_keys: the keys allowed to vary inside a group (None: every key `is_varying`
      accepts). A key here that cannot vary inside one program is a ConfigError.

  Returns:
    The jobs, in the order of their first runs.
  """
  if vmap_keys:
    for key in vmap_keys:
      bad = [r.overrides[key] for r in runs if key in r.overrides]
      bad = [v for v in bad if not is_varying(key, v)]
      if bad or not (key == 'seed' or key.partition('.')[0] in VARYING_SECTIONS):
        raise ConfigError(
          f'--vmap_keys: {key!r} changes what is compiled and cannot vary inside one program; '
          f'keys that can: seed and float options of {", ".join(VARYING_SECTIONS)}'
        )
  if not vmap or experiment != 'federated':
    return [Job((r,)) for r in runs]
  groups: dict[tuple, list[Run]] = {}
  for run in runs:
    fixed = tuple(
      sorted(
        (k, repr(v))
        for k, v in run.overrides.items()
        if not is_varying(k, v) or (vmap_keys and k not in vmap_keys)
      )
    )
    groups.setdefault(fixed, []).append(run)
  return [Job(tuple(g)) for g in groups.values()]


def varying_keys(runs: Sequence[Run]) -> list[str]:
  """The keys whose values differ between the runs (in order of appearance)."""
  keys = list(dict.fromkeys(k for r in runs for k in r.overrides))
  return [k for k in keys if len({repr(r.overrides.get(k)) for r in runs}) > 1]
