"""A federated training run: data -> partition -> model -> algorithm -> rounds.

`run(config, workdir)` is what `python -m launch.main` calls for
`config.experiment = 'federated'`. It validates the config before anything
expensive, resumes from the newest checkpoint in `workdir` if there is one,
and writes config.json, data_stats.json, metrics.jsonl, TensorBoard events,
checkpoints/, summary.json (final metrics, no timings) and perf.json.
"""

import dataclasses
import inspect
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fedcomp import data as fdata
from fedcomp import models
from fedcomp.algorithms import ALGORITHMS
from fedcomp.core import (
  FederatedAlgorithm,
  RoundEngine,
  classification_loss,
  classification_sampled_nll,
  evaluate_clients_fn,
  evaluate_fn,
)
from fedcomp.core.centralised import make_epoch_fn
from fedcomp.core.engine import STRATEGIES, auto_strategy
from fedcomp.data.shared import carve_shared, merge_shared
from fedcomp.data.subset import subsample
from fedcomp.errors import TrainingDivergedError
from fedcomp.models.cnn import resolve_conv_impl
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
  _shared_fractions(config)
  n = config.get('train_examples')
  if n is not None and (not isinstance(n, int) or n <= 0):
    raise ConfigError(f'config.train_examples={n!r} must be None (all) or a positive integer')
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


def _shared_fractions(config) -> tuple[float, float]:
  """(beta, alpha) of config.shared_data, checked (absent section: disabled)."""
  sd = config.get('shared_data')
  if sd is None:
    return 0.0, 0.0
  beta, alpha = float(sd.beta), float(sd.alpha)
  if not 0.0 <= beta < 1.0:
    raise ConfigError(f'config.shared_data.beta={sd.beta} must be in [0, 1) (0 disables)')
  if not 0.0 <= alpha <= 1.0:
    raise ConfigError(f'config.shared_data.alpha={sd.alpha} must be in [0, 1]')
  if alpha > 0 and beta == 0:
    raise ConfigError(
      f'config.shared_data.alpha={sd.alpha} needs a shared set: set config.shared_data.beta > 0'
    )
  epochs = sd.warmup_epochs
  if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
    raise ConfigError(f'config.shared_data.warmup_epochs={epochs!r} must be an int >= 0')
  return beta, alpha


def warm_up(setup: 'Setup', config: ml_collections.ConfigDict, params):
  """The warm-up model on the shared set G: centralised epochs from `params`.

  Args:
    setup: the built run (setup.shared holds G).
    config: its config (client optimizer, batch size, shared_data.warmup_epochs, seed).
    params: the initial params.

  Returns:
    (params after config.shared_data.warmup_epochs epochs on G, metrics dict).
  """
  tx = make_tx(config.client_tx_name, config.client_tx, 'client_tx')
  epoch = make_epoch_fn(classification_loss(setup.model.apply), tx, config.batch_size)
  x, y = (jnp.asarray(a) for a in setup.shared)
  opt_state = tx.init(params)
  key = jax.random.fold_in(jax.random.key(config.seed), 2**31 - 1)  # apart from round keys
  for e in range(config.shared_data.warmup_epochs):  # one jitted call per epoch
    params, opt_state, _ = epoch(params, opt_state, x, y, jax.random.fold_in(key, e))
  test = setup.evaluate(params, setup.data.global_test_x, setup.data.global_test_y)
  return params, {
    'warmup/examples': len(setup.shared[1]),
    'warmup/epochs': config.shared_data.warmup_epochs,
    'warmup/accuracy': test['accuracy'],
    'warmup/loss': test['loss'],
  }


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
  evaluate_clients: Callable | None  # personalised algorithms: each client's own model
  shared: tuple[np.ndarray, np.ndarray] | None = None  # globally shared data G (x, y)

  def evaluate_all(self, server, table, clients_per_call: int = 256) -> dict[str, float]:
    """Evaluation metrics of the current state.

    eval/loss, eval/accuracy: the global model on the global test set;
    eval/local_loss, eval/local_accuracy: the global model on all clients' local test
    splits (example-weighted). Personalised algorithms add eval/personal_loss and
    eval/personal_accuracy (each client's own model on its own split, example-weighted)
    and eval/global_accuracy (the global model on those same splits, equal to
    eval/local_accuracy), whose global model is `algorithm.global_params`.
    """
    alg, fd = self.algorithm, self.data
    if alg.global_params is not None:
      params = alg.global_params(server, table)
    else:
      params = alg.server_params(server)
    glob = self.evaluate(params, fd.global_test_x, fd.global_test_y)
    local = self.evaluate(params, fd.test_x, fd.test_y)
    out = {
      'eval/loss': glob['loss'],
      'eval/accuracy': glob['accuracy'],
      'eval/local_loss': local['loss'],
      'eval/local_accuracy': local['accuracy'],
    }
    if self.evaluate_clients is None or len(fd.test_y) == 0:
      return out
    sums = np.zeros(3)
    k = self.engine.cohort_padding(min(clients_per_call, fd.num_clients))
    split = self.engine.data_sharding  # clients split over the mesh's devices
    for start in range(0, fd.num_clients, k):  # chunks of clients, not one call per client
      ids = np.arange(start, start + k)  # ids >= num_clients: padding (all masked)
      rows = jax.tree.map(lambda t, i=ids: jnp.take(t, i, axis=0, mode='clip'), table)
      data = jax.device_put((rows, *fd.gather(ids, fd.max_test_size, 'test')), split)
      sums += np.asarray(jax.device_get(self.evaluate_clients(server, *data)))
    count = max(sums[2], 1.0)
    out['eval/personal_loss'] = float(sums[0] / count)
    out['eval/personal_accuracy'] = float(sums[1] / count)
    out['eval/global_accuracy'] = local['accuracy']
    return out

  def cohort(self, seed: int, round_: int, cohort_size: int):
    """Round `round_`'s cohort: sampled, gathered, padded and put on the mesh."""
    ids = sample_cohort(seed, round_, self.data.num_clients, cohort_size)
    ids = ids[self.engine.cohort_order(self.data.client_sizes[ids])]  # gather in run order
    return self.engine.put_cohort(ids, *self.data.gather(ids, self.engine.pad_to))


