"""Throughput of the round engine on a fixed federated workload.

`run(config, workdir)` builds the workload exactly as a federated run would
(`federated.build`), measures this process's dense float32 matmul peak, runs
`bench.warmup_rounds` untimed rounds (compile, reported as `compile_sec`), then
`bench.timed_rounds` timed rounds `bench.repeats` times, with evaluation (if
any) timed apart. It prints one JSON line per repeat and writes them to
`bench.jsonl` in the workdir.

FLOPs follow the PaLM convention: model FLOPs per training example are 3x the
forward pass (forward + backward), padded examples excluded; MFU = achieved
model FLOP/s / measured matmul peak.

References: Chowdhery et al. 2022 (PaLM), App. B (model FLOP utilisation).
"""

import json
import os
import platform
import resource
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fedcomp.core import trainer
from fedcomp.errors import ConfigError
from fedcomp.experiments import federated
from fedcomp.registry import check_known_keys
from fedcomp.utils.config_overrides import with_overrides


def peak_matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
  """Median GFLOP/s of a jitted n x n float32 matmul on the default device."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(lambda a, b: a @ b)
  matmul(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    matmul(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n**3 / float(np.median(times)) / 1e9


def _device_memory_mib() -> float | None:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return None if peak is None else peak / 2**20


BENCH_KEYS = (
  'workload',
  'warmup_rounds',
  'timed_rounds',
  'repeats',
  'peak_matmul_n',
  'eval_every_rounds',
  'cases',
  'runs',
  'runs_strategy',
)


def check(config: ml_collections.ConfigDict) -> None:
  """The federated config and its bench section, checked (ConfigError naming the key)."""
  federated.validate(config, ('bench',))
  bench = config.bench
  check_known_keys(bench, BENCH_KEYS, 'config.bench')
  for key, least in (
    ('warmup_rounds', 0),
    ('timed_rounds', 1),
    ('repeats', 1),
    ('eval_every_rounds', 0),
    ('peak_matmul_n', 1),
    ('runs', 1),
  ):
    if not isinstance(bench[key], int) or bench[key] < least:
      raise ConfigError(f'config.bench.{key}={bench[key]!r} must be an integer >= {least}')
  strategy = bench.get('runs_strategy', 'auto')
  if strategy not in ('auto', 'vmap', 'map'):
    raise ConfigError(f'config.bench.runs_strategy={strategy!r} is unknown; known: auto, vmap, map')


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Benchmarks each case of `config` (one JSON line per case and repeat).

  Args:
    config: as for `run_case`, plus `bench.cases`: a list of {dotted key: value}
      overrides, one benchmark each (e.g. cohort sizes); empty runs `config` once.
    workdir: where bench.jsonl is written.

  Returns:
    The result dicts of all cases and repeats.
  """
  cases = list(config.bench.get('cases') or [{}])
  cased = [with_overrides(config, dict(c)) for c in cases]
  for case in cased:  # every case's config is checked before any work
    check(case)
  results = []
  for case, overrides in zip(cased, cases):
    results += run_case(case, workdir, dict(overrides))
  return results


