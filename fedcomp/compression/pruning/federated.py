"""Pruning inside federated training: server-side magnitude and curvature-aware FLS.

`with_pruning(algorithm, pruner, client_curvature)` wraps any FederatedAlgorithm whose
local state has `params` and `opt_state` fields (FedAvg and its family, FedProx, SCAFFOLD,
FedPer) and whose server state has `params`:

- the server state carries the masks, the round count and a pending compensation vector;
- on the schedule's rounds (counted in server updates, under `lax.cond`) the server scores
  the new global model and prunes it to the scheduled sparsity:
    'magnitude': |θ| (jaxpruner's FedJAX baseline: magnitude on a schedule over rounds);
    'fishleg': every client keeps its FishLeg Q in its row of the per-client table
      (client_tx 'fishleg' with keep_client_opt_state) and sends diag(Q_k) with its update;
      the server averages them with the update's weights into d̄ = diag(Q̄),
      Q̄ = Σ_k w_k Q_k / Σ_k w_k, scores ρ = θ²/(2d̄) and keeps v = θ ⊙ 1_P / d̄ as the
      pending compensation, so that the compensation below is OBS's −Q̄v with the same Q̄;
- masks travel to the clients with the server state: each client's optimizer is wrapped
  (`client_optimizer`) so its masked weights stay exactly zero, its gradients are masked
  and its FishLeg aux loss is gated by the masks (Q never fits pruned weights);
- compensation: in the round after a pruning step each client starts from
  θ − Q_k v (masked), so the aggregated update carries −Σ_k w_k Q_k v / Σ_k w_k = −Q̄v
  without Q ever leaving a client. This is exact for FedAvg with the server optimizer
  sgd(1) (the compensation is part of the pseudo-gradient, so a server learning rate
  scales it and server momentum repeats it) and when the cohort of the pruning round and of
  the next one hold the same clients (all clients in every round, as configs/fed_prune.py);
  a client whose Q was never trained contributes Q = (1/γ)I.
- the per-client table keeps scalar masks (the masks come from the server each round).

References: jaxpruner (Lee et al. 2023), baselines/fedjax; McGowan et al. 2024 (FishLeg
Surgeon); Hassibi & Stork 1993 (OBS).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedcomp.compression.pruning import (
  Pruner,
  SparseState,
  find_sparse_state,
  post_update,
  schedules,
  wrap_optax,
)
from fedcomp.compression.pruning.targets import apply_masks, dense_masks, masks_from_scores
from fedcomp.core.algorithm import FederatedAlgorithm
from fedcomp.core.optimizer_step import OptimizerStep
from fedcomp.errors import ConfigError
from fedcomp.optim import fishleg_transform

PyTree = Any
FEDERATED_SCORERS = ('magnitude', 'fishleg')


class PrunedServer(NamedTuple):
  inner: PyTree  # the wrapped algorithm's server state
  masks: PyTree
  count: jax.Array  # server updates so far
  pending: PyTree  # v of the last pruning step (zeros when none is pending)
  sparsity: jax.Array


class PrunedUpdate(NamedTuple):
  inner: PyTree  # the wrapped algorithm's client update
  diag_q: PyTree  # diag(Q_k) ('fishleg'; () otherwise)


def _scalar_masks(row: PyTree) -> PyTree:
  """A table row whose optimizer states keep scalar masks (the server sends the masks)."""

  def shrink(x):
    if isinstance(x, SparseState):
      return x._replace(masks=jax.tree.map(lambda m: jnp.ones((), bool), x.masks))
    return x

  return jax.tree.map(shrink, row, is_leaf=lambda x: isinstance(x, SparseState))


def check_federated_pruner(pruner: Pruner) -> None:
  if pruner.scorer_name not in FEDERATED_SCORERS:
    raise ConfigError(
      f'config.pruning.scorer={pruner.scorer_name!r} cannot run in federated training; known: '
      f'{", ".join(FEDERATED_SCORERS)}'
    )


def client_optimizer(step: OptimizerStep, pruner: Pruner) -> OptimizerStep:
  """The clients' optimizer with masks that the server sets (the schedule never fires)."""
  fixed = pruner._replace(scorer_name='magnitude', scorer_kwargs={}, schedule=schedules.fixed())
  return OptimizerStep(wrap_optax(step.tx, fixed), post_update=post_update)


