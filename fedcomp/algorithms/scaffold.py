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

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedcomp.algorithms import fed_avg
from fedcomp.core.algorithm import AlgorithmContext, ClientOutput, FederatedAlgorithm
from fedcomp.errors import ConfigError


class ServerState(NamedTuple):
  params: Any
  model_state: Any
  opt_state: Any
  control: Any  # c


class LocalState(NamedTuple):
  params: Any
  model_state: Any
  opt_state: Any
  correction: Any  # c − c_i, fixed during the round
  grad_sum: Any  # Σ raw minibatch gradients
  steps: jax.Array  # number of non-empty local steps


class Update(NamedTuple):
  delta: Any  # x − y
  model_state: Any  # server model state − local model state
  control_delta: Any  # c_i⁺ − c_i


def make(ctx: AlgorithmContext, /, *, weighting: str = 'uniform') -> FederatedAlgorithm:
  """Builds SCAFFOLD.

  Args:
    ctx: the algorithm context; its cohort_fraction is |S|/N, the cohort's share of the
      population (config.cohort_size / config.partition.num_clients), and its client
      optimizer should be plain SGD to reproduce the paper.
    weighting: how client updates (both x − y and c_i⁺ − c_i) are averaged: 'uniform' as
      in the paper, or 'examples' (config.algorithm.weighting).

  Returns:
    The FederatedAlgorithm; its table row is the client's control variate c_i.
  """
  fed_avg.check_weighting(weighting)
  cohort_fraction = ctx.cohort_fraction
  if not 0.0 < cohort_fraction <= 1.0:
    raise ConfigError(f'SCAFFOLD cohort_fraction={cohort_fraction} must be in (0, 1]')
  opt, server_tx = ctx.client_optimizer, ctx.server_tx

  def zeros(params):
    return jax.tree.map(jnp.zeros_like, params)

  def server_init(params, model_state):
    return ServerState(params, model_state, server_tx.init(params), zeros(params))

  def client_init(server, row, key):
    del key
    correction = jax.tree.map(jnp.subtract, server.control, row)
    p = server.params
    steps = jnp.zeros((), jnp.int32)
    return LocalState(p, server.model_state, opt.init(p), correction, zeros(p), steps)

  def client_step(local, batch, key):
    params, model_state, opt_state, sums, grads = ctx.local_step(
      local.params,
      local.model_state,
      local.opt_state,
      batch,
      key,
      correct_grads=lambda g: jax.tree.map(jnp.add, g, local.correction),
    )
    grad_sum = jax.tree.map(jnp.add, local.grad_sum, grads)
    new = LocalState(params, model_state, opt_state, local.correction, grad_sum, local.steps + 1)
    return new, sums

  def client_final(server, local, row, num_examples):
    steps = jnp.maximum(local.steps, 1).astype(jnp.float32)
    new_row = jax.tree.map(
      lambda s, c: jnp.where(local.steps > 0, s / steps, c), local.grad_sum, row
    )
    delta = jax.tree.map(jnp.subtract, server.params, local.params)
    state_delta = jax.tree.map(jnp.subtract, server.model_state, local.model_state)
    control_delta = jax.tree.map(jnp.subtract, new_row, row)
    weight = fed_avg.client_weight(weighting, num_examples)
    return ClientOutput(Update(delta, state_delta, control_delta), weight, new_row)

  def server_update(server, mean):
    updates, opt_state = server_tx.update(mean.delta, server.opt_state, server.params)
    control = jax.tree.map(lambda c, d: c + cohort_fraction * d, server.control, mean.control_delta)
    model_state = jax.tree.map(jnp.subtract, server.model_state, mean.model_state)
    params = optax.apply_updates(server.params, updates)
    return ServerState(params, model_state, opt_state, control)

  return FederatedAlgorithm(
    server_init=server_init,
    client_state_init=lambda params, model_state: zeros(params),
    client_init=client_init,
    client_step=client_step,
    client_final=client_final,
    server_update=server_update,
    server_model=lambda server: (server.params, server.model_state),
    reducer=ctx.aggregator,
  )
