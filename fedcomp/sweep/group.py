"""Many federated runs in one compiled program: a leading runs axis over the round.

The runs of a group differ only in seeds and in numeric hyperparameters the round reads
as numbers (fedcomp.sweep.plan). Each run is built as usual (its own data partition,
initial model, cohorts and round keys, from its own seed) and writes its own run
directory (config, metrics, checkpoints, summary), exactly as `launch.main` would; the
rounds of all runs execute as one jitted call per round whose hyperparameters are traced
scalars with a leading runs axis, sharded over the devices' clients like a single run.

Two ways to execute the runs axis: 'vmap' (the runs batch into the same kernels: the
throughput of a sweep) and 'map' (one run after another inside the program: one compile
and one dispatch per round). Both give every run the metrics and the checkpoints of
running it alone, bit for bit, when the clients themselves are vmapped (the client map's
'vmap' strategy, dense models); for clients run one at a time (conv models on CPU) only
'map' does. 'auto' picks 'map' on CPU, where it measured faster (resolve_strategy).

References: big_vision's sweeps (get_hyper); vmapped hyperparameter search as in
"Population Based Training" implementations that batch trials (e.g. Jaderberg et al. 2017).
"""

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fedcomp.core import trainer
from fedcomp.core.federated_round import FederatedRound
from fedcomp.core.run_dir import RunDir, flatten
from fedcomp.errors import ConfigError, TrainingDivergedError
from fedcomp.experiments import federated
from fedcomp.sweep.plan import VARYING_SECTIONS

STRATEGIES = ('auto', 'vmap', 'map')
PyTree = Any


def hyper_keys(configs: Sequence[Any]) -> list[str]:
  """The numeric option keys ('client_tx.learning_rate', ...) whose values differ."""
  keys = []
  for section in VARYING_SECTIONS:
    names = sorted({k for c in configs for k in c[section]})
    for name in names:
      values = {repr(c[section].get(name)) for c in configs}
      if len(values) > 1:
        keys.append(f'{section}.{name}')
  return keys


def check_group(configs: Sequence[Any]) -> list[str]:
  """Validates every run and returns the hyperparameter keys that vary (ConfigError if a
  run differs from the first in anything but seed and those numbers)."""
  if not configs:
    raise ConfigError('a run group needs at least one run')
  for c in configs:
    federated.validate(c)
  keys = hyper_keys(configs)
  base = _without(configs[0], keys)
  for c in configs[1:]:
    other = _without(c, keys)
    if other != base:
      diff = sorted(k for k in set(base) | set(other) if base.get(k) != other.get(k))
      raise ConfigError(
        f'runs of one group differ in {", ".join(diff)}, which changes what is compiled'
      )
  for key in keys:
    for c in configs:
      section, name = key.split('.')
      value = c[section].get(name)
      if isinstance(value, bool) or not isinstance(value, float):
        raise ConfigError(f'config.{key}={value!r}: only float options can vary inside one program')
  return keys


def _without(config, keys) -> dict:
  """The config's dotted keys -> repr(value), without the seed and `keys`."""
  flat = {k: repr(v) for k, v in flatten(config.to_dict()).items()}
  for key in ('seed', *keys):
    flat.pop(key, None)
  return flat


def hyper_values(configs: Sequence[Any], keys: Sequence[str]) -> jax.Array:
  """(runs, len(keys)) float32: each run's value of each varying hyperparameter."""
  rows = [[float(c[k.split('.')[0]][k.split('.')[1]]) for k in keys] for c in configs]
  return jnp.asarray(rows, jnp.float32).reshape(len(configs), len(keys))


def stack_states(states: Sequence[trainer.TrainState]) -> trainer.TrainState:
  """The runs' states stacked along a leading runs axis."""
  return trainer.TrainState(*(_stack(parts) for parts in zip(*states, strict=True)))


def _stack(trees: Sequence[PyTree]) -> PyTree:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _take(tree: PyTree, i: int) -> PyTree:
  return jax.tree.map(lambda a: a[i], tree)


