"""SCAFFOLD: FedAvg with control variates that correct client drift.

The server keeps a control variate c and every client its own c_i (a row of the
per-client state table, zeros at first). Local steps follow the corrected
gradient g(y) + c − c_i. Afterwards the client sets c_i⁺ to the mean of the raw
local minibatch gradients it computed, which is exactly the paper's option II,
c_i − c + (x − y)/(K·η_l), when the client optimizer is plain SGD (for other
client optimizers it is the same average-gradient estimate). The server applies
its optimizer to the mean of x − y and moves c by |S|/N times the mean of
c_i⁺ − c_i.

References: Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging
for Federated Learning" (ICML), Algorithm 1, option II.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedcomp.algorithms import fed_avg
from fedcomp.core.algorithm import ClientOutput, FederatedAlgorithm
from fedcomp.errors import ConfigError


class ServerState(NamedTuple):
  params: Any
  opt_state: Any
  control: Any  # c


class LocalState(NamedTuple):
  params: Any
  opt_state: Any
  correction: Any  # c − c_i, fixed during the round
  grad_sum: Any  # Σ raw minibatch gradients
  steps: jax.Array  # number of non-empty local steps


class Update(NamedTuple):
  delta: Any  # x − y
  control_delta: Any  # c_i⁺ − c_i


def make(
  *,
  loss_fn: Callable,
  client_tx: optax.GradientTransformation,
  server_tx: optax.GradientTransformation,
  weighting: str = 'uniform',
  cohort_fraction: float = 1.0,
  sampled_nll: Callable | None = None,
) -> FederatedAlgorithm:
  """Builds SCAFFOLD.

  Args:
    loss_fn: loss_fn(params, batch, key) -> (mean loss, sums).
    client_tx: the local optimizer (plain SGD reproduces the paper).
    server_tx: the server optimizer applied to the mean of x − y (sgd(η_g)).
    weighting: how client updates (both x − y and c_i⁺ − c_i) are averaged:
      'uniform' as in the paper, or 'examples'.
    cohort_fraction: |S|/N, the cohort's share of the population; the federated
      trainer sets it from config.cohort_size / config.partition.num_clients.
    sampled_nll: see fed_avg.make (curvature-aware client optimizers).

  Returns:
    The FederatedAlgorithm; its table row is the client's control variate c_i.
  """
  fed_avg.check_weighting(weighting)
  if not 0.0 < cohort_fraction <= 1.0:
    raise ConfigError(f'SCAFFOLD cohort_fraction={cohort_fraction} must be in (0, 1]')
  grad_fn = jax.grad(loss_fn, has_aux=True)

  def zeros(params):
    return jax.tree.map(jnp.zeros_like, params)

  def server_init(params):
    return ServerState(params, server_tx.init(params), zeros(params))

  def client_init(server, row, key):
    del key
    correction = jax.tree.map(jnp.subtract, server.control, row)
    p = server.params
    return LocalState(p, client_tx.init(p), correction, zeros(p), jnp.zeros((), jnp.int32))

  def client_step(local, batch, key):
    grads, stats = grad_fn(local.params, batch, key)
    corrected = jax.tree.map(jnp.add, grads, local.correction)
    updates, opt_state = fed_avg.optimizer_update(
      client_tx, corrected, local.opt_state, local.params, sampled_nll, batch, key
    )
    params = optax.apply_updates(local.params, updates)
    grad_sum = jax.tree.map(jnp.add, local.grad_sum, grads)
    return LocalState(params, opt_state, local.correction, grad_sum, local.steps + 1), stats

  def client_final(server, local, row, num_examples):
    steps = jnp.maximum(local.steps, 1).astype(jnp.float32)
    new_row = jax.tree.map(
      lambda s, c: jnp.where(local.steps > 0, s / steps, c), local.grad_sum, row
    )
    delta = jax.tree.map(jnp.subtract, server.params, local.params)
    control_delta = jax.tree.map(jnp.subtract, new_row, row)
    weight = fed_avg.client_weight(weighting, num_examples)
    return ClientOutput(Update(delta, control_delta), weight, new_row)

  def server_update(server, mean):
    updates, opt_state = server_tx.update(mean.delta, server.opt_state, server.params)
    control = jax.tree.map(lambda c, d: c + cohort_fraction * d, server.control, mean.control_delta)
    return ServerState(optax.apply_updates(server.params, updates), opt_state, control)

  return FederatedAlgorithm(
    server_init=server_init,
    client_state_init=zeros,
    client_init=client_init,
    client_step=client_step,
    client_final=client_final,
    server_update=server_update,
    server_params=lambda server: server.params,
  )
