"""A federated training run: data -> partition -> model, task -> algorithm -> rounds.

`run(config, workdir)` is what `python -m launch.main` calls for
`config.experiment = 'federated'`. It validates the config before anything expensive,
builds the run (`build`, reusable by other experiments and outer loops), records the
config once the data-dependent checks passed, resumes from the newest checkpoint in
`workdir` if there is one, and writes config.json, data_stats.json, metrics.jsonl,
TensorBoard events, checkpoints/, summary.json (final metrics, no timings) and perf.json.
"""

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fedcomp import data as fdata
from fedcomp import models, tasks
from fedcomp.algorithms import ALGORITHMS, CONFIG_CHECKS
from fedcomp.core import trainer
from fedcomp.core.algorithm import AlgorithmContext
from fedcomp.core.centralised import make_epoch_fn
from fedcomp.core.client_map import STRATEGIES, ClientMap
from fedcomp.core.evaluation import make_client_evaluator, make_evaluator
from fedcomp.core.federated_round import FederatedRound
from fedcomp.core.optimizer_step import OptimizerStep
from fedcomp.core.reducers import AGGREGATORS
from fedcomp.core.run_dir import RunDir
from fedcomp.data.shared import carve_shared, merge_shared
from fedcomp.data.subset import subsample
from fedcomp.errors import TrainingDivergedError
from fedcomp.models.im2col import resolve_conv_impl
from fedcomp.optim import OPTIMIZERS, make_tx
from fedcomp.registry import ConfigError, check_known_keys, check_kwargs, lookup
from fedcomp.utils import xla_flags
from fedcomp.utils.progress import Progress

# The top-level keys of a federated config (configs/common.py's federated_config).
KEYS = (
  'experiment',
  'seed',
  'total_rounds',
  'cohort_size',
  'local_epochs',
  'batch_size',
  'eval_every_rounds',
  'ckpt_every_rounds',
  'log_every_rounds',
  'eval_batch_size',
  'num_devices',
  'train_examples',
  'client_map',
  'data_name',
  'data',
  'shared_data',
  'partition_name',
  'partition',
  'task_name',
  'task',
  'model_name',
  'model',
  'algorithm_name',
  'algorithm',
  'aggregator_name',
  'aggregator',
  'client_tx_name',
  'client_tx',
  'server_tx_name',
  'server_tx',
  'pruning',
)
# Keys whose value may change between a run and its resumption.
RESUMABLE_CHANGES = ('total_rounds', 'eval_every_rounds', 'ckpt_every_rounds', 'log_every_rounds')


def client_map_options(
  strategy: str = 'auto',
  chunk_size: int | None = None,
  unroll: int | None = None,
  dynamic_steps: bool = False,
  reduction_width: int = 8,
) -> dict[str, Any]:
  """The options of config.client_map (how the cohort's clients run).

  Args:
    strategy: 'vmap', 'map', 'loop' or 'auto' (see auto_strategy).
    chunk_size: with 'map', clients vmapped per chunk (None: one at a time).
    unroll: `lax.scan` unroll of the local steps (None: auto; 0: fully unrolled).
    dynamic_steps: each client runs only its own steps (ragged clients, dense models).
    reduction_width: leaves of the canonical reduction (a power of two): results are
      bit-identical on any device count that divides it.

  Returns:
    The options as a dict.
  """
  if strategy not in ('auto', *STRATEGIES):
    raise ConfigError(
      f'config.client_map.strategy={strategy!r} is unknown; known: auto, {", ".join(STRATEGIES)}'
    )
  if unroll is not None and (isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 0):
    raise ConfigError(f'config.client_map.unroll={unroll!r} must be None (auto) or an int >= 0')
  if not isinstance(dynamic_steps, bool):
    raise ConfigError(f'config.client_map.dynamic_steps={dynamic_steps!r} must be a bool')
  return dict(
    strategy=strategy,
    chunk_size=chunk_size,
    unroll=unroll,
    dynamic_steps=dynamic_steps,
    reduction_width=reduction_width,
  )


