"""Tasks by name: what a batch holds, its loss, metrics and evaluation.

`TASKS[name](**kwargs) -> Task`; `make_task(config.task_name, config.task)` builds one with
its config kwargs checked.
"""

from collections.abc import Mapping
from typing import Any

from fedcomp.registry import ConfigError, check_kwargs, lookup
from fedcomp.tasks import classification, distillation, reconstruction
from fedcomp.tasks.base import Task, bind, masked_sums, mean_of, metrics_from_sums

CODE_ONLY = ('teacher',)  # task arguments that are functions
TASKS = {
  'classification': classification.make,
  'distillation': distillation.make,
  'reconstruction': reconstruction.make,
}


def make_task(name: str, kwargs: Mapping[str, Any] | None = None, **extra) -> Task:
  """Task `name` (config.task_name) with its config kwargs (config.task) and code-only extras.

  Args:
    name: a key of TASKS.
    kwargs: config kwargs; None-valued ones are dropped, unknown ones are an error.
    **extra: arguments that a config cannot hold (e.g. distillation's teacher function).

  Returns:
    The Task.
  """
  make = lookup(TASKS, name, 'task_name')
  kw = check_kwargs(make, kwargs or {}, 'task', f'task {name!r}')
  for key in set(kw) & set(CODE_ONLY):
    raise ConfigError(f'config.task.{key} cannot be set in a config (a function, given in code)')
  return make(**kw, **extra)


__all__ = ['TASKS', 'Task', 'bind', 'make_task', 'masked_sums', 'mean_of', 'metrics_from_sums']