def structure(setup: federated.Built) -> tuple:
  """What must match for runs to share a program: shapes of the state, the cohort layout.

  Clients padded to different lengths may share one (the longest): padded steps change
  nothing (tests/core/federated_round_test.py).
  """
  fr = setup.round
  state = jax.eval_shape(lambda: tuple(trainer.initial_state(setup)))
  shapes = jax.tree.map(lambda a: (a.shape, str(a.dtype)), state)
  data = {k: (v.shape[1:], str(v.dtype)) for k, v in setup.data.train.items()}
  return (fr.num_clients, setup.cohort_size, str(shapes), str(sorted(data.items())))


class GroupRound:
  """One jitted call per round for all runs of a group.

  Args:
    config: the first run's config (the structure every run shares).
    setup: the first run's Built setup (model, task, client map, round options).
    keys: the hyperparameter keys whose values vary (traced per run).
    strategy: 'vmap' or 'map' over the runs axis.
    pad_to: examples per client after padding (None: the first run's); the longest of the
      runs' own.
  """

  def __init__(
    self, config, setup: federated.Built, keys: Sequence[str], strategy: str, pad_to=None
  ):
    self.config, self.setup, self.keys, self.strategy = config, setup, tuple(keys), strategy
    fr = setup.round
    self.pad_to = fr.pad_to if pad_to is None else pad_to
    rep = fr.client_map.replicated
    self.cohort_sharding = NamedSharding(fr.mesh, P(None, 'clients'))
    if strategy == 'vmap':
      fn = jax.vmap(self._one)
    else:
      fn = lambda *a: jax.lax.map(lambda x: self._one(*x), a)  # noqa: E731
    self.round = jax.jit(fn, donate_argnums=(1, 2), out_shardings=(rep, rep, rep))

  def _one(self, hyper, server, table, ids, data, mask, valid, key):
    fr, s = self.setup.round, self.setup
    algorithm = s.algorithm
    if self.keys:  # the algorithm and optimizers with this run's (traced) numbers
      algorithm, _ = federated.build_algorithm(
        self.config, s.model, s.task, s.data.num_clients, dict(zip(self.keys, hyper, strict=True))
      )
    one = FederatedRound(
      algorithm,
      fr.client_map,
      num_clients=fr.num_clients,
      local_epochs=fr.local_epochs,
      batch_size=fr.batch_size,
      pad_to=self.pad_to,
      unroll=fr.unroll,
      dynamic_steps=fr.dynamic_steps,
    )
    return one._round(server, table, ids, data, mask, valid, key)

  def cohorts(self, setups: Sequence[federated.Built], round_: int):
    """Every run's cohort of round `round_`, stacked (runs, slots, ...) and on the mesh."""
    parts = []
    for s in setups:
      slots, data, mask = trainer.cohort_arrays(s, round_, self.pad_to)
      parts.append((slots.astype(np.int32), data, mask, slots < s.round.num_clients))
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *parts)
    keys = jnp.stack([trainer.round_key(s.seed, round_) for s in setups])
    return (*jax.device_put(stacked, self.cohort_sharding), keys)


def run_group(
  configs: Sequence[Any],
  workdirs: Sequence[str],
  *,
  strategy: str = 'auto',
  setups: Sequence[federated.Built] | None = None,
) -> list[dict | Exception]:
  """Runs federated configs that differ only in seeds and float options as one program.

  Each run resumes from its own newest checkpoint; runs with different structures (e.g.
  seeds whose partitions pad clients differently) or at different rounds are split into
  sub-groups, and finished runs are not run again.

  Args:
    configs: the runs' federated configs.
    workdirs: their run directories.
    strategy: 'auto', 'vmap' or 'map' (module docstring).
    setups: the runs' Built setups, if the caller built them.

  Returns:
    Per run, its final metrics or the TrainingDivergedError that stopped it.
  """
  if strategy not in STRATEGIES:
    raise ConfigError(f'runs strategy {strategy!r} is unknown; known: {", ".join(STRATEGIES)}')
  if len(configs) != len(workdirs):
    raise ValueError('one workdir per config')
  keys = check_group(configs)
  rds = [
    RunDir(w, c.to_dict(), resumable=federated.RESUMABLE_CHANGES)
    for c, w in zip(configs, workdirs, strict=True)
  ]
  try:
    setups = list(setups) if setups is not None else [federated.build(c) for c in configs]
    starts = [federated.resume(c, rd, s) for c, rd, s in zip(configs, rds, setups, strict=True)]
    results: list[Any] = [None] * len(configs)
    parts: dict[tuple, list[int]] = {}
    for i, (s, (start, _)) in enumerate(zip(setups, starts, strict=True)):
      parts.setdefault((structure(s), start), []).append(i)
    if len(parts) > 1:
      logging.info(
        'run group split into %d programs (structures or resume rounds differ)', len(parts)
      )
    for idx in parts.values():
      out = _run_part(
        [configs[i] for i in idx],
        [rds[i] for i in idx],
        [setups[i] for i in idx],
        [starts[i] for i in idx],
        keys,
        strategy,
      )
      for i, r in zip(idx, out, strict=True):
        results[i] = r
    return results
  finally:
    for rd in rds:
      rd.close()