def auto_strategy(params, conv_impl: str) -> tuple[str, int]:
  """The measured-best (strategy, unroll) for a model, judged by its params.

  Measured on XLA:CPU (jax 0.10.2, 2 cores), EMNIST CNN, 50 clients x 4 steps:
  - convolutions by im2col: 'map' (one client at a time, rolled scan over steps) ran
    at 1,532 examples/s on one device, compiling in 2.6 s with 0.8 GB peak RSS;
  - XLA's convolution: training steps inside any loop run ~16x slower than unrolled
    (the convolution gradients inside the loop body are the slow part), so only
    'loop' with fully unrolled steps is fast (1,132 examples/s, but 89 s compile and
    3.2 GB); vmap + scan ran at 62 (grouped convolutions);
  - dense-only models vmap into batched matmuls and keep a rolled scan.

  Args:
    params: the model params; a rank-4 leaf marks a 2-D convolution kernel.
    conv_impl: the model's resolved convolution ('im2col' or 'xla').

  Returns:
    (strategy, unroll) with unroll 0 meaning fully unrolled.
  """
  if not any(jnp.ndim(p) == 4 for p in jax.tree.leaves(params)):
    return ('vmap', 1)
  if jax.default_backend() != 'cpu':
    return ('vmap', 1)
  return ('map', 1) if conv_impl == 'im2col' else ('loop', 0)


# ---------------------------------------------------------------------------- validation
def _positive(config, key: str) -> None:
  value = config[key]
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f'config.{key}={value!r} must be a positive integer')


def make_aggregator(name: str, kwargs: Mapping | None):
  """The aggregator (a Reducer of client updates) `name` with its config kwargs."""
  make = lookup(AGGREGATORS, name, 'aggregator_name')
  return make(**check_kwargs(make, kwargs or {}, 'aggregator', f'aggregator {name!r}'))


def validate(config: ml_collections.ConfigDict, extra_keys: tuple[str, ...] = ()) -> None:
  """Checks keys, names and numbers that need no data; raises ConfigError naming the key.

  Args:
    config: a federated config.
    extra_keys: top-level keys other experiments add (e.g. 'divergence', 'bench').
  """
  check_known_keys(config, (*KEYS, *extra_keys), 'config')
  lookup(fdata.SOURCES, config.data_name, 'data_name')
  lookup(fdata.PARTITIONS, config.partition_name, 'partition_name')
  lookup(models.MODELS, config.model_name, 'model_name')
  lookup(ALGORITHMS, config.algorithm_name, 'algorithm_name')
  lookup(OPTIMIZERS, config.client_tx_name, 'client_tx_name')
  lookup(OPTIMIZERS, config.server_tx_name, 'server_tx_name')
  lookup(tasks.TASKS, config.task_name, 'task_name')
  for key in (
    'total_rounds',
    'cohort_size',
    'local_epochs',
    'batch_size',
    'eval_every_rounds',
    'ckpt_every_rounds',
    'log_every_rounds',
    'eval_batch_size',
  ):
    _positive(config, key)
  seed = config.seed
  if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
    raise ConfigError(f'config.seed={seed!r} must be an integer >= 0')
  num_clients = config.partition.get('num_clients')
  if not isinstance(num_clients, int) or num_clients <= 0:
    raise ConfigError(f'config.partition.num_clients={num_clients!r} must be a positive integer')
  if config.cohort_size > num_clients:
    raise ConfigError(
      f'config.cohort_size={config.cohort_size} exceeds config.partition.num_clients={num_clients}'
    )
  options = client_map_options(
    **check_kwargs(client_map_options, config.client_map, 'client_map', 'client_map')
  )
  ClientMap(
    make_mesh(config.num_devices),
    chunk_size=options['chunk_size'],
    reduction_width=options['reduction_width'],
  )
  make_tx(config.client_tx_name, config.client_tx, 'client_tx')
  make_tx(config.server_tx_name, config.server_tx, 'server_tx')
  make_aggregator(config.aggregator_name, config.aggregator)
  check_kwargs(
    ALGORITHMS[config.algorithm_name],
    config.algorithm,
    'algorithm',
    f'algorithm {config.algorithm_name!r}',
  )
  _shared_fractions(config)
  make_federated_pruner(config)
  n = config.get('train_examples')
  if n is not None and (not isinstance(n, int) or n <= 0):
    raise ConfigError(f'config.train_examples={n!r} must be None (all) or a positive integer')


