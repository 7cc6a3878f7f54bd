"""HoVeFL: hybrid horizontal–vertical federated learning of one split model.

Two populations train the same split model (`split_mlp`, `split_cnn`: a bottom per party,
a top). Horizontal clients hold whole examples (all features) of their own, non-IID
samples; a vertical group holds the same samples across P parties, each party's bottom
seeing only its feature slice, and the group's top joining them. Each vertical group is one
client lane of the engine (its parties' forward and backward in one function), so a round
is still one compiled call. Every client trains with one optimizer per part (the
`client_tx` applied separately to each bottom and the top, as the authors' per-part
optimizers); starting from the global model each round (FedAvg).

Aggregation by population (`weighting`):
- 'populations': the mean of the horizontal models and the mean of the vertical groups'
  models, then 50/50 (the authors' `main_fed.py`; a population without clients is left
  out);
- 'examples': one mean over all clients weighted by their examples (FedAvg's);
- 'uniform': the plain mean over all local models (the authors' `main_fed_baseline.py`).
`accumulate_locals=True` reproduces the authors' lists of local models that are never
cleared between rounds: each population's mean runs over every local model produced since
round 1 (kept as running weighted sums in the server state), not only this round's.

Devices: `num_vertical` counts vertical devices (parties), P per group, so
`num_horizontal + num_vertical` is the number of edge devices as the letter counts them
(12 + 6 = 12 horizontal clients and 3 two-party groups); the engine has
`num_horizontal + num_vertical / P` client lanes, horizontal first.

References: Li et al. 2025, "A Novel Framework of Horizontal-Vertical Hybrid Federated
Learning for EdgeIoT" (IEEE Networking Letters; arXiv 2410.01644) and its public code.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedcomp.algorithms import fed_avg
from fedcomp.core.algorithm import AlgorithmContext, ClientOutput, FederatedAlgorithm
from fedcomp.core.optimizer_step import OptimizerStep
from fedcomp.core.reducers import TINY, combine_groups, grouped_sums
from fedcomp.errors import ConfigError
from fedcomp.models.split import part_names

WEIGHTINGS = ('populations', 'examples', 'uniform')
HORIZONTAL, VERTICAL = 0, 1


class ServerState(NamedTuple):
  params: Any
  model_state: Any
  opt_state: Any
  sums: Any  # per population Σ w · (local params, local model state) since round 1, or ()
  weights: jax.Array  # (2,) Σ w of those local models

  @property
  def inner(self) -> fed_avg.ServerState:
    return fed_avg.ServerState(self.params, self.model_state, self.opt_state)


def parties(params) -> int:
  """P, the number of bottoms of a split model's params (1 for any other model)."""
  names = part_names(params)
  return len(names) - 1 if names else 1


def lanes(num_horizontal: int, num_vertical: int, num_parties: int) -> tuple[int, int]:
  """(horizontal clients, vertical groups) of the engine, checked.

  Raises:
    ConfigError: negative counts, no devices, or vertical devices not a multiple of P.
  """
  for key, v in (('num_horizontal', num_horizontal), ('num_vertical', num_vertical)):
    if int(v) != v or v < 0:
      raise ConfigError(f'config.algorithm.{key}={v} must be an integer >= 0')
  if num_horizontal + num_vertical == 0:
    raise ConfigError('config.algorithm: num_horizontal + num_vertical must be > 0')
  if num_vertical % num_parties:
    raise ConfigError(
      f'config.algorithm.num_vertical={num_vertical} devices must be a multiple of the '
      f"model's {num_parties} parties (one vertical group = {num_parties} devices)"
    )
  return int(num_horizontal), int(num_vertical) // num_parties


def per_part_optimizer(step: OptimizerStep, params) -> OptimizerStep:
  """The client optimizer applied separately to each part of a split model (its own state
  per part, e.g. its own global-norm clipping); other models keep the one optimizer."""
  names = part_names(params)
  if not names:
    return step
  labels = {name: jax.tree.map(lambda _, n=name: n, params[name]) for name in names}
  tx = optax.multi_transform({name: step.tx for name in names}, labels)
  return step._replace(tx=tx)


