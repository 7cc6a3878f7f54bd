"""A federated training run: data -> partition -> model -> algorithm -> rounds.

`run(config, workdir)` is what `python -m launch.main` calls for
`config.experiment = 'federated'`. It validates the config before anything
expensive, resumes from the newest checkpoint in `workdir` if there is one,
and writes config.json, data_stats.json, metrics.jsonl, TensorBoard events,
checkpoints/, summary.json (final metrics, no timings) and perf.json.
"""

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from fedcomp import data as fdata
from fedcomp import models
from fedcomp.algorithms import ALGORITHMS
from fedcomp.core import FederatedAlgorithm, RoundEngine, classification_loss, evaluate_fn
from fedcomp.core.engine import STRATEGIES, auto_strategy
from fedcomp.errors import TrainingDivergedError
from fedcomp.optim import OPTIMIZERS, make_tx
from fedcomp.registry import ConfigError, check_kwargs, lookup
from fedcomp.utils.checkpoint import Checkpointer
from fedcomp.utils.metric_writers import MetricWriter
from fedcomp.utils.progress import Progress

# Keys whose value may change between a run and its resumption.
RESUMABLE_CHANGES = ('total_rounds', 'eval_every_rounds', 'ckpt_every_rounds', 'log_every_rounds')


# ---------------------------------------------------------------------------- validation
def _positive(config, key: str) -> None:
  value = config[key]
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f'config.{key}={value!r} must be a positive integer')


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks names and numbers that need no data; raises ConfigError naming the key."""
  lookup(fdata.SOURCES, config.data_name, 'data_name')
  lookup(fdata.PARTITIONS, config.partition_name, 'partition_name')
  lookup(models.MODELS, config.model_name, 'model_name')
  lookup(ALGORITHMS, config.algorithm_name, 'algorithm_name')
  lookup(OPTIMIZERS, config.client_tx_name, 'client_tx_name')
  lookup(OPTIMIZERS, config.server_tx_name, 'server_tx_name')
  for key in (
    'total_rounds',
    'cohort_size',
    'local_epochs',
    'batch_size',
    'eval_every_rounds',
    'ckpt_every_rounds',
    'log_every_rounds',
  ):
    _positive(config, key)
  num_clients = config.partition.num_clients
  if not isinstance(num_clients, int) or num_clients <= 0:
    raise ConfigError(f'config.partition.num_clients={num_clients!r} must be a positive integer')
  if config.cohort_size > num_clients:
    raise ConfigError(
      f'config.cohort_size={config.cohort_size} exceeds config.partition.num_clients={num_clients}'
    )
  if config.client_parallelism not in ('auto', *STRATEGIES):
    raise ConfigError(
      f'config.client_parallelism={config.client_parallelism!r} is unknown; '
      f'known: auto, {", ".join(STRATEGIES)}'
    )
  chunk = config.client_chunk_size
  if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
    raise ConfigError(f'config.client_chunk_size={chunk!r} must be None or a positive integer')
  if not isinstance(config.dynamic_local_steps, bool):
    raise ConfigError(f'config.dynamic_local_steps={config.dynamic_local_steps!r} must be a bool')
  unroll = config.local_steps_unroll
  if unroll is not None and (not isinstance(unroll, int) or unroll < 0):
    raise ConfigError(f'config.local_steps_unroll={unroll!r} must be None (auto) or an int >= 0')
  make_tx(config.client_tx_name, config.client_tx, 'client_tx')
  make_tx(config.server_tx_name, config.server_tx, 'server_tx')
  ndev = config.num_devices
  if ndev is not None and not 0 < ndev <= jax.device_count():
    raise ConfigError(
      f'config.num_devices={ndev} must be between 1 and the {jax.device_count()} devices present'
    )


def _check_workdir_config(workdir: str, config_dict: dict) -> None:
  """A workdir holds one run: refuse to resume it with a different config."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)
  for key in sorted(set(old) | set(config_dict)):
    if key not in RESUMABLE_CHANGES and old.get(key) != config_dict.get(key):
      raise ConfigError(
        f'config.{key}={config_dict.get(key)!r} differs from {old.get(key)!r} of the run in '
        f'{workdir}; use a new --workdir'
      )


# ---------------------------------------------------------------------------- pieces
def sample_cohort(seed: int, round_: int, num_clients: int, cohort_size: int) -> np.ndarray:
  """The sorted client ids of round `round_`: a function of (seed, round) only."""
  rng = np.random.default_rng([seed, round_])
  return np.sort(rng.choice(num_clients, cohort_size, replace=False)).astype(np.int32)


