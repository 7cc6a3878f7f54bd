"""FedAvg with a server optimizer (FedAvg, FedAvgM, FedAdam, FedYogi, ...) and FedBN.

Each client starts from the server model, runs local optimizer steps and sends back the
pseudo-gradient Δ = server params − local params. The server aggregates the Δs (the
context's aggregator: weighted mean by examples or uniformly, or a robust rule) and applies
its own optax optimizer to the aggregate: `sgd(1.0)` is plain FedAvg, `sgd(η)` FedAvg with
server learning rate η, `momentum` FedAvgM, `adam`/`yogi`/`adagrad` the FedOpt family.

Model state (BatchNorm statistics) is averaged with the parameters by default: the server's
new statistics are the aggregate of the clients' final ones. With `local_batch_norm`
(FedBN) the normalisation layers' parameters and all statistics stay on each client (a row
of the per-client state table) and are never averaged; each client evaluates with its own.

References: McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data"; Reddi et al. 2021, "Adaptive Federated Optimization"; Li et al. 2021,
"FedBN: Federated Learning on Non-IID Features via Local Batch Normalization" (ICLR).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedcomp.algorithms.local_leaves import LocalLeaves
from fedcomp.core.algorithm import AlgorithmContext, ClientOutput, FederatedAlgorithm
from fedcomp.errors import ConfigError
from fedcomp.utils.param_paths import leaf_paths

WEIGHTINGS = ('examples', 'uniform')


class ServerState(NamedTuple):
  params: Any
  model_state: Any
  opt_state: Any


class LocalState(NamedTuple):
  params: Any
  model_state: Any
  opt_state: Any
  anchor: Any  # the server params this round started from


class Update(NamedTuple):
  params: Any  # server params − local params (zeros on local leaves)
  model_state: Any  # server model state − local model state (zeros when it is local)


def client_weight(weighting: str, num_examples: jax.Array) -> jax.Array:
  """Aggregation weight: the example count, or 1 for any client that has data."""
  n = num_examples.astype(jnp.float32)
  return n if weighting == 'examples' else (n > 0).astype(jnp.float32)


def check_weighting(weighting: str) -> None:
  if weighting not in WEIGHTINGS:
    raise ConfigError(
      f'config.algorithm.weighting={weighting!r} is unknown; known: {", ".join(WEIGHTINGS)}'
    )


def norm_leaves(ctx: AlgorithmContext) -> tuple[bool, ...]:
  """The mask of the model's normalisation-layer parameters (FedBN's local leaves)."""
  norm = set(ctx.model.norm_paths)
  return tuple(p in norm for p in leaf_paths(ctx.model.params))


def batch_norm_leaves(ctx: AlgorithmContext, local_batch_norm: bool) -> LocalLeaves:
  """FedBN's local part (normalisation layers and model state), or nothing."""
  if not local_batch_norm:
    return LocalLeaves()
  mask = norm_leaves(ctx)
  if not ctx.model.state and not any(mask):
    raise ConfigError('config.algorithm.local_batch_norm: the model has no normalisation layers')
  return LocalLeaves(mask, True)