def _fishleg_state(opt_state):
  state = fishleg_transform.find_state(opt_state, fishleg_transform.ScaleByFishLegState)
  if state is None:
    raise ConfigError(
      "config.pruning.scorer='fishleg' needs the clients' FishLeg Q: set "
      "config.client_tx_name='fishleg' and config.algorithm.keep_client_opt_state=True"
    )
  return state


def with_pruning(
  alg: FederatedAlgorithm,
  pruner: Pruner,
  inverse_fisher_of=None,
) -> FederatedAlgorithm:
  """The algorithm with server-side pruning (see the module docstring).

  Args:
    alg: the algorithm (built with `client_optimizer(...)` as its clients' optimizer).
    pruner: the options; its schedule counts rounds (server updates from 0).
    inverse_fisher_of: params -> the clients' FishLeg InverseFisher structure (needed for
      the 'fishleg' scorer: the client_tx's blocks options).

  Returns:
    The FederatedAlgorithm.
  """
  check_federated_pruner(pruner)
  curvature = pruner.scorer_name == 'fishleg'

  def client_q(row_or_local_opt_state, params):
    lam = _fishleg_state(row_or_local_opt_state).lam
    return inverse_fisher_of(params), lam

  def server_init(params, model_state):
    targets = pruner.targets(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    return PrunedServer(
      alg.server_init(params, model_state), dense_masks(targets), jnp.zeros((), jnp.int32),
      zeros, jnp.zeros((), jnp.float32),
    )  # fmt: skip

  def client_init(server, row, key):
    local = alg.client_init(server.inner, row, key)
    params = local.params
    if curvature:
      q, lam = client_q(local.opt_state, params)
      params = jax.tree.map(jnp.subtract, params, q.matvec(lam, server.pending))
    opt_state = local.opt_state
    sparse = find_sparse_state(opt_state)
    if not isinstance(opt_state, SparseState) or sparse is None:
      raise ConfigError('federated pruning: the clients optimizer is not pruning.client_optimizer')
    opt_state = opt_state._replace(masks=server.masks)
    return local._replace(params=apply_masks(params, server.masks), opt_state=opt_state)

  def client_final(server, local, row, num_examples):
    out = alg.client_final(server.inner, local, row, num_examples)
    diag_q = ()
    if curvature:
      q, lam = client_q(local.opt_state, local.params)
      diag_q = q.diagonal(lam)
    return out._replace(update=PrunedUpdate(out.update, diag_q), state=_scalar_masks(out.state))

  def server_update(server, aggregate):
    inner = alg.server_update(server.inner, aggregate.inner)
    params, _ = alg.server_model(inner)
    targets = pruner.targets(params)

    def prune_now():
      sparsity = pruner.schedule.sparsity(server.count, pruner.sparsity)
      if curvature:
        d = jax.tree.map(lambda x: jnp.maximum(x, 1e-30), aggregate.diag_q)
        scores = jax.tree.map(lambda p, x: p**2 / (2.0 * x), params, d)
      else:
        scores = jax.tree.map(jnp.abs, params)
      masks = masks_from_scores(targets, scores, server.masks, sparsity)
      if curvature:
        removed = jax.tree.map(lambda old, new: old & ~new, server.masks, masks)
        pending = jax.tree.map(lambda p, x, r: jnp.where(r, p / x, 0.0), params, d, removed)
      else:
        pending = jax.tree.map(jnp.zeros_like, params)
      return masks, pending, sparsity

    def keep():
      return server.masks, jax.tree.map(jnp.zeros_like, params), server.sparsity

    masks, pending, sparsity = jax.lax.cond(
      pruner.schedule.is_update(server.count), prune_now, keep
    )
    inner = inner._replace(params=apply_masks(params, masks))
    count = optax.safe_int32_increment(server.count)
    return PrunedServer(inner, masks, count, pending, sparsity)

  def personal(fn):
    return None if fn is None else (lambda server, x: fn(server.inner, x))

  return FederatedAlgorithm(
    server_init=server_init,
    client_state_init=lambda params, state: _scalar_masks(alg.client_state_init(params, state)),
    client_init=client_init,
    client_step=alg.client_step,
    client_final=client_final,
    server_update=server_update,
    server_model=lambda server: alg.server_model(server.inner),
    reducer=alg.reducer,  # reducers map over any update pytree: PrunedUpdate as a whole
    personal_model=personal(alg.personal_model),
    global_model=personal(alg.global_model),
    client_table=alg.client_table,
  )