def build(config: ml_collections.ConfigDict) -> Setup:
  """Builds data, model, algorithm and round engine from a validated config."""
  # --- data ----------------------------------------------------------------
  dataset = fdata.load_source(config.data_name, config.data, config.seed)
  if config.get('train_examples') is not None:
    dataset = subsample(dataset, config.train_examples, config.seed)
  shared = None
  beta, alpha = _shared_fractions(config)
  if beta > 0:
    dataset, shared_x, shared_y = carve_shared(dataset, beta, config.seed)
    shared = (fdata.federated.as_float(shared_x), shared_y.astype(np.int32))
  fd = fdata.build_federated_data(
    dataset, config.partition_name, config.partition.to_dict(), config.seed
  )
  if shared is not None:
    fd = merge_shared(fd, shared_x, shared_y, alpha, config.seed)
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
  # What the trainer supplies to algorithms that take it: SCAFFOLD's |S|/N, and the NLL of
  # model-sampled labels for curvature-aware client optimizers (FishLeg's Fisher products).
  takes = inspect.signature(make_algorithm).parameters
  if 'cohort_fraction' in takes:
    alg_kwargs['cohort_fraction'] = config.cohort_size / fd.num_clients
  if 'sampled_nll' in takes:
    alg_kwargs['sampled_nll'] = classification_sampled_nll(model.apply)
  algorithm = make_algorithm(
    loss_fn=classification_loss(model.apply),
    client_tx=client_tx,
    server_tx=server_tx,
    **alg_kwargs,
  )

  # Abstract evaluation of the client table row: an algorithm's option errors (e.g. FedPer
  # layer regexes that match nothing) surface here, before the engine is built.
  jax.eval_shape(algorithm.client_state_init, model.params)

  # --- mesh and round engine -----------------------------------------------
  mesh = make_mesh(config.num_devices)
  batch = config.batch_size
  pad_to = -(-int(sizes.max()) // batch) * batch
  conv_impl = resolve_conv_impl(config.model.get('conv_impl'))
  strategy, unroll = auto_strategy(model.params, conv_impl)
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
  evaluate = evaluate_fn(model.apply, config.eval_batch_size, mesh)
  evaluate_clients = None
  if algorithm.personal_params is not None:
    evaluate_clients = evaluate_clients_fn(model.apply, algorithm.personal_params, mesh)
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

  return Setup(fd, stats, model, algorithm, engine, evaluate, evaluate_clients, shared)


# ---------------------------------------------------------------------------- run
def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  round_metrics: Callable[[int, Any], dict] | None = None,
) -> dict[str, float]:
  """Trains a federated model as `config` says and returns the final metrics.

  Args:
    config: a federated config (see configs/common.py).
    workdir: where the run writes; an existing run there is resumed.
    round_metrics: optional (round, global params) -> extra metrics, called after every
      round and logged with it (e.g. the divergence experiment's weight divergence).

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
  engine = setup.engine
  mesh = engine.mesh
  with open(os.path.join(workdir, 'data_stats.json'), 'w') as f:
    json.dump(setup.data_stats, f)

  # --- state: fresh or resumed ---------------------------------------------
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
  start = ckpt.latest_round() or 0
  params = setup.model.params
  if setup.shared is not None and not start:  # a resumed run has its warm-up in the state
    params, warm = warm_up(setup, config, params)
    logging.info(
      'warm-up on %d shared examples: test accuracy %.4f',
      *[warm[k] for k in ('warmup/examples', 'warmup/accuracy')],
    )
    with open(os.path.join(workdir, 'warmup.json'), 'w') as f:
      json.dump(warm, f, indent=2)
  server, table = engine.init(params)
  if start:
    (server, table), _ = ckpt.restore(start, (server, table))
    logging.info('resumed from the checkpoint of round %d', start)
  if start >= config.total_rounds:
    logging.info('nothing to do: the run already has %d rounds', start)

  # --- rounds ----------------------------------------------------------------
  root = jax.random.key(config.seed)

  def prepare(r):
    return setup.cohort(config.seed, r, config.cohort_size)

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
      if round_metrics is not None:
        metrics.update(round_metrics(r, setup.algorithm.server_params(server)))
      if r % config.eval_every_rounds == 0 or r == config.total_rounds:
        metrics.update(setup.evaluate_all(server, table))
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
