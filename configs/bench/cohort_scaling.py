r"""Throughput and memory per cohort size: `simple_cnn`, cohorts of 10, 100 and 1,000.

The pfl_cifar10 workload (1,000 clients x 50 random 32x32x3 examples, batch 10, client
SGD 0.1) with the cohort as the only change; one JSON line per cohort size.

  python -m launch.bench --config=configs/bench/cohort_scaling.py
  python -m launch.bench --config=configs/bench/cohort_scaling.py:runlocal
"""

from configs.bench import common, pfl_cifar10


def get_config(arg=None):
  c = pfl_cifar10.get_config(arg)
  c.bench.workload = 'cohort_scaling'
  c.bench.eval_every_rounds = 0
  cohorts = (10, 100, 1000)
  if common.parse(arg).runlocal:
    cohorts = (1, 2)
  c.bench.cases = [{'cohort_size': k} for k in cohorts]
  return c
