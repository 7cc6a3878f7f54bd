"""Pruning scorers by name: how important each weight is, and how to compensate.

A scorer is made by `SCORERS[name](targets, **kwargs)` and returns a `Scorer`:
  init(params) -> state                          curvature kept between pruning steps
  observe(state, params, masks, extras, key)     every optimizer step (FLS refines Q)
  curvature(state, params, masks, extras, key)   at a pruning step -> (state, curvature)
  scores(curvature, params) -> params-shaped     higher = keep
  compensate(curvature, params, removed) -> δθ   or None (no weight update)
`extras` holds the callables a scorer needs: `grad_fn(params, key)` (a minibatch gradient
of the training loss, OBD/OBS) and `nll_fn(params, key)` (the NLL of model-sampled targets
on a minibatch, FLS).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

from fedcomp.registry import check_kwargs, lookup


class Scorer(NamedTuple):
  name: str
  init: Callable
  observe: Callable
  curvature: Callable
  scores: Callable
  compensate: Callable | None
  needs: tuple[str, ...] = ()


def no_observe(state, params, masks, extras, key):
  del params, masks, extras, key
  return state


def require(extras, names: tuple[str, ...], scorer: str) -> None:
  missing = [n for n in names if extras.get(n) is None]
  if missing:
    raise ValueError(f'pruning scorer {scorer!r} needs the extra argument(s) {", ".join(missing)}')


from fedcomp.compression.pruning.scorers import fishleg, magnitude, obd, obs  # noqa: E402

SCORERS = {
  'magnitude': magnitude.make,
  'obd': obd.make,
  'obs': obs.make,
  'fishleg': fishleg.make,
}


def make_scorer(name: str, targets, kwargs: dict[str, Any] | None = None) -> Scorer:
  """The scorer `name` for `targets` with its kwargs (one-line ConfigError if unknown/bad)."""
  make = lookup(SCORERS, name, 'pruning.scorer')
  kw = check_kwargs(make, kwargs or {}, 'pruning.scorer_kwargs', f'scorer {name!r}')
  return make(targets, **kw)
