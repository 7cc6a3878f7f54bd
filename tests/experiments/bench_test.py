"""The throughput benchmark: fields, their relations, and every bench config."""

import importlib
import json
import os

import numpy as np
import pytest

from fedcomp.errors import ConfigError
from fedcomp.experiments import bench

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH_CONFIGS = sorted(
  f[:-3]
  for f in os.listdir(os.path.join(ROOT, 'configs', 'bench'))
  if f.endswith('.py') and f not in ('__init__.py', 'common.py')
)
FIELDS = {
  'workload',
  'rounds_per_sec',
  'client_updates_per_sec',
  'examples_per_sec',
  'model_flops_per_example',
  'achieved_gflops',
  'peak_gflops',
  'mfu',
  'compile_sec',
  'peak_rss_mib',
  'strategy',
  'devices',
}


# Workloads of a minute each on 2 cores whose code paths the others cover: -m slow.
SLOW_BENCH = ('cohort_scaling', 'many_clients', 'emnist_cnn')


@pytest.mark.parametrize(
  'name',
  [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW_BENCH else []) for n in BENCH_CONFIGS],
)
def test_bench_config_runs_and_reports(name, tmp_path):
  config = importlib.import_module(f'configs.bench.{name}').get_config('runlocal,repeats=2')
  config.num_devices = 1
  results = bench.run(config, str(tmp_path))
  cases = list(config.bench.cases) or [{}]
  assert len(results) == 2 * len(cases)
  assert [r['case'] for r in results] == [dict(c) for c in cases for _ in range(2)]
  lines = (tmp_path / 'bench.jsonl').read_text().splitlines()
  assert [json.loads(line) for line in lines] == results
  for r in results:
    assert set(r) >= FIELDS and r['workload'] == name
    assert r['devices'] == 1 and r['cohort_slots'] == 8 * -(-r['cohort_size'] // 8)
    assert r['round_sec_min'] > 0 and r['peak_gflops'] > 0 and r['compile_sec'] >= 0


def test_bench_counts_the_examples_and_flops_of_the_workload(tmp_path):
  """Against hand counts: emnist_cnn runlocal trains 4 clients x 128 examples per round;
  small_mlp's model (784-200-62) costs 3 x 2 x (784 x 200 + 200 x 62) FLOPs per example."""
  emnist = importlib.import_module('configs.bench.emnist_cnn').get_config('runlocal')
  (r,) = bench.run(emnist, str(tmp_path))
  assert r['examples_per_round_median'] == 4 * 128
  macs = 26 * 26 * 32 * 9 + 24 * 24 * 64 * 9 * 32 + 12 * 12 * 64 * 128 + 128 * 62
  assert r['model_flops_per_example'] == 3 * 2 * macs
  mlp = importlib.import_module('configs.bench.small_mlp').get_config('runlocal')
  (r,) = bench.run(mlp, str(tmp_path))
  assert r['model_flops_per_example'] == 3 * 2 * (784 * 200 + 200 * 62) == 1_015_200
  # The ragged clients' sizes as the peers' scripts draw them (seeded log-uniform 10..400).
  from fedcomp.core.trainer import sample_cohort
  from fedcomp.data.sources.random_images import client_sizes

  sizes = client_sizes(200, 10, 400, mlp.seed)
  timed = [sizes[sample_cohort(mlp.seed, k, 200, mlp.cohort_size)].sum() for k in (2, 3)]
  assert r['examples_per_round_median'] == np.median(timed)  # round 1 is the untimed warm-up


def test_bench_rejects_bad_round_counts(tmp_path):
  config = importlib.import_module('configs.bench.small_mlp').get_config('runlocal')
  config.bench.timed_rounds = 0
  with pytest.raises(ConfigError, match=r'config.bench.timed_rounds=0 must be an integer >= 1'):
    bench.run(config, str(tmp_path))


def test_peak_matmul_is_positive():
  assert bench.peak_matmul_gflops(256, repeats=2) > 0