def make(
  ctx: AlgorithmContext,
  /,
  *,
  num_horizontal: int | None = None,
  num_vertical: int = 0,
  weighting: str = 'populations',
  accumulate_locals: bool = False,
) -> FederatedAlgorithm:
  """Builds HoVeFL.

  Args:
    ctx: the algorithm context (its model a split model when num_vertical > 0).
    num_horizontal: horizontal devices = clients 0..H-1 (None: every client).
    num_vertical: vertical devices, P per group (config.algorithm.num_vertical).
    weighting: 'populations', 'examples' or 'uniform' (see the module docstring).
    accumulate_locals: average every local model since round 1 (the authors' code).

  Returns:
    The FederatedAlgorithm; its table row holds each client's 'population' (0 horizontal,
    1 vertical) besides FedAvg's.
  """
  if weighting not in WEIGHTINGS:
    raise ConfigError(
      f'config.algorithm.weighting={weighting!r} is unknown; known: {", ".join(WEIGHTINGS)}'
    )
  num_parties = parties(ctx.model.params)
  if num_vertical and not part_names(ctx.model.params):
    raise ConfigError(
      'config.algorithm.num_vertical > 0 needs a split model (model_name split_mlp or '
      'split_cnn): vertical parties each hold a bottom'
    )
  # num_horizontal=None: every client of the partition is horizontal (known at init).
  _, groups = lanes(1 if num_horizontal is None else num_horizontal, num_vertical, num_parties)
  ctx = dataclasses.replace(
    ctx, client_optimizer=per_part_optimizer(ctx.client_optimizer, ctx.model.params)
  )
  inner = fed_avg.build(ctx, weighting='examples' if weighting == 'examples' else 'uniform')
  gamma = jnp.ones(2)

  def client_table(table, num_clients):
    h = num_clients if num_horizontal is None else num_horizontal
    if h + groups != num_clients:
      raise ConfigError(
        f"hovefl: {h} horizontal clients + {groups} vertical groups != the partition's "
        f'{num_clients} clients'
      )
    population = jnp.where(jnp.arange(num_clients) < h, HORIZONTAL, VERTICAL).astype(jnp.int32)
    return {**table, 'population': population}

  def client_state_init(params, model_state):
    return {**inner.client_state_init(params, model_state), 'population': jnp.int32(HORIZONTAL)}

  def strip(row):
    return {k: v for k, v in row.items() if k != 'population'}

  def client_init(server, row, key):
    return inner.client_init(server.inner, strip(row), key)

  def client_final(server, local_state, row, num_examples):
    out = inner.client_final(server.inner, local_state, strip(row), num_examples)
    state = {**out.state, 'population': row['population']}
    return ClientOutput(out.update, out.weight, state, row['population'])

  def combine(sums, weights):
    if weighting == 'populations':
      return combine_groups(sums, weights, gamma)
    pooled = jax.tree.map(lambda x: x[0] + x[1], sums)
    inverse = 1.0 / jnp.maximum(weights.sum(), TINY)
    return jax.tree.map(lambda x: x * inverse.astype(x.dtype), pooled)

  def server_init(params, model_state):
    s = inner.server_init(params, model_state)
    sums = ()
    if accumulate_locals:
      stacked = fed_avg.Update(params, model_state)
      sums = jax.tree.map(lambda a: jnp.zeros((2, *a.shape), a.dtype), stacked)
    return ServerState(*s, sums, jnp.zeros(2, jnp.float32))

  def server_update(server, aggregate):
    delta_sums, weights = aggregate
    if not accumulate_locals:
      new = inner.server_update(server.inner, combine(delta_sums, weights))
      return ServerState(*new, (), server.weights)
    # Σ_{i∈g} w_i · local_i = W_g · global − Σ_{i∈g} w_i Δ_i; add this round's to the lists'.
    anchor = fed_avg.Update(server.params, server.model_state)
    sums = jax.tree.map(
      lambda acc, a, d: acc + weights.astype(a.dtype).reshape(-1, *[1] * a.ndim) * a - d,
      server.sums, anchor, delta_sums,
    )  # fmt: skip
    total = server.weights + weights
    target = combine(sums, total)  # each population's mean over all its local models
    delta = jax.tree.map(jnp.subtract, anchor, target)
    return ServerState(*inner.server_update(server.inner, delta), sums, total)

  return FederatedAlgorithm(
    server_init=server_init,
    client_state_init=client_state_init,
    client_init=client_init,
    client_step=inner.client_step,
    client_final=client_final,
    server_update=server_update,
    server_model=lambda server: inner.server_model(server.inner),
    reducer=grouped_sums(2),
    client_table=client_table,
  )


def check_config(config, model) -> None:
  """The partition a HoVeFL run needs: `partition_name='hovefl'` with num_clients = H + G
  and num_horizontal = H (configs/hovefl.py sets them from the device counts).

  Args:
    config: the federated config (algorithm, partition_name, partition, cohort_size).
    model: the BuiltModel (its parties).

  Raises:
    ConfigError, in one line, naming the mismatch.
  """
  a = config.algorithm
  h, v = a.get('num_horizontal'), a.get('num_vertical', 0) or 0
  p = config.partition
  h = p.num_clients if h is None else h
  h, groups = lanes(h, v, parties(model.params))
  if config.partition_name != 'hovefl':
    raise ConfigError(
      f"config.partition_name={config.partition_name!r}: hovefl needs partition_name='hovefl' "
      '(horizontal clients non-IID, vertical groups IID)'
    )
  if p.get('num_horizontal', 0) != h or p.num_clients != h + groups:
    raise ConfigError(
      f'config.partition (num_clients={p.num_clients}, num_horizontal='
      f'{p.get("num_horizontal", 0)}) must be {h + groups} and {h}: {h} horizontal clients '
      f'+ {v} vertical devices / {parties(model.params)} parties'
    )
  if config.get('aggregator_name', 'mean') != 'mean':
    raise ConfigError(
      f'config.aggregator_name={config.aggregator_name!r}: hovefl aggregates by population '
      "(config.algorithm.weighting); leave aggregator_name='mean'"
    )
  if config.cohort_size != h + groups:
    raise ConfigError(
      f'config.cohort_size={config.cohort_size}: every HoVeFL client trains every round '
      f'(set it to {h + groups})'
    )