def make_federated_pruner(config):
  """The Pruner of config.pruning (None when the section is absent or its scorer is None).

  Keys: scorer ('magnitude' or 'fishleg'), sparsity, schedule + schedule_kwargs (counted
  in rounds from 0), distribution, policy, nm (fedcomp.compression.pruning.make_pruner).
  """
  section = config.get('pruning')
  if not section or section.get('scorer') is None:
    return None
  from fedcomp.compression import pruning
  from fedcomp.compression.pruning import federated as fed_pruning

  check_known_keys(
    section,
    ('scorer', 'sparsity', 'schedule', 'schedule_kwargs', 'distribution', 'policy', 'nm'),
    'config.pruning',
  )
  kwargs = {k: v for k, v in section.items() if v is not None}
  for key in ('schedule_kwargs',):
    if key in kwargs:
      kwargs[key] = dict(kwargs[key])
  pruner = pruning.make_pruner(**kwargs)
  fed_pruning.check_federated_pruner(pruner)
  if pruner.scorer_name == 'fishleg' and not (
    config.client_tx_name == 'fishleg' and config.algorithm.get('keep_client_opt_state')
  ):
    raise ConfigError(
      "config.pruning.scorer='fishleg' uses the clients' FishLeg Q: set "
      "config.client_tx_name='fishleg' and config.algorithm.keep_client_opt_state=True"
    )
  return pruner