def resolve_strategy(strategy: str, setup: federated.Built) -> str:
  """'auto' -> 'vmap' on accelerators when the clients already run batched (the client map's
  'vmap', or 'map' with chunks of several clients), else 'map'.

  Measured on XLA:CPU (2 cores, configs/bench/sweep.py): a vmapped runs axis lowered the
  summed examples/s of small_mlp (4 runs: 0.56x one run), a loop over runs kept it
  (0.93x) and raised emnist_cnn's (1.17x with 4 runs, 1.28x with 8); both are bit-identical
  to runs alone where 'auto' picks them (module docstring).
  """
  if strategy != 'auto':
    return strategy
  cm = setup.round.client_map
  batched = cm.strategy == 'vmap' or (cm.strategy == 'map' and (cm.chunk_size or 1) > 1)
  return 'vmap' if batched and jax.default_backend() != 'cpu' else 'map'


def _run_part(configs, rds, setups, starts, keys, strategy) -> list[Any]:
  if len(configs) == 1:  # a runs axis of one would compile differently: run it alone
    return [_run_alone(configs[0], rds[0], setups[0], *starts[0])]
  t0 = time.perf_counter()
  s0, c0 = setups[0], configs[0]
  strategy = resolve_strategy(strategy, s0)
  start = starts[0][0]
  state = stack_states([st for _, st in starts])
  hyper = hyper_values(configs, keys)
  gr = GroupRound(c0, s0, keys, strategy, max(s.round.pad_to for s in setups))
  logs = [
    federated.RoundLog(c, rd, s, start) for c, rd, s in zip(configs, rds, setups, strict=True)
  ]
  out: list[Any] = [None] * len(configs)
  alive = list(range(len(configs)))
  logging.info(
    '%d runs in one program (%s over runs; varying: seed%s)',
    len(configs), strategy, ''.join(f', {k}' for k in keys),
  )  # fmt: skip
  try:
    nxt = gr.cohorts(setups, start + 1) if start < c0.total_rounds else None
    server, table = state
    for r in range(start + 1, c0.total_rounds + 1):
      t = time.perf_counter()
      server, table, metrics = gr.round(hyper, server, table, *nxt)
      if r < c0.total_rounds:
        nxt = gr.cohorts(setups, r + 1)  # host gather overlaps the running round
      metrics = jax.device_get(metrics)
      dt = time.perf_counter() - t
      state = trainer.TrainState(server, table)
      for i in list(alive):
        m = {k: float(v[i]) for k, v in metrics.items()}
        try:
          trainer.check_finite(m, r)
        except TrainingDivergedError as e:
          out[i] = logs[i].diverged(e)
          logging.error('%s: %s', rds[i].workdir, out[i])
          alive.remove(i)
          continue
        m['perf/round_sec'] = dt
        m['perf/examples_per_sec'] = m['train/examples'] / dt
        logs[i].record(r, m, _state_of(state, i))
  finally:
    for log in logs:
      log.close()
  wall = time.perf_counter() - t0
  for i in alive:
    out[i] = logs[i].finish(wall, group_size=len(configs), runs_strategy=strategy)
  return out


def _run_alone(config, rd, setup, start, state) -> Any:
  """One run exactly as launch.main runs it (its final metrics or its divergence)."""
  try:
    return federated.train_logged(config, rd, setup, start, state)
  except TrainingDivergedError as e:
    return e


def _state_of(state: trainer.TrainState, i: int) -> Callable[[], trainer.TrainState]:
  cache = []

  def get():
    if not cache:
      cache.append(trainer.TrainState(_take(state.server, i), _take(state.table, i)))
    return cache[0]

  return get
