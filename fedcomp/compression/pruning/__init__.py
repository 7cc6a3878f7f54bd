"""Pruning as an optax wrapper: magnitude, OBD, OBS (oBERT) and FishLeg Surgeon.

    from fedcomp.compression import pruning
    pruner = pruning.make_pruner(scorer='fishleg', sparsity=0.9, schedule='cubic',
                                 schedule_kwargs=dict(start=0, end=2000, every=200),
                                 distribution='global',
                                 policy=[('conv0/kernel', 0.0), ('dense1/kernel', 0.0)])
    tx = pruning.wrap_optax(optax.adam(1e-3), pruner)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params, nll_fn=..., key=...)
    params = optax.apply_updates(params, updates)   # masked weights are exactly 0

The wrapper's state (`SparseState`) carries the masks, the scorer's curvature state and the
inner transform's state, as jaxpruner's `wrap_optax`. Each update (1) lets the scorer
observe the step (FLS refines Q), (2) on the schedule's mask-update steps, under
`lax.cond` (one compiled program whatever the masks), scores the weights, ranks them into
new masks and applies the scorer's weight compensation, (3) runs the inner transform on the
masked gradients (its moments never see pruned weights) with the extra arguments (and the
masks, which FishLeg uses to gate its aux loss), and (4) returns −θ for every masked weight,
so `optax.apply_updates` leaves it exactly 0 after every step of any optimizer.
`post_update` (for `OptimizerStep`) applies the masks again.

`prune` is the same surgery as a function (one-shot pruning outside training).

References: jaxpruner (Lee et al. 2023, arXiv 2304.14082), `BaseUpdater.wrap_optax`;
Kurtic et al. 2022 (oBERT); McGowan et al. 2024 (FishLeg Surgeon, arXiv 2412.02328).
"""

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedcomp.compression.pruning import schedules
from fedcomp.compression.pruning.schedules import SCHEDULES
from fedcomp.compression.pruning.scorers import SCORERS, Scorer, make_scorer
from fedcomp.compression.pruning.targets import (
  DISTRIBUTIONS,
  Targets,
  apply_masks,
  check_target_options,
  dense_masks,
  make_targets,
  masks_from_scores,
  sparsity_report,
)
from fedcomp.registry import ConfigError, check_kwargs, lookup

PyTree = Any
EXTRAS = ('grad_fn', 'nll_fn')

__all__ = [
  'DISTRIBUTIONS',
  'SCHEDULES',
  'SCORERS',
  'Pruner',
  'SparseState',
  'apply_masks',
  'find_sparse_state',
  'make_pruner',
  'post_update',
  'prune',
  'sparsity_report',
  'wrap_optax',
]


class Pruner(NamedTuple):
  """Validated pruning options; the params-dependent parts are built at trace time."""

  scorer_name: str
  scorer_kwargs: dict
  sparsity: float
  schedule: schedules.Schedule
  distribution: str
  policy: tuple
  nm: tuple | None
  sparse_gradients: bool

  def targets(self, params: PyTree) -> Targets:
    return make_targets(params, self.sparsity, self.distribution, self.policy, self.nm)

  def scorer(self, targets: Targets) -> Scorer:
    return make_scorer(self.scorer_name, targets, self.scorer_kwargs)


def make_pruner(
  scorer: str = 'magnitude',
  sparsity: float = 0.9,
  schedule: str = 'one_shot',
  schedule_kwargs: Mapping[str, Any] | None = None,
  distribution: str = 'uniform',
  policy: Sequence[tuple[str, float]] = (),
  nm: Sequence[int] | None = None,
  scorer_kwargs: Mapping[str, Any] | None = None,
  sparse_gradients: bool = True,
) -> Pruner:
  """Checks every option (a one-line ConfigError naming it) and returns the Pruner.

  Args:
    scorer: 'magnitude', 'obd', 'obs' or 'fishleg' (SCORERS).
    sparsity: the final sparsity of the prunable weights, in [0, 1).
    schedule: 'one_shot', 'cubic' or 'fixed' (SCHEDULES), with `schedule_kwargs`.
    schedule_kwargs: e.g. {'step': 0} or {'start': 0, 'end': 2000, 'every': 200}.
    distribution: 'uniform', 'erk' or 'global'.
    policy: (regex, sparsity) pairs over leaf paths (0 keeps a leaf dense).
    nm: (N, M) for N:M sparsity instead of `sparsity` (then sparsity is 1 − N/M).
    scorer_kwargs: the scorer's options (num_grads, block_size, damping, ...).
    sparse_gradients: mask the gradients the inner transform sees.

  Returns:
    The Pruner.
  """
  if nm is not None:
    check_target_options(0.0, distribution, policy, nm)
    sparsity = 1.0 - nm[0] / nm[1]
  check_target_options(sparsity, distribution, policy, nm)
  make_schedule = lookup(SCHEDULES, schedule, 'pruning.schedule')
  sched_kwargs = check_kwargs(
    make_schedule, schedule_kwargs or {}, 'pruning.schedule_kwargs', schedule
  )
  sched = make_schedule(**sched_kwargs)
  initial = sched_kwargs.get('initial', 0.0)
  if initial > sparsity:
    raise ConfigError(
      f'pruning.schedule_kwargs.initial={initial} exceeds pruning.sparsity={sparsity}'
    )
  kwargs = dict(scorer_kwargs or {})
  make_scorer(scorer, None, kwargs)  # name and options, checked now
  return Pruner(
    scorer, kwargs, float(sparsity), sched, distribution,
    tuple((str(r), float(v)) for r, v in policy), None if nm is None else tuple(nm),
    bool(sparse_gradients),
  )  # fmt: skip


