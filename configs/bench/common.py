"""The bench section shared by the throughput workloads."""

import ml_collections

from configs import common


def parse(arg: str | None) -> ml_collections.ConfigDict:
  """The arguments every bench config accepts."""
  return common.parse_arg(arg, runlocal=False, repeats=1, timed_rounds=10)


def bench_config(workload: str, arg: str | None) -> ml_collections.ConfigDict:
  """A federated config plus `bench` fields, parsed from `arg` ('runlocal', 'repeats=3')."""
  arg = parse(arg)
  c = common.federated_config()
  c.experiment = 'bench'
  c.data_name = 'random'
  c.partition_name = 'natural'
  c.partition.local_test_fraction = 0.0
  c.bench = ml_collections.ConfigDict(
    {
      'workload': workload,
      'warmup_rounds': 1,
      'timed_rounds': arg.timed_rounds,
      'repeats': arg.repeats,
      'peak_matmul_n': 2048,
      'eval_every_rounds': 0,  # 0: no evaluation (timed apart where a workload has it)
      'cases': [],  # [{dotted key: value}, ...]: one benchmark per case
      'runs': 1,  # > 1: that many runs in one program (configs/bench/sweep.py)
      'runs_strategy': 'auto',  # of the runs axis: auto, vmap or map (fedcomp.sweep.group)
    }
  )
  if arg.runlocal:
    c.bench.timed_rounds = 2
    c.bench.peak_matmul_n = 512
  return c
