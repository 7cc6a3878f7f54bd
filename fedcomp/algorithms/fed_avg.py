"""FedAvg with a server optimizer (FedAvg, FedAvgM, FedAdam, FedYogi, ...).

Each client starts from the server params, runs local optimizer steps and sends
back the pseudo-gradient Δ = server params − local params. The server averages
the Δs (weighted by examples, or uniformly) and applies its own optax
optimizer to the mean: `sgd(1.0)` is plain FedAvg, `sgd(η)` FedAvg with server
learning rate η, `momentum` FedAvgM, `adam`/`yogi`/`adagrad` the FedOpt family.

References: McMahan et al. 2017, "Communication-Efficient Learning of Deep
Networks from Decentralized Data"; Reddi et al. 2021, "Adaptive Federated
Optimization".
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedcomp.core.algorithm import ClientOutput, FederatedAlgorithm
from fedcomp.registry import ConfigError

WEIGHTINGS = ('examples', 'uniform')


class ServerState(NamedTuple):
  params: Any
  opt_state: Any


class LocalState(NamedTuple):
  params: Any
  opt_state: Any
  anchor: Any  # the server params this round started from


def client_weight(weighting: str, num_examples: jax.Array) -> jax.Array:
  """Aggregation weight: the example count, or 1 for any client that has data."""
  n = num_examples.astype(jnp.float32)
  return n if weighting == 'examples' else (n > 0).astype(jnp.float32)


def optimizer_update(tx, grads, opt_state, params, sampled_nll, batch, key):
  """tx.update, passing `nll_fn` and `key` to optimizers that take extra arguments.

  Args:
    tx: the optax transformation.
    grads: the gradients.
    opt_state: its state.
    params: the current params.
    sampled_nll: None, or (params, batch, key) -> NLL of model-sampled targets.
    batch: the minibatch the gradients came from.
    key: the step's key; the sampled targets use fold_in(key, 1).

  Returns:
    (updates, new opt_state).
  """
  if sampled_nll is None or not isinstance(tx, optax.GradientTransformationExtraArgs):
    return tx.update(grads, opt_state, params)

  def nll_fn(p, k):
    return sampled_nll(p, batch, k)

  return tx.update(grads, opt_state, params, nll_fn=nll_fn, key=jax.random.fold_in(key, 1))


def check_weighting(weighting: str) -> None:
  if weighting not in WEIGHTINGS:
    raise ConfigError(
      f'config.algorithm.weighting={weighting!r} is unknown; known: {", ".join(WEIGHTINGS)}'
    )


def make(
  *,
  loss_fn: Callable,
  client_tx: optax.GradientTransformation,
  server_tx: optax.GradientTransformation,
  weighting: str = 'examples',
  proximal_mu: float = 0.0,
  keep_client_opt_state: bool = False,
  sampled_nll: Callable | None = None,
) -> FederatedAlgorithm:
  """Builds FedAvg (and, with proximal_mu > 0, FedProx's local objective).

  Args:
    loss_fn: loss_fn(params, batch, key) -> (mean loss, sums).
    client_tx: the local optimizer (reset every round).
    server_tx: the server optimizer applied to the mean pseudo-gradient.
    weighting: 'examples' (each client weighted by its example count) or
      'uniform'.
    proximal_mu: FedProx's μ: adds μ/2·‖w − w_server‖² to the local loss.
    keep_client_opt_state: keep each client's optimizer state (e.g. FishLeg's λ,
      Adam's moments) in its row of the per-client state table across rounds,
      instead of a fresh state every round (config.algorithm.keep_client_opt_state).
    sampled_nll: (params, batch, key) -> NLL of model-sampled targets, passed to the
      client optimizer as `nll_fn` with a `key` (curvature-aware optimizers such as
      FishLeg); the federated trainer sets it.

  Returns:
    The FederatedAlgorithm.
  """
  check_weighting(weighting)
  if proximal_mu < 0:
    raise ConfigError(f'config.algorithm.mu={proximal_mu} must be >= 0')

  def local_loss(params, anchor, batch, key):
    loss, stats = loss_fn(params, batch, key)
    if proximal_mu:
      sq = sum(
        jnp.sum((p - a) ** 2) for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(anchor))
      )
      loss = loss + 0.5 * proximal_mu * sq
    return loss, stats

  grad_fn = jax.grad(local_loss, has_aux=True)

  def server_init(params):
    return ServerState(params, server_tx.init(params))

  def client_init(server, row, key):
    del key
    opt_state = row if keep_client_opt_state else client_tx.init(server.params)
    return LocalState(server.params, opt_state, server.params)

  def client_step(local, batch, key):
    grads, stats = grad_fn(local.params, local.anchor, batch, key)
    updates, opt_state = optimizer_update(
      client_tx, grads, local.opt_state, local.params, sampled_nll, batch, key
    )
    params = optax.apply_updates(local.params, updates)
    return LocalState(params, opt_state, local.anchor), stats

  def client_final(server, local, row, num_examples):
    delta = jax.tree.map(lambda s, p: s - p, server.params, local.params)
    new_row = local.opt_state if keep_client_opt_state else row
    return ClientOutput(delta, client_weight(weighting, num_examples), new_row)

  def server_update(server, mean_delta):
    updates, opt_state = server_tx.update(mean_delta, server.opt_state, server.params)
    return ServerState(optax.apply_updates(server.params, updates), opt_state)

  return FederatedAlgorithm(
    server_init=server_init,
    client_state_init=lambda params: client_tx.init(params) if keep_client_opt_state else {},
    client_init=client_init,
    client_step=client_step,
    client_final=client_final,
    server_update=server_update,
    server_params=lambda server: server.params,
  )