def prune(
  pruner: Pruner,
  params: PyTree,
  masks: PyTree,
  scorer_state: PyTree,
  sparsity,
  extras: Mapping[str, Any],
  key: jax.Array,
):
  """One pruning step: curvature, scores, new masks, compensation, masked params.

  Args:
    pruner: the options.
    params: the current params.
    masks: the current masks (`dense_masks(pruner.targets(params))` at first).
    scorer_state: the scorer's state (`scorer.init(params)` at first).
    sparsity: the model-level sparsity to reach (may be traced).
    extras: {'grad_fn', 'nll_fn'} as the scorer needs.
    key: a PRNG key (the gradients' minibatches, FLS's probes).

  Returns:
    (params, masks, scorer_state).
  """
  targets = pruner.targets(params)
  scorer = pruner.scorer(targets)
  scorer_state, curv = scorer.curvature(scorer_state, params, masks, extras, key)
  new_masks = masks_from_scores(targets, scorer.scores(curv, params), masks, sparsity)
  if scorer.compensate is not None:
    removed = jax.tree.map(lambda old, new: old & ~new, masks, new_masks)
    delta = scorer.compensate(curv, params, removed)
    params = jax.tree.map(jnp.add, params, delta)
  return apply_masks(params, new_masks), new_masks, scorer_state


class SparseState(NamedTuple):
  count: jax.Array  # int32 steps taken
  masks: PyTree  # bool, params-shaped (scalar True for dense leaves)
  scorer_state: PyTree
  inner_state: PyTree
  sparsity: jax.Array  # the model-level sparsity of the last mask update


def init_state(pruner: Pruner, params: PyTree, inner_state: PyTree) -> SparseState:
  targets = pruner.targets(params)
  return SparseState(
    jnp.zeros((), jnp.int32), dense_masks(targets), pruner.scorer(targets).init(params),
    inner_state, jnp.zeros((), jnp.float32),
  )  # fmt: skip


def wrap_optax(
  tx: optax.GradientTransformation, pruner: Pruner
) -> optax.GradientTransformationExtraArgs:
  """`tx` with pruning (see the module docstring).

  Args:
    tx: any optax transformation (extra arguments are forwarded to it, plus `masks`).
    pruner: from make_pruner.

  Returns:
    A GradientTransformationExtraArgs whose update takes optional keyword-only `key`
    (default: derived from the step count), `grad_fn` and `nll_fn` (as the scorer needs).
  """
  inner = optax.with_extra_args_support(tx)

  def init_fn(params):
    return init_state(pruner, params, inner.init(params))

  def update_fn(updates, state, params=None, **extra):
    if params is None:
      raise ValueError('pruning.wrap_optax: update needs params')
    targets = pruner.targets(params)
    scorer = pruner.scorer(targets)
    key = extra.get('key')
    if key is None:
      key = jax.random.fold_in(jax.random.key(0), state.count)
    k_observe, k_prune = jax.random.split(jax.random.fold_in(key, 0x5EED))
    extras = {k: extra.get(k) for k in EXTRAS}
    if pruner.schedule.name == 'fixed':  # masks set by the caller: no scoring traced at all
      masks = state.masks
      grads = apply_masks(updates, masks) if pruner.sparse_gradients else updates
      inner_updates, inner_state = inner.update(
        grads, state.inner_state, params, **{**extra, 'masks': masks}
      )
      out = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p), inner_updates, params, masks)
      count = optax.safe_int32_increment(state.count)
      return out, state._replace(count=count, inner_state=inner_state)
    scorer_state = scorer.observe(state.scorer_state, params, state.masks, extras, k_observe)

    def do_prune():
      sparsity = pruner.schedule.sparsity(state.count, pruner.sparsity)
      new_params, masks, s_state = prune(
        pruner, params, state.masks, scorer_state, sparsity, extras, k_prune
      )
      # Inside shard_map the branches' outputs must vary over the same mesh axes as the
      # state they replace; where(True, new, old) takes old's (and compiles to new).
      same = functools.partial(jax.tree.map, lambda new, old: jnp.where(True, new, old))
      masks, s_state = same(masks, state.masks), same(s_state, scorer_state)
      sparsity = same(sparsity, state.sparsity)
      return jax.tree.map(jnp.subtract, new_params, params), masks, s_state, sparsity

    def keep():
      zeros = jax.tree.map(jnp.zeros_like, params)
      return zeros, state.masks, scorer_state, state.sparsity

    delta, masks, scorer_state, sparsity = jax.lax.cond(
      pruner.schedule.is_update(state.count), do_prune, keep
    )
    grads = apply_masks(updates, masks) if pruner.sparse_gradients else updates
    inner_updates, inner_state = inner.update(
      grads, state.inner_state, params, **{**extra, 'masks': masks}
    )
    out = jax.tree.map(
      lambda d, u, p, m: jnp.where(m, d + u, -p), delta, inner_updates, params, masks
    )
    count = optax.safe_int32_increment(state.count)
    return out, SparseState(count, masks, scorer_state, inner_state, sparsity)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_sparse_state(opt_state: PyTree) -> SparseState | None:
  """The first SparseState inside an optimizer state (None if there is none)."""
  from fedcomp.optim.fishleg_transform import find_state

  return find_state(opt_state, SparseState)


def post_update(params: PyTree, opt_state: PyTree) -> PyTree:
  """OptimizerStep's post-update hook: the masks in `opt_state` applied to params."""
  state = find_sparse_state(opt_state)
  return params if state is None else apply_masks(params, state.masks)