def make_mesh(num_devices: int | None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis 'clients' over the first `num_devices` devices (None: all)."""
  devices = jax.devices()[: num_devices or jax.device_count()]
  return jax.sharding.Mesh(np.array(devices), ('clients',))


def _json_ready(metrics: dict) -> dict[str, Any]:
  return {k: float(v) for k, v in metrics.items()}


# ---------------------------------------------------------------------------- build
@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything a federated run is built from, before any state exists."""

  data: fdata.FederatedData
  data_stats: dict
  model: models.BuiltModel
  algorithm: FederatedAlgorithm
  engine: RoundEngine
  evaluate: Callable

  def cohort(self, seed: int, round_: int, cohort_size: int):
    """Round `round_`'s cohort: sampled, gathered, padded and put on the mesh."""
    ids = sample_cohort(seed, round_, self.data.num_clients, cohort_size)
    return self.engine.put_cohort(ids, *self.data.gather(ids, self.engine.pad_to))


def build(config: ml_collections.ConfigDict) -> Setup:
  """Builds data, model, algorithm and round engine from a validated config."""
  # --- data ----------------------------------------------------------------
  dataset = fdata.load_source(config.data_name, config.data, config.seed)
  fd = fdata.build_federated_data(
    dataset, config.partition_name, config.partition.to_dict(), config.seed
  )
  stats = fdata.partition_summary(fd)
  sizes = fd.client_sizes
  logging.info(
    'data %s: %d clients, %d train examples (%d..%d per client), %d global test; '
    'label EMD to population: mean %.3f, max %.3f',
    config.data_name,
    fd.num_clients,
    int(sizes.sum()),
    int(sizes.min()),
    int(sizes.max()),
    len(fd.global_test_y),
    stats['emd_mean'],
    stats['emd_max'],
  )

  # --- model, optimizers, algorithm ----------------------------------------
  model = models.build_model(
    config.model_name, config.model, fd.feature_shape, fd.num_classes, config.seed
  )
  client_tx = make_tx(config.client_tx_name, config.client_tx, 'client_tx')
  server_tx = make_tx(config.server_tx_name, config.server_tx, 'server_tx')
  make_algorithm = ALGORITHMS[config.algorithm_name]
  alg_kwargs = check_kwargs(
    make_algorithm, config.algorithm, 'algorithm', f'algorithm {config.algorithm_name!r}'
  )
  algorithm = make_algorithm(
    loss_fn=classification_loss(model.apply),
    client_tx=client_tx,
    server_tx=server_tx,
    **alg_kwargs,
  )

  # --- mesh and round engine -----------------------------------------------
  mesh = make_mesh(config.num_devices)
  batch = config.batch_size
  pad_to = -(-int(sizes.max()) // batch) * batch
  strategy, unroll = auto_strategy(model.params)
  if config.client_parallelism != 'auto':
    strategy = config.client_parallelism
  if config.local_steps_unroll is not None:
    unroll = config.local_steps_unroll
  engine = RoundEngine(
    algorithm,
    num_clients=fd.num_clients,
    local_epochs=config.local_epochs,
    batch_size=batch,
    pad_to=pad_to,
    mesh=mesh,
    strategy=strategy,
    unroll=unroll,
    chunk_size=config.client_chunk_size,
    dynamic_steps=config.dynamic_local_steps,
  )
  evaluate = evaluate_fn(model.apply, config.eval_batch_size)
  logging.info(
    'model %s: %d params; %d devices; cohort %d padded to %d examples per client; '
    'clients run by %s, local steps unrolled %s',
    config.model_name,
    sum(p.size for p in jax.tree.leaves(model.params)),
    mesh.devices.size,
    config.cohort_size,
    pad_to,
    strategy,
    'fully' if unroll == 0 else f'x{unroll}',
  )

  return Setup(fd, stats, model, algorithm, engine, evaluate)


# ---------------------------------------------------------------------------- run
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains a federated model as `config` says and returns the final metrics.

  Args:
    config: a federated config (see configs/common.py).
    workdir: where the run writes; an existing run there is resumed.

  Returns:
    The final metrics (also written to summary.json).
  """
  # --- validate and record the config --------------------------------------
  validate(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  config_dict = config.to_dict()
  _check_workdir_config(workdir, json.loads(json.dumps(config_dict, default=str)))
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config_dict, f, indent=2, sort_keys=True, default=str)

  t_start = time.perf_counter()
  setup = build(config)
  fd, algorithm, engine, evaluate = setup.data, setup.algorithm, setup.engine, setup.evaluate
  mesh = engine.mesh
  with open(os.path.join(workdir, 'data_stats.json'), 'w') as f:
    json.dump(setup.data_stats, f)

  # --- state: fresh or resumed ---------------------------------------------
  server, table = engine.init(setup.model.params)
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
  start = ckpt.latest_round() or 0
  if start:
    (server, table), _ = ckpt.restore(start, (server, table))
    logging.info('resumed from the checkpoint of round %d', start)
  if start >= config.total_rounds:
    logging.info('nothing to do: the run already has %d rounds', start)

  # --- rounds ----------------------------------------------------------------
  root = jax.random.key(config.seed)

  def prepare(r):
    return setup.cohort(config.seed, r, config.cohort_size)

  def evaluate_all(params):
    glob = evaluate(params, fd.global_test_x, fd.global_test_y)
    local = evaluate(params, fd.test_x, fd.test_y)
    return {
      'eval/loss': glob['loss'],
      'eval/accuracy': glob['accuracy'],
      'eval/local_loss': local['loss'],
      'eval/local_accuracy': local['accuracy'],
    }

  progress = Progress(config.total_rounds, start_round=start)
  # Rows a killed run logged after its last checkpoint are dropped and redone.
  writer = MetricWriter(workdir, resume_after=start)
  final: dict[str, float] = {}
  first_round_sec = None
  train_secs, examples = [], 0.0
  next_cohort = prepare(start + 1) if start < config.total_rounds else None
  try:
    for r in range(start + 1, config.total_rounds + 1):
      t0 = time.perf_counter()
      server, table, metrics = engine.round(
        server, table, *next_cohort, jax.random.fold_in(root, r)
      )
      if r < config.total_rounds:
        next_cohort = prepare(r + 1)  # host gather overlaps the running round
      metrics = _json_ready(jax.device_get(metrics))
      dt = time.perf_counter() - t0
      if not np.isfinite(metrics['train/loss']):
        raise TrainingDivergedError(
          f'train/loss is {metrics["train/loss"]} at round {r}; stopped, the last good '
          f'checkpoint (round {ckpt.latest_round() or "none"}) is kept in {ckpt.directory}'
        )
      if first_round_sec is None:
        first_round_sec = dt
      else:
        train_secs.append(dt)
        examples += metrics['train/examples']
      metrics['perf/round_sec'] = dt
      metrics['perf/examples_per_sec'] = metrics['train/examples'] / dt
      if r % config.eval_every_rounds == 0 or r == config.total_rounds:
        metrics.update(evaluate_all(algorithm.server_params(server)))
      if r % config.log_every_rounds == 0 or r == config.total_rounds or 'eval/loss' in metrics:
        writer.write(r, metrics)
        logging.info(progress.line(r, metrics))
      if r % config.ckpt_every_rounds == 0 or r == config.total_rounds:
        ckpt.save(r, (server, table), {'round': r})
      final = {'round': r, **{k: v for k, v in metrics.items() if not k.startswith('perf/')}}
  finally:
    writer.close()
    ckpt.close()

  # --- summary ---------------------------------------------------------------
  if not final:  # resumed a finished run: report its last logged metrics
    final = _last_logged(os.path.join(workdir, 'metrics.jsonl'))
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(final, f, indent=2, sort_keys=True)
  perf = {
    'wall_sec': time.perf_counter() - t_start,
    'first_round_sec': first_round_sec,
    'median_round_sec': float(np.median(train_secs)) if train_secs else None,
    'examples_per_sec': examples / sum(train_secs) if train_secs else None,
    'devices': int(mesh.devices.size),
    'client_parallelism': engine.strategy,
    'local_steps_unroll': engine.unroll,
  }
  with open(os.path.join(workdir, 'perf.json'), 'w') as f:
    json.dump(perf, f, indent=2)
  logging.info(
    'done: round %d, eval/accuracy %.4f, wall %.1f s',
    final.get('round', 0),
    final.get('eval/accuracy', float('nan')),
    perf['wall_sec'],
  )
  return final


def _last_logged(path: str) -> dict[str, float]:
  """The last row of metrics.jsonl without timing fields."""
  last: dict[str, float] = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          last = json.loads(line)
  return {k: v for k, v in last.items() if not k.startswith('perf/')}