def build(
  ctx: AlgorithmContext,
  *,
  weighting: str = 'examples',
  proximal_mu: float = 0.0,
  keep_client_opt_state: bool = False,
  local: LocalLeaves | None = None,
) -> FederatedAlgorithm:
  """The FedAvg family with some leaves kept local (FedPer's heads, FedBN's norms).

  Args:
    ctx: the algorithm context.
    weighting: 'examples' or 'uniform' client weights.
    proximal_mu: FedProx's μ >= 0 (μ/2·‖w − w_server‖² added to the local loss).
    keep_client_opt_state: keep each client's optimizer state in its table row.
    local: the leaves (and model state) that stay on the clients.

  Returns:
    The FederatedAlgorithm; its table row is a dict with 'opt_state' (if kept),
    'params' (the local leaves) and 'model_state' (if local), each present only when used.
  """
  check_weighting(weighting)
  local = local or LocalLeaves()
  # A traced μ (a sweep's runs axis) was checked as a number in its run's config, and
  # keeps the term (μ = 0 adds exact zeros).
  traced = isinstance(proximal_mu, jax.Array)
  if not traced and not proximal_mu >= 0:
    raise ConfigError(f'config.algorithm.mu={proximal_mu} must be >= 0')
  has_proximal = traced or proximal_mu != 0
  opt, server_tx = ctx.client_optimizer, ctx.server_tx

  def proximal(anchor):
    def term(params):  # over the shared leaves: local ones do not follow the server
      diff = local.zero_local(jax.tree.map(jnp.subtract, params, anchor))
      return 0.5 * proximal_mu * sum(jnp.sum(d**2) for d in jax.tree.leaves(diff))

    return term

  def row_of(params, model_state, opt_state):
    row = {}
    if keep_client_opt_state:
      row['opt_state'] = opt_state
    if local.mask is not None:
      row['params'] = local.take(params)
    if local.state:
      row['model_state'] = model_state
    return row

  def client_model(server, row):
    params = local.merge(server.params, row['params']) if local.mask is not None else server.params
    return params, row['model_state'] if local.state else server.model_state

  def server_init(params, model_state):
    return ServerState(params, model_state, server_tx.init(params))

  def client_state_init(params, model_state):
    return row_of(params, model_state, opt.init(params) if keep_client_opt_state else None)

  def client_init(server, row, key):
    del key
    params, model_state = client_model(server, row)
    opt_state = row['opt_state'] if keep_client_opt_state else opt.init(params)
    return LocalState(params, model_state, opt_state, server.params)

  def client_step(local_state, batch, key):
    params, model_state, opt_state, sums, _ = ctx.local_step(
      local_state.params,
      local_state.model_state,
      local_state.opt_state,
      batch,
      key,
      extra_loss=proximal(local_state.anchor) if has_proximal else None,
    )
    return LocalState(params, model_state, opt_state, local_state.anchor), sums

  def client_final(server, local_state, row, num_examples):
    del row
    delta = jax.tree.map(jnp.subtract, server.params, local_state.params)
    state_delta = jax.tree.map(jnp.subtract, server.model_state, local_state.model_state)
    if local.state:
      state_delta = jax.tree.map(jnp.zeros_like, state_delta)
    update = Update(local.zero_local(delta), state_delta)
    new_row = row_of(local_state.params, local_state.model_state, local_state.opt_state)
    return ClientOutput(update, client_weight(weighting, num_examples), new_row)

  def server_update(server, aggregate):
    updates, opt_state = server_tx.update(aggregate.params, server.opt_state, server.params)
    model_state = jax.tree.map(jnp.subtract, server.model_state, aggregate.model_state)
    return ServerState(optax.apply_updates(server.params, updates), model_state, opt_state)

  def global_model(server, table):
    """The server's shared leaves with the mean over all clients (also those never sampled,
    whose rows hold the initial values) of the local leaves and model state."""
    keys = [k for k in ('params', 'model_state') if k in table]
    return client_model(server, {k: jax.tree.map(lambda t: t.mean(0), table[k]) for k in keys})

  return FederatedAlgorithm(
    server_init=server_init,
    client_state_init=client_state_init,
    client_init=client_init,
    client_step=client_step,
    client_final=client_final,
    server_update=server_update,
    server_model=lambda server: (server.params, server.model_state),
    reducer=ctx.aggregator,
    personal_model=client_model if local.any else None,
    global_model=global_model if local.any else None,
  )


def make(
  ctx: AlgorithmContext,
  /,
  *,
  weighting: str = 'examples',
  keep_client_opt_state: bool = False,
  local_batch_norm: bool = False,
) -> FederatedAlgorithm:
  """Builds FedAvg (with the context's server optimizer and aggregator).

  Args:
    ctx: the algorithm context.
    weighting: 'examples' (each client weighted by its example count) or 'uniform'
      (config.algorithm.weighting).
    keep_client_opt_state: keep each client's optimizer state (e.g. FishLeg's λ, Adam's
      moments) in its row of the per-client state table across rounds, instead of a fresh
      state every round (config.algorithm.keep_client_opt_state).
    local_batch_norm: FedBN: normalisation layers and their statistics stay on each client
      (config.algorithm.local_batch_norm).

  Returns:
    The FederatedAlgorithm.
  """
  local = batch_norm_leaves(ctx, local_batch_norm)
  return build(ctx, weighting=weighting, keep_client_opt_state=keep_client_opt_state, local=local)
