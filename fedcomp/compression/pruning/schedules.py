"""When masks change and to what sparsity: one-shot and gradual cubic schedules.

A schedule maps the optimizer's step count to (is this a mask-update step?, the sparsity
to reach at it). Both are jnp functions of a traced count, so the wrapper decides under
`lax.cond` and never recompiles.

- fixed(): never updates the masks (the caller sets them: fine-tuning a pruned model,
  federated clients following the server's masks); the wrapper then traces no pruning at
  all (under vmap a `lax.cond` runs both branches).
- one_shot(step=0): prune to the final sparsity once, at `step`.
- cubic(start, end, every, initial=0): Zhu & Gupta's gradual schedule, updates at
  t = start, start + every, ... up to end, with
  s_t = s_f + (s_i − s_f)·(1 − (t − start)/(t_last − start))³, t_last the last update
  step <= end (so the final sparsity is reached at the last update).

References: Zhu & Gupta 2017, "To prune, or not to prune: exploring the efficacy of
pruning for model compression" (arXiv 1710.01878), Eq. 1.
"""

from typing import NamedTuple

import jax.numpy as jnp

from fedcomp.errors import ConfigError


class Schedule(NamedTuple):
  """is_update(count) -> bool; sparsity(count, final) -> the sparsity at that step."""

  name: str
  is_update: object
  sparsity: object
  last_update: int  # the step of the last mask update


def _int(value, key: str, low: int) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or value < low:
    raise ConfigError(f'pruning.schedule_kwargs.{key}={value!r} must be an integer >= {low}')
  return value


def fixed() -> Schedule:
  """Masks set by the caller, never updated."""
  return Schedule(
    'fixed', lambda count: jnp.zeros((), bool), lambda count, final: jnp.float32(final), -1
  )


def one_shot(step: int = 0) -> Schedule:
  """Prune once, at `step`, to the final sparsity."""
  step = _int(step, 'step', 0)
  return Schedule(
    'one_shot',
    lambda count: count == step,
    lambda count, final: jnp.asarray(final, jnp.float32),
    step,
  )


def cubic(start: int = 0, end: int = 1000, every: int = 100, initial: float = 0.0) -> Schedule:
  """Zhu & Gupta's gradual schedule (see the module docstring)."""
  start, end, every = _int(start, 'start', 0), _int(end, 'end', 1), _int(every, 'every', 1)
  if end <= start:
    raise ConfigError(f'pruning.schedule_kwargs: end={end} must exceed start={start}')
  if not 0.0 <= initial < 1.0:
    raise ConfigError(f'pruning.schedule_kwargs.initial={initial!r} must be in [0, 1)')
  # (initial <= the final sparsity is checked by make_pruner, which knows both.)
  last = start + (end - start) // every * every

  def is_update(count):
    return (count >= start) & (count <= end) & ((count - start) % every == 0)

  def sparsity(count, final):
    progress = jnp.clip((count - start) / max(last - start, 1), 0.0, 1.0)
    if last == start:
      progress = jnp.ones_like(progress)
    return (final + (initial - final) * (1.0 - progress) ** 3).astype(jnp.float32)

  return Schedule('cubic', is_update, sparsity, last)


SCHEDULES = {'one_shot': one_shot, 'cubic': cubic, 'fixed': fixed}