def make_mesh(num_devices: int | None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis 'clients' over the first `num_devices` devices (None: all)."""
  if num_devices is not None and (
    not isinstance(num_devices, int) or not 0 < num_devices <= jax.device_count()
  ):
    raise ConfigError(
      f'config.num_devices={num_devices!r} must be between 1 and the {jax.device_count()} '
      'devices present'
    )
  devices = jax.devices()[: num_devices or jax.device_count()]
  return jax.sharding.Mesh(np.array(devices), ('clients',))


def _shared_fractions(config) -> tuple[float, float]:
  """(beta, alpha) of config.shared_data, checked (absent section: disabled)."""
  sd = config.get('shared_data')
  if sd is None:
    return 0.0, 0.0
  check_known_keys(sd, ('beta', 'alpha', 'warmup_epochs'), 'config.shared_data')
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


# ---------------------------------------------------------------------------- build
@dataclasses.dataclass(frozen=True)
class Built(trainer.Setup):
  """A trainer.Setup plus what only this experiment uses."""

  shared: dict | None = None  # the globally shared set G (Zhao et al.), if any
  client_optimizer: OptimizerStep | None = None


def build(config: ml_collections.ConfigDict, *, task_extra: Mapping | None = None) -> Built:
  """Builds data, model, task, algorithm and round from a validated config.

  Args:
    config: a validated federated config.
    task_extra: task arguments a config cannot hold (distillation's teacher function).

  Returns:
    The Built setup (a trainer.Setup).
  """
  # --- data ----------------------------------------------------------------
  dataset = fdata.load_source(config.data_name, config.data, config.seed)
  if config.get('train_examples') is not None:
    dataset = subsample(dataset, config.train_examples, config.seed)
  shared = None
  beta, alpha = _shared_fractions(config)
  if beta > 0:
    dataset, shared = carve_shared(dataset, beta, config.seed)
  fd = fdata.build_federated_data(
    dataset, config.partition_name, config.partition.to_dict(), config.seed
  )
  if shared is not None:
    fd = merge_shared(fd, shared, alpha, config.seed)
    shared = fdata.federated.as_batch(shared)
  stats = fdata.partition_summary(fd)
  sizes = fd.client_sizes
  logging.info(
    'data %s: %d clients, %d train examples (%d..%d per client), %d global test; '
    'label EMD to population: mean %s, max %s',
    config.data_name,
    fd.num_clients,
    int(sizes.sum()),
    int(sizes.min()),
    int(sizes.max()),
    len(fd.global_test['x']),
    stats.get('emd_mean'),
    stats.get('emd_max'),
  )

  # --- model, task, optimizers, algorithm -----------------------------------
  task = tasks.make_task(config.task_name, config.task, **(task_extra or {}))
  missing = [k for k in task.batch_keys if k not in fd.train]
  if missing:
    raise ConfigError(
      f'config.task_name={config.task_name!r} needs {", ".join(missing)} in the data; '
      f'data source {config.data_name!r} gives {", ".join(fd.keys)}'
    )
  model = models.build_model(
    config.model_name, config.model, fd.feature_shape, fd.num_classes, config.seed
  )
  check_task(task, model, fd.train)
  algorithm, client_optimizer = build_algorithm(config, model, task, fd.num_clients)
  # Abstract evaluation of the client table row: an algorithm's option errors surface here,
  # before anything is compiled.
  jax.eval_shape(algorithm.client_state_init, model.params, model.state)

  # --- client map and round --------------------------------------------------
  options = client_map_options(
    **check_kwargs(client_map_options, config.client_map, 'client_map', 'client_map')
  )
  mesh = make_mesh(config.num_devices)
  if jax.default_backend() == 'cpu' and not xla_flags.fma_contraction_is_off():
    logging.warning(
      'XLA_FLAGS lacks %s (JAX started before fedcomp set it?): results may differ in the '
      'last bits between device counts',
      xla_flags.NO_FMA,
    )
  conv_impl = resolve_conv_impl(config.model.get('conv_impl'))
  strategy, unroll = auto_strategy(model.params, conv_impl)
  if options['strategy'] != 'auto':
    strategy = options['strategy']
  if options['unroll'] is not None:
    unroll = options['unroll']
  client_map = ClientMap(mesh, strategy, options['chunk_size'], options['reduction_width'])
  batch = config.batch_size
  pad_to = -(-int(sizes.max()) // batch) * batch
  fr = FederatedRound(
    algorithm,
    client_map,
    num_clients=fd.num_clients,
    local_epochs=config.local_epochs,
    batch_size=batch,
    pad_to=pad_to,
    unroll=unroll,
    dynamic_steps=options['dynamic_steps'],
  )
  evaluate = make_evaluator(task, model.apply, config.eval_batch_size, mesh)
  evaluate_clients = None
  if algorithm.personal_model is not None:
    evaluate_clients = make_client_evaluator(task, model.apply, algorithm.personal_model, mesh)
  logging.info(
    'model %s: %d params; %d devices; cohort %d laid out on %d slots, padded to %d examples '
    'per client; clients run by %s, local steps unrolled %s',
    config.model_name,
    sum(p.size for p in jax.tree.leaves(model.params)),
    mesh.devices.size,
    config.cohort_size,
    client_map.layout(config.cohort_size).size,
    pad_to,
    strategy,
    'fully' if unroll == 0 else f'x{unroll}',
  )
  return Built(
    data=fd,
    model=model,
    task=task,
    algorithm=algorithm,
    round=fr,
    evaluate=evaluate,
    evaluate_clients=evaluate_clients,
    cohort_size=config.cohort_size,
    seed=config.seed,
    data_stats=stats,
    initial_params=model.params,
    initial_model_state=model.state,
    shared=shared,
    client_optimizer=client_optimizer,
  )


def build_algorithm(
  config: ml_collections.ConfigDict,
  model,
  task,
  num_clients: int,
  hyper: Mapping[str, Any] | None = None,
):
  """The federated algorithm and the client optimizer of a config.

  Args:
    config: a validated federated config.
    model: the BuiltModel.
    task: the Task.
    num_clients: clients in the partition (the cohort fraction's denominator).
    hyper: dotted keys of numeric hyperparameters ('client_tx.learning_rate',
      'server_tx.learning_rate', 'algorithm.mu', ...) -> values that replace the config's,
      typically traced scalars of a sweep's runs axis (fedcomp.sweep); they were checked
      as numbers in each run's own config.

  Returns:
    (algorithm, client OptimizerStep).
  """
  section = functools.partial(_section_with, config, hyper or {})
  client_optimizer = OptimizerStep(
    make_tx(config.client_tx_name, section('client_tx'), 'client_tx')
  )
  pruner = make_federated_pruner(config)
  if pruner is not None:
    from fedcomp.compression.pruning import federated as fed_pruning

    client_optimizer = fed_pruning.client_optimizer(client_optimizer, pruner)
  ctx = AlgorithmContext(
    model=model,
    task=task,
    client_optimizer=client_optimizer,
    server_tx=make_tx(config.server_tx_name, section('server_tx'), 'server_tx'),
    aggregator=make_aggregator(config.aggregator_name, config.aggregator),
    cohort_fraction=config.cohort_size / num_clients,
  )
  make_algorithm = ALGORITHMS[config.algorithm_name]
  if config.algorithm_name in CONFIG_CHECKS:
    CONFIG_CHECKS[config.algorithm_name](config, model)
  alg_kwargs = check_kwargs(
    make_algorithm, section('algorithm'), 'algorithm', f'algorithm {config.algorithm_name!r}'
  )
  algorithm = make_algorithm(ctx, **alg_kwargs)
  if pruner is not None:
    algorithm = fed_pruning.with_pruning(algorithm, pruner, _client_inverse_fisher(config))
  return algorithm, client_optimizer


def _section_with(config, hyper: Mapping[str, Any], name: str) -> dict[str, Any]:
  """config[name] as a dict, with the `hyper` values whose key is under `name`."""
  out = dict(config[name])
  for key, value in hyper.items():
    head, _, leaf = key.partition('.')
    if head == name:
      out[leaf] = value
  return out


def _client_inverse_fisher(config):
  """params -> the Q structure of the clients' FishLeg optimizer (its blocks options)."""
  from fedcomp.optim import fishleg_transform

  opts = {k: config.client_tx.get(k) for k in ('blocks', 'block_size', 'max_factor_size')}
  opts = {k: v for k, v in opts.items() if v is not None}
  return lambda params: fishleg_transform.inverse_fisher(params, **opts)


def sparsity_of(pruner, params) -> dict[str, float]:
  """'pruning/sparsity': the share of exact zeros among the prunable weights."""
  targets = pruner.targets(params)
  zeros = total = 0
  for leaf, prunable in zip(jax.tree.leaves(params), targets.prunable):
    if prunable:
      zeros += int(jnp.sum(leaf == 0))
      total += leaf.size
  return {'pruning/sparsity': zeros / max(total, 1)}


def check_task(task, model, arrays: Mapping[str, np.ndarray]) -> None:
  """The task's check of the model's output shape against the data (a ConfigError)."""
  if task.check is None:
    return
  x = jax.ShapeDtypeStruct((1, *arrays['x'].shape[1:]), jnp.float32)
  out = jax.eval_shape(lambda p, s, x: model.apply(p, s, x)[0], model.params, model.state, x)
  task.check(out.shape[1:], {k: v.shape[1:] for k, v in arrays.items()})


def warm_up(setup: Built, config: ml_collections.ConfigDict):
  """The warm-up model on the shared set G: centralised epochs from the initial model.

  Args:
    setup: the built run (setup.shared holds G).
    config: its config (batch size, shared_data.warmup_epochs, seed).

  Returns:
    ((params, model_state) after config.shared_data.warmup_epochs epochs on G, metrics).
  """
  step = setup.client_optimizer
  epoch = make_epoch_fn(setup.task, setup.model.apply, step, config.batch_size)
  arrays = {k: jnp.asarray(v) for k, v in setup.shared.items()}
  params, model_state = setup.initial_params, setup.initial_model_state
  opt_state = step.init(params)
  key = jax.random.fold_in(jax.random.key(config.seed), 2**31 - 1)  # apart from round keys
  for e in range(config.shared_data.warmup_epochs):  # one jitted call per epoch
    params, model_state, opt_state, _ = epoch(
      params, model_state, opt_state, arrays, jax.random.fold_in(key, e)
    )
  test = setup.evaluate(params, model_state, setup.data.global_test)
  metrics = {
    'warmup/examples': len(setup.shared['x']),
    'warmup/epochs': config.shared_data.warmup_epochs,
    **{f'warmup/{k}': v for k, v in test.items()},
  }
  return (params, model_state), metrics


# ---------------------------------------------------------------------------- run
def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  setup: Built | None = None,
  round_metrics: Callable[[int, Any], dict] | None = None,
) -> dict[str, float]:
  """Trains a federated model as `config` says and returns the final metrics.

  Args:
    config: a federated config (see configs/common.py).
    workdir: where the run writes; an existing run there is resumed.
    setup: the built run, if the caller built it already (`build(config)`).
    round_metrics: optional (round, global params) -> extra metrics, called after every
      round and logged with it (e.g. the divergence experiment's weight divergence).

  Returns:
    The final metrics (also written to summary.json).
  """
  validate(config)
  rd = RunDir(workdir, config.to_dict(), resumable=RESUMABLE_CHANGES)
  try:
    return _run(config, rd, setup, round_metrics)
  finally:
    rd.close()


def _run(config, rd: RunDir, setup, round_metrics) -> dict[str, float]:
  t_start = time.perf_counter()
  setup = setup if setup is not None else build(config)
  start, state = resume(config, rd, setup)
  return train_logged(config, rd, setup, start, state, round_metrics, t_start)


def train_logged(
  config, rd: RunDir, setup: Built, start: int, state, round_metrics=None, t_start=None
) -> dict[str, float]:
  """Rounds start+1..total_rounds with their metrics, evaluations and checkpoints (RoundLog).

  Returns:
    The final metrics (summary.json). A diverged run raises TrainingDivergedError naming
    the last good checkpoint.
  """
  t_start = time.perf_counter() if t_start is None else t_start
  log = RoundLog(config, rd, setup, start, round_metrics)
  try:
    rounds = trainer.train_rounds(setup, state, start + 1, config.total_rounds)
    for r, new_state, metrics in rounds:
      log.record(r, metrics, lambda s=new_state: s)
  except TrainingDivergedError as e:
    raise log.diverged(e) from None
  finally:
    log.close()
  return log.finish(time.perf_counter() - t_start)


def resume(config, rd: RunDir, setup: Built) -> tuple[int, trainer.TrainState]:
  """Records the config and returns (rounds done, state): fresh, or the newest checkpoint's.

  A fresh run with shared data starts from the warm-up model (warmup.json).
  """
  rd.record_config()  # only now: a config that fails the data-dependent checks locks nothing
  rd.write_json('data_stats.json', setup.data_stats)
  start = rd.latest_round() or 0
  if start > config.total_rounds:
    raise ConfigError(
      f'config.total_rounds={config.total_rounds} is below the round of the newest checkpoint '
      f'({start}) in {rd.workdir}; set total_rounds >= {start} or use a new --workdir'
    )
  params, model_state = None, None
  if setup.shared is not None and not start:  # a resumed run has its warm-up in the state
    (params, model_state), warm = warm_up(setup, config)
    logging.info(
      'warm-up on %d shared examples: %s',
      warm['warmup/examples'],
      {k: round(v, 4) for k, v in warm.items() if k.startswith('warmup/') and 'ex' not in k},
    )
    rd.write_json('warmup.json', warm, indent=2)
  state = trainer.initial_state(setup, params, model_state)
  if start:
    state = trainer.TrainState(*rd.restore(start, tuple(state)))
    logging.info('resumed from the checkpoint of round %d', start)
  if start == config.total_rounds:
    logging.info('nothing to do: the run already has %d rounds', start)
  return start, state


class RoundLog:
  """What a federated run writes as its rounds come: metrics, evaluations, checkpoints.

  Rows a killed run logged after its last checkpoint are dropped and redone; `finish`
  writes summary.json and perf.json.

  Args:
    config: the run's config (rounds, eval/log/checkpoint intervals, pruning).
    rd: its RunDir.
    setup: its Built setup (evaluation, global model).
    start: rounds already done (a resumed run).
    round_metrics: optional (round, global params) -> extra metrics logged every round.
  """

  def __init__(self, config, rd: RunDir, setup: Built, start: int, round_metrics=None):
    self.config, self.rd, self.setup, self.round_metrics = config, rd, setup, round_metrics
    self.pruner = make_federated_pruner(config)
    self.progress = Progress(config.total_rounds, start_round=start)
    self.writer = rd.metrics(resume_after=start)
    self.final: dict[str, float] = {}
    self.first_round_sec, self.train_secs, self.examples = None, [], 0.0

  def record(self, r: int, metrics: dict, state_of: Callable[[], trainer.TrainState]) -> None:
    """Logs round r's metrics, evaluates and checkpoints when due.

    Args:
      r: the round just run.
      metrics: its training metrics (trainer.train_rounds).
      state_of: () -> the state after round r (called only when something needs it).
    """
    config, setup = self.config, self.setup
    dt = metrics['perf/round_sec']
    if self.first_round_sec is None:
      self.first_round_sec = dt
    else:
      self.train_secs.append(dt)
      self.examples += metrics['train/examples']
    last = r == config.total_rounds
    if self.round_metrics is not None or self.pruner is not None:
      global_params = trainer.global_model(setup, state_of())[0]
      if self.round_metrics is not None:
        metrics.update(self.round_metrics(r, global_params))
      if self.pruner is not None:
        metrics.update(sparsity_of(self.pruner, global_params))
    if r % config.eval_every_rounds == 0 or last:
      metrics.update(trainer.evaluate(setup, state_of()))
    if r % config.log_every_rounds == 0 or last or 'eval/loss' in metrics:
      self.writer.write(r, metrics)
      logging.info(self.progress.line(r, metrics))
    if r % config.ckpt_every_rounds == 0 or last:
      self.rd.save(r, tuple(state_of()))
    self.final = {'round': r, **{k: v for k, v in metrics.items() if not k.startswith('perf/')}}

  def diverged(self, error: TrainingDivergedError) -> TrainingDivergedError:
    """The error to raise for a diverged run: it names the last good checkpoint kept."""
    kept = self.rd.latest_round()
    return TrainingDivergedError(
      f'{error}; stopped, the last good checkpoint (round {kept or "none"}) is kept in '
      f'{self.rd.checkpoints.directory}'
    )

  def close(self) -> None:
    self.writer.close()

  def finish(self, wall_sec: float, **perf_extra) -> dict[str, float]:
    """Writes summary.json (final metrics) and perf.json; returns the final metrics."""
    final = self.final or self.rd.last_logged()  # a finished run resumed: its last row
    self.rd.write_json('summary.json', final, indent=2, sort_keys=True)
    fr = self.setup.round
    secs = self.train_secs
    perf = {
      'wall_sec': wall_sec,
      'first_round_sec': self.first_round_sec,
      'median_round_sec': float(np.median(secs)) if secs else None,
      'examples_per_sec': self.examples / sum(secs) if secs else None,
      'devices': int(fr.mesh.devices.size),
      'client_strategy': fr.client_map.strategy,
      'local_steps_unroll': fr.unroll,
      **perf_extra,
    }
    self.rd.write_json('perf.json', perf, indent=2)
    logging.info(
      'done: %s round %d, eval/accuracy %.4f, wall %.1f s',
      self.rd.workdir,
      final.get('round', 0),
      final.get('eval/accuracy', float('nan')),
      wall_sec,
    )
    return final
