r"""Runs a sweep of any config: its `get_sweep(arg)` list, or one run with `--seeds=N`.

  python -m launch.sweep --config=configs/sweep_noniid.py --workdir=/tmp/sweep
  python -m launch.sweep --config=configs/fedavg.py:runlocal --workdir=/tmp/s --seeds=3 \
      [--config.key=value ...]           # applies to every run
  python -m launch.sweep ... --print_commands   # one launch.main command per run
  python -m launch.sweep ... --report_only      # rebuild results.csv/.md and plots

Each run writes DIR/<run-name>/ as `launch.main` would (and resumes from it); finished runs
are skipped, so a killed sweep started again goes on where it stopped. Federated runs that
differ only in seeds and float hyperparameters run as one compiled program
(fedcomp.sweep.group); the others run as separate jobs, `--parallel=K` at a time in
subprocesses. Bad input ends the program with a one-line message (exit status 2) before
anything is compiled.
"""

import importlib.util
import os
import shlex
import subprocess
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from fedcomp.errors import ConfigError, TrainingDivergedError
from fedcomp.utils.xla_flags import set_default_xla_flags

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Config file (may define get_sweep(arg)).', lock_config=False,
  accept_new_attributes=True,
)  # fmt: skip
_WORKDIR = flags.DEFINE_string('workdir', None, 'The sweep directory (one subdirectory per run).')
_SEEDS = flags.DEFINE_integer('seeds', 0, 'Repeat every run with seeds 0..N-1 (0: as listed).')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Jobs run at once (subprocesses when > 1).')
_PRINT = flags.DEFINE_bool('print_commands', False, 'Print one launch.main command per run.')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False, 'Only rebuild the results table and plots.')
_VMAP = flags.DEFINE_bool('vmap', True, 'Run runs that differ only in numbers as one program.')
_VMAP_KEYS = flags.DEFINE_list(
  'vmap_keys', [], 'Keys allowed to vary in one program (default all).'
)
_STRATEGY = flags.DEFINE_enum('runs_strategy', 'auto', ['auto', 'vmap', 'map'], 'Runs axis.')
_METRIC = flags.DEFINE_string('metric', 'eval/accuracy', 'Metric of the table and plots.')
_JOB = flags.DEFINE_integer('job', None, 'Run only this job (the parallel executor uses it).')
flags.mark_flags_as_required(['config', 'workdir'])