def run_case(
  config: ml_collections.ConfigDict, workdir: str, case: dict | None = None
) -> list[dict]:
  """Benchmarks the workload of `config`; returns one result dict per repeat.

  Args:
    config: a federated config with a `bench` section: workload, warmup_rounds,
      timed_rounds, repeats, peak_matmul_n, eval_every_rounds (k > 0: the global
      test set is evaluated every k timed rounds, timed apart).
    workdir: where bench.jsonl is written.
    case: the overrides that made this case, recorded in each result.

  Returns:
    The result dicts (also printed, one JSON line each).
  """
  check(config)
  bench = config.bench
  os.makedirs(workdir, exist_ok=True)
  runs = bench.get('runs', 1)
  setup = federated.build(config)
  fd, fr = setup.data, setup.round
  peak = peak_matmul_gflops(bench.peak_matmul_n)
  logging.info('peak float32 matmul: %.1f GFLOP/s', peak)
  if runs == 1:
    cohort = lambda r: (*trainer.cohort(setup, r), trainer.round_key(config.seed, r))
    step = fr.round
    server, table = trainer.initial_state(setup)
  else:
    cohort, step, (server, table) = _run_group(config, setup, runs)
  r = 0
  t0 = time.perf_counter()
  for _ in range(max(bench.warmup_rounds, 1)):
    r += 1
    server, table, metrics = step(server, table, *cohort(r))
    jax.block_until_ready(metrics)
  first_sec = time.perf_counter() - t0

  train_flops = 3 * setup.model.flops_per_example
  results = []
  for repeat in range(bench.repeats):
    times, examples, eval_secs = [], [], []
    nxt = cohort(r + 1)
    for i in range(bench.timed_rounds):
      r += 1
      t = time.perf_counter()
      server, table, metrics = step(server, table, *nxt)
      if i + 1 < bench.timed_rounds:
        nxt = cohort(r + 1)  # host gather overlaps the running round
      count = float(np.sum(metrics['train/examples']))  # blocks until the round is done
      times.append(time.perf_counter() - t)
      examples.append(count)
      if bench.eval_every_rounds and (i + 1) % bench.eval_every_rounds == 0:
        t = time.perf_counter()
        state = trainer.TrainState(server, table)
        if runs > 1:  # the first run's model
          state = jax.tree.map(lambda a: a[0], state)
        setup.evaluate(*trainer.global_model(setup, state), fd.global_test)
        eval_secs.append(time.perf_counter() - t)
    round_sec = float(np.median(times))
    examples_per_sec = float(np.median(np.asarray(examples) / np.asarray(times)))
    achieved = examples_per_sec * train_flops / 1e9
    result = {
      'workload': bench.workload,
      'case': case or {},
      'repeat': repeat,
      'rounds_per_sec': 1.0 / round_sec,
      'runs': runs,
      'runs_strategy': _group_strategy(config, setup) if runs > 1 else None,
      'client_updates_per_sec': runs * config.cohort_size / round_sec,
      'examples_per_sec': examples_per_sec,
      'examples_per_round_median': float(np.median(examples)),
      'round_sec_median': round_sec,
      'round_sec_min': float(min(times)),
      'round_sec_max': float(max(times)),
      'timed_rounds': len(times),
      'eval_sec_median': float(np.median(eval_secs)) if eval_secs else None,
      'model_flops_per_example': train_flops,
      'achieved_gflops': achieved,
      'peak_gflops': peak,
      'mfu': achieved / peak,
      'compile_sec': max(first_sec - bench.warmup_rounds * round_sec, 0.0),
      'first_rounds_sec': first_sec,
      'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      'peak_rss_mib_per_run': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / runs,
      'device_peak_mib': _device_memory_mib(),
      'strategy': fr.client_map.strategy,
      'unroll': fr.unroll,
      'chunk_size': fr.client_map.chunk_size if fr.client_map.strategy == 'map' else None,
      'dynamic_steps': fr.dynamic_steps,
      'reduction_width': fr.client_map.width,
      'cohort_slots': fr.client_map.layout(config.cohort_size).size,
      'conv_impl': config.model.get('conv_impl'),
      'devices': int(fr.mesh.devices.size),
      'platform': jax.devices()[0].platform,
      'num_clients': fd.num_clients,
      'cohort_size': config.cohort_size,
      'jax': jax.__version__,
      'python': platform.python_version(),
    }
    line = json.dumps(result)
    print(line, flush=True)
    with open(os.path.join(workdir, 'bench.jsonl'), 'a') as f:
      f.write(line + '\n')
    results.append(result)
  return results


def _run_group(config, setup, runs: int):
  """The bench's workload as `runs` runs in one program (fedcomp.sweep.group).

  Run i has seed config.seed + i and client learning rate × (1 + 0.05 i): both vary
  inside the program (the traced hyperparameter path of a real sweep).

  Returns:
    (cohort(r) -> the round's stacked arguments, step(server, table, *args), state).
  """
  from fedcomp.sweep import group

  lr = config.client_tx.learning_rate
  configs = [
    with_overrides(
      config, {'seed': config.seed + i, 'client_tx.learning_rate': lr * (1 + 0.05 * i)}
    )
    for i in range(runs)
  ]
  setups = [setup] + [federated.build(c) for c in configs[1:]]
  keys = ['client_tx.learning_rate']
  if len({group.structure(s) for s in setups}) > 1:
    raise ConfigError(f'config.bench.runs={runs}: the seeds give runs of different shapes')
  strategy = _group_strategy(config, setup)
  gr = group.GroupRound(configs[0], setup, keys, strategy, max(s.round.pad_to for s in setups))
  hyper = group.hyper_values(configs, keys)
  state = group.stack_states([trainer.initial_state(s) for s in setups])

  def step(server, table, *args):
    return gr.round(hyper, server, table, *args)

  return (lambda r: gr.cohorts(setups, r)), step, state


def _group_strategy(config, setup) -> str:
  from fedcomp.sweep import group

  return group.resolve_strategy(config.bench.get('runs_strategy', 'auto'), setup)
