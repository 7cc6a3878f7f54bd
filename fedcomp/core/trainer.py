"""A reusable federated trainer: small functions over a built `Setup`.

    setup = fedcomp.experiments.federated.build(config)   # data, model, algorithm, round
    state = trainer.initial_state(setup)
    for r, state, metrics in trainer.train_rounds(setup, state, 1, 10):
      ...                                                 # log, checkpoint, stop early
    scores = trainer.evaluate(setup, state)

An outer loop (an architecture search, a distillation schedule, a sweep) drives training
in-process through these; `fedcomp.experiments.federated.run` adds the run directory
(config guard, resume, metrics, checkpoints, summary) around them.
"""

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedcomp.core import multihost
from fedcomp.core.evaluation import host_means
from fedcomp.core.federated_round import FederatedRound
from fedcomp.errors import TrainingDivergedError

PyTree = Any


class TrainState(NamedTuple):
  """The state of a federated run: the server state and the per-client state table."""

  server: PyTree
  table: PyTree


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything a federated run is built from, before any state exists.

  Attributes:
    data: the FederatedData.
    model: the BuiltModel.
    task: the Task.
    algorithm: the FederatedAlgorithm.
    round: the FederatedRound (jitted round over the client map).
    evaluate: (params, model_state, arrays) -> metric means (fedcomp.core.evaluation).
    evaluate_clients: personalised algorithms: each client's own model on its own data.
    cohort_size: clients per round.
    seed: the run seed (cohorts and round keys derive from it).
    data_stats: the partition summary (data_stats.json).
    initial_params: the params training starts from (after a warm-up, if any).
    initial_model_state: the model state training starts from.
  """

  data: Any
  model: Any
  task: Any
  algorithm: Any
  round: FederatedRound
  evaluate: Callable
  evaluate_clients: Callable | None
  cohort_size: int
  seed: int
  data_stats: dict
  initial_params: PyTree
  initial_model_state: PyTree


def sample_cohort(seed: int, round_: int, num_clients: int, cohort_size: int) -> np.ndarray:
  """The sorted client ids of round `round_`: a function of (seed, round) only."""
  rng = np.random.default_rng([seed, round_])
  return np.sort(rng.choice(num_clients, cohort_size, replace=False)).astype(np.int32)


def cohort(setup: Setup, round_: int):
  """Round `round_`'s cohort: sampled, laid out, gathered, padded and put on the mesh.

  Every process samples and lays out the whole cohort (ids only) but gathers the data of
  only the slots its own devices hold (all of them with one process).
  """
  return setup.round.put(*cohort_arrays(setup, round_))


def cohort_arrays(setup: Setup, round_: int, pad_to: int | None = None):
  """Round `round_`'s cohort on the host: (slot ids of the whole layout, data, mask).

  Args:
    setup: the built run.
    round_: the round.
    pad_to: examples per client (None: the round's own padding).

  Returns:
    slot ids (size,) and this process's slots' data (n, pad_to, ...) and mask (n, pad_to).
  """
  fr = setup.round
  ids = sample_cohort(setup.seed, round_, setup.data.num_clients, setup.cohort_size)
  ids = ids[fr.cohort_order(setup.data.client_sizes[ids])]
  slots = fr.slot_ids(ids)
  mine = slots[fr.local_slots(len(ids))]
  # Spare slots (id = num_clients) are empty.
  data, mask = setup.data.gather(mine, fr.pad_to if pad_to is None else pad_to)
  return slots, data, mask


def initial_state(setup: Setup, params: PyTree = None, model_state: PyTree = None) -> TrainState:
  """The state before round 1 (from setup's initial params unless others are given)."""
  params = setup.initial_params if params is None else params
  model_state = setup.initial_model_state if model_state is None else model_state
  return TrainState(*setup.round.init(params, model_state))


def round_key(seed: int, round_: int) -> jax.Array:
  """The key of round `round_`; per-client keys are fold_in(round key, client id)."""
  return jax.random.fold_in(jax.random.key(seed), round_)


def train_rounds(
  setup: Setup, state: TrainState, first: int, last: int
) -> Iterator[tuple[int, TrainState, dict[str, float]]]:
  """Runs rounds first..last, yielding (round, state, metrics) after each.

  The next cohort is gathered on the host while the current round runs. A round whose
  training loss or new state is not finite raises TrainingDivergedError naming it, before
  that state is yielded (so a caller never checkpoints it).

  Args:
    setup: the built run.
    state: the state after round first - 1.
    first: the first round to run (>= 1).
    last: the last round to run.

  Yields:
    (round, state, metrics) with metrics train/<sum> (per example), train/examples,
    perf/round_sec and perf/examples_per_sec. The yielded state's buffers are donated to
    the next round: copy what must outlive it (checkpoints are written synchronously).
  """
  import time

  server, table = state
  nxt = cohort(setup, first) if first <= last else None
  for r in range(first, last + 1):
    t0 = time.perf_counter()
    server, table, metrics = setup.round.round(server, table, *nxt, round_key(setup.seed, r))
    if r < last:
      nxt = cohort(setup, r + 1)  # host gather overlaps the running round
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    dt = time.perf_counter() - t0
    check_finite(metrics, r)
    metrics['perf/round_sec'] = dt
    metrics['perf/examples_per_sec'] = metrics['train/examples'] / dt
    yield r, TrainState(server, table), metrics


def check_finite(metrics: dict[str, float], round_: int) -> None:
  """Pops metrics['finite']; raises TrainingDivergedError if it or train/loss says the
  round diverged."""
  finite = metrics.pop('finite')
  loss = metrics.get('train/loss', 0.0)
  if not finite or not np.isfinite(loss):
    what = (
      f'train/loss is {loss}' if not np.isfinite(loss) else 'the new model has non-finite values'
    )
    raise TrainingDivergedError(f'{what} at round {round_}')


def global_model(setup: Setup, state: TrainState) -> tuple[PyTree, PyTree]:
  """(params, model_state) of the global model."""
  alg = setup.algorithm
  if alg.global_model is not None:
    return alg.global_model(state.server, state.table)
  return alg.server_model(state.server)


def _local_test_mask(fd, ids: np.ndarray) -> np.ndarray:
  """(len(ids), max test size) bool: the real rows of the clients' local test splits.

  The mask `fd.gather(ids, fd.max_test_size, 'test')` returns, without gathering the data
  (ids >= num_clients are padding: all False).
  """
  real = ids < fd.num_clients
  sizes = np.where(real, fd.test_sizes[np.where(real, ids, 0)], 0)
  return np.arange(fd.max_test_size)[None, :] < sizes[:, None]


def _client_chunk(fr: FederatedRound, table: PyTree, fd, ids: np.ndarray):
  """Table rows, local test data and mask of the clients `ids`, sharded over 'clients'.

  Args:
    fr: the FederatedRound (its client map's sharding).
    table: the per-client state table (replicated).
    fd: the FederatedData.
    ids: (k,) client ids, k a multiple of the device count; ids >= num_clients pad.

  Returns:
    (rows, data, mask) on the mesh; this process gathered only its own devices' clients.
  """
  sharded = fr.client_map.sharded
  rows = jax.tree.map(lambda t: jnp.take(t, ids, axis=0, mode='clip'), table)
  data, mask = fd.gather(ids[multihost.local_rows(sharded, len(ids))], fd.max_test_size, 'test')
  return multihost.put(rows, sharded), *multihost.put((data, mask), sharded, len(ids))


def evaluate(setup: Setup, state: TrainState, clients_per_call: int = 256) -> dict[str, float]:
  """Evaluation metrics of a state.

  eval/<metric>: the global model on the global test set; eval/local_<metric>: the global
  model on all clients' local test splits (example-weighted; left out when there are
  none). Personalised algorithms add eval/personal_<metric> (each client's own model on
  its own split, example-weighted) and eval/global_accuracy (= eval/local_accuracy).
  """
  fd = setup.data
  params, model_state = global_model(setup, state)
  out = {f'eval/{k}': v for k, v in setup.evaluate(params, model_state, fd.global_test).items()}
  if len(fd.test['x']) == 0:
    return out
  local = setup.evaluate(params, model_state, fd.test)
  out.update({f'eval/local_{k}': v for k, v in local.items()})
  if setup.evaluate_clients is None:
    return out
  fr = setup.round
  devices = fr.client_map.num_devices
  k = -(-min(clients_per_call, fd.num_clients) // devices) * devices
  values, masks = {}, []
  for start in range(0, fd.num_clients, k):  # chunks of clients, not one call per client
    ids = np.arange(start, start + k)  # ids >= num_clients: padding (all masked)
    placed = _client_chunk(fr, state.table, fd, ids)
    for name, v in setup.evaluate_clients(state.server, *placed).items():
      values.setdefault(name, []).append(v)
    masks.append(_local_test_mask(fd, ids))
  personal = host_means({n: np.concatenate(v) for n, v in values.items()}, np.concatenate(masks))
  out.update({f'eval/personal_{k}': v for k, v in personal.items()})
  if 'accuracy' in local:
    out['eval/global_accuracy'] = local['accuracy']
  return out