def load_sweep(config_arg: str, base):
  """The config file's get_sweep(arg) list, or None if it defines none."""
  path, _, arg = config_arg.partition(':')
  spec = importlib.util.spec_from_file_location('_sweep_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  get_sweep = getattr(module, 'get_sweep', None)
  if get_sweep is None:
    return None
  return get_sweep(arg or None)


def cli_value(value) -> str:
  """A config value as `--config.key=VALUE` takes it."""
  if isinstance(value, list | tuple):
    return repr(tuple(value))
  return str(value)


def run_command(config_arg: str, workdir: str, overrides: dict) -> str:
  """A self-contained launch.main command for one run."""
  parts = [sys.executable, '-m', 'launch.main', f'--config={config_arg}', f'--workdir={workdir}']
  parts += [f'--config.{k}={cli_value(v)}' for k, v in overrides.items()]
  return ' '.join(shlex.quote(p) for p in parts)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  try:
    _main()
  except ConfigError as e:
    print(f'fedcomp: error: {e}', file=sys.stderr)
    sys.exit(2)


def _main():
  set_default_xla_flags()
  from fedcomp.utils import compilation_cache, logs

  logs.quiet_libraries()
  compilation_cache.enable()
  from fedcomp.experiments import get_run
  from fedcomp.sweep import plan, report, spec
  from fedcomp.utils.config_overrides import with_overrides

  base = _CONFIG.value
  workdir = _WORKDIR.value
  config_arg = config_flags.get_config_filename(flags.FLAGS['config'])
  base_overrides = dict(config_flags.get_override_values(flags.FLAGS['config']))
  runs = spec.expand(load_sweep(config_arg, base), _SEEDS.value)
  configs = {r.name: with_overrides(base, r.overrides) for r in runs}
  for name, c in configs.items():  # every run is checked before anything runs
    try:
      _validate(c)
    except ConfigError as e:
      raise ConfigError(f'run {name}: {e}') from None
  experiment = base.experiment
  jobs = plan.plan_jobs(runs, experiment, vmap=_VMAP.value, vmap_keys=_VMAP_KEYS.value or None)
  if _PRINT.value:
    for r in runs:
      print(
        run_command(config_arg, os.path.join(workdir, r.name), {**base_overrides, **r.overrides})
      )
    return
  if _REPORT_ONLY.value:
    _report(workdir, runs)
    return
  os.makedirs(workdir, exist_ok=True)
  if _JOB.value is None:  # the parallel executor's children leave it to their parent
    _write_plan(workdir, config_arg, base_overrides, runs, jobs)
  total = base.get('total_rounds')

  todo = []
  for i, job in enumerate(jobs):
    left = tuple(r for r in job.runs if not report.is_finished(workdir, r, total))
    if left and (_JOB.value is None or _JOB.value == i):
      todo.append((i, plan.Job(left)))
  logging.info(
    'sweep: %d runs in %d jobs; %d jobs to run (%d runs finished)',
    len(runs), len(jobs), len(todo), len(runs) - sum(len(j.runs) for _, j in todo),
  )  # fmt: skip
  failed = []
  if _PARALLEL.value > 1 and len(todo) > 1:
    failed = _run_parallel([i for i, _ in todo], _PARALLEL.value)
  else:
    for i, job in todo:
      t0 = time.perf_counter()
      failed += _run_job(job, configs, workdir, get_run)
      logging.info('job %d (%d runs) took %.1f s', i, len(job.runs), time.perf_counter() - t0)
  if _JOB.value is None:
    _report(workdir, runs)
  if failed:
    print(f'fedcomp: {len(failed)} run(s) failed: {"; ".join(failed)}', file=sys.stderr)
    sys.exit(1)


def _write_plan(workdir, config_arg, base_overrides, runs, jobs) -> None:
  """DIR/sweep.json: the config, its command-line overrides, the runs and the jobs."""
  from fedcomp.core.run_dir import write_json_atomic

  write_json_atomic(
    os.path.join(workdir, 'sweep.json'),
    {
      'config': config_arg,
      'overrides': {k: cli_value(v) for k, v in base_overrides.items()},
      'runs': [{'name': r.name, 'overrides': r.overrides} for r in runs],
      'jobs': [[r.name for r in j.runs] for j in jobs],
    },
    indent=2,
    default=str,
  )


def _validate(config) -> None:
  from fedcomp.experiments import federated, get_run

  module = sys.modules[get_run(config.experiment).__module__]
  validate = getattr(module, 'validate', None)
  if validate is not None:
    validate(config)
  elif config.experiment == 'federated':
    federated.validate(config)


def _run_job(job, configs, workdir, get_run) -> list[str]:
  """Runs one job in this process; returns 'name: error' for the runs that diverged."""
  from fedcomp.sweep import group

  dirs = [os.path.join(workdir, r.name) for r in job.runs]
  cs = [configs[r.name] for r in job.runs]
  if job.is_group:
    results = group.run_group(cs, dirs, strategy=_STRATEGY.value)
    return [
      f'{r.name}: {e}' for r, e in zip(job.runs, results, strict=True) if isinstance(e, Exception)
    ]
  try:
    get_run(cs[0].experiment)(cs[0], dirs[0])
  except TrainingDivergedError as e:
    return [f'{job.runs[0].name}: {e}']
  return []


def _run_parallel(job_ids, parallel: int) -> list[str]:
  """Runs jobs in subprocesses (this command with --job=i), `parallel` at a time."""
  argv = [a for a in sys.argv[1:] if not a.startswith(('--parallel', '--job'))]
  pending, running, failed = list(job_ids), [], []
  while pending or running:
    while pending and len(running) < parallel:
      i = pending.pop(0)
      cmd = [sys.executable, '-m', 'launch.sweep', *argv, f'--job={i}', '--parallel=1']
      running.append((i, subprocess.Popen(cmd)))
    time.sleep(0.5)
    for i, p in list(running):
      if p.poll() is not None:
        running.remove((i, p))
        if p.returncode:
          failed.append(f'job {i}: exit status {p.returncode}')
  return failed


def _report(workdir: str, runs) -> None:
  from fedcomp.sweep import report

  rows = report.write_report(workdir, runs, _METRIC.value)
  with open(os.path.join(workdir, 'results.md')) as f:
    print(f.read(), end='')
  logging.info('sweep report: %d settings in %s/results.{csv,md}', len(rows), workdir)


if __name__ == '__main__':
  app.run(main)
