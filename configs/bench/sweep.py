r"""Throughput of a sweep: a workload's runs in one compiled program (fedcomp.sweep.group).

Cases: 1, 4 and 8 runs of the `base` workload (small_mlp or emnist_cnn) in one program;
run i has seed i and client learning rate x (1 + 0.05 i). examples_per_sec sums over runs;
peak_rss_mib_per_run divides the process's peak RSS by the runs.

  python -m launch.bench --config=configs/bench/sweep.py
  python -m launch.bench --config=configs/bench/sweep.py:base=emnist_cnn
"""

import importlib

from configs import common as configs_common


def get_config(arg=None):
  arg = configs_common.parse_arg(
    arg, base='small_mlp', runlocal=False, repeats=1, timed_rounds=10
  )  # fmt: skip
  if arg.base not in ('small_mlp', 'emnist_cnn'):
    raise ValueError(f"base={arg.base!r} must be 'small_mlp' or 'emnist_cnn'")
  base_arg = f'repeats={arg.repeats},timed_rounds={arg.timed_rounds}' + (
    ',runlocal' if arg.runlocal else ''
  )
  c = importlib.import_module(f'configs.bench.{arg.base}').get_config(base_arg)
  c.bench.workload = 'sweep'  # of arg.base's workload: its cohort and model
  c.bench.runs = 1
  c.bench.cases = [{'bench.runs': n} for n in ((1, 2) if arg.runlocal else (1, 4, 8))]
  return c
