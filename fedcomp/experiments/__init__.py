"""Experiments by name: `fedcomp.experiments.<name>.run(config, workdir)`.

The registry is the set of modules in this package, found by file name, so
adding an experiment is adding a file with a `run` function.
"""

import importlib
import pkgutil

from fedcomp.registry import lookup

EXPERIMENTS = tuple(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith('_'))


def get_run(name: str):
  """The `run(config, workdir)` function of experiment `name`."""
  lookup(dict.fromkeys(EXPERIMENTS), name, 'experiment')
  return importlib.import_module(f'{__name__}.{name}').run


__all__ = ['EXPERIMENTS', 'get_run']
