"""The throughput benchmark: fields, their relations, and every bench config."""

import importlib
import json
import os

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


@pytest.mark.parametrize('name', BENCH_CONFIGS)
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
    assert r['mfu'] == pytest.approx(r['achieved_gflops'] / r['peak_gflops'])
    assert r['achieved_gflops'] == pytest.approx(
      r['examples_per_sec'] * r['model_flops_per_example'] / 1e9
    )
    assert r['client_updates_per_sec'] == pytest.approx(r['cohort_size'] * r['rounds_per_sec'])
    assert r['peak_gflops'] > 0 and r['compile_sec'] >= 0


def test_bench_rejects_bad_round_counts(tmp_path):
  config = importlib.import_module('configs.bench.small_mlp').get_config('runlocal')
  config.bench.timed_rounds = 0
  with pytest.raises(ConfigError, match=r'config.bench.timed_rounds=0 must be an integer >= 1'):
    bench.run(config, str(tmp_path))


def test_peak_matmul_is_positive():
  assert bench.peak_matmul_gflops(256, repeats=2) > 0
