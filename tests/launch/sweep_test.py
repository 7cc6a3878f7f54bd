"""launch.sweep end to end: jobs, resume after kill -9, commands, report, errors."""

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time

from experiments.federated_test import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = textwrap.dedent(
  """
  from configs import common
  from fedcomp.sweep import spec as sw

  def get_config(arg=None):
    c = common.federated_config()
    c.total_rounds = 6
    c.cohort_size = 4
    c.batch_size = 16
    c.eval_every_rounds = 3
    c.ckpt_every_rounds = 1
    c.partition.num_clients = 8
    c.model_name = 'mlp'
    c.model.hidden = (32,)
    return c

  def get_sweep(arg=None):
    algorithms = ['fed_avg', 'fed_prox'] if arg != 'bad' else ['fed_avg', 'fed_proxx']
    return sw.product(sw.axis('algorithm_name', algorithms), sw.seeds(2))
  """
)
RUNS = ['algorithm_name=fed_avg,seed=0', 'algorithm_name=fed_avg,seed=1',
        'algorithm_name=fed_prox,seed=0', 'algorithm_name=fed_prox,seed=1']  # fmt: skip


def sweep(config, workdir, *extra, wait=True):
  cmd = [sys.executable, '-m', 'launch.sweep', f'--config={config}', f'--workdir={workdir}', *extra]
  if not wait:  # nothing reads its output: a full pipe would stall it
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_sweep_runs_jobs_resumes_after_kill_and_reports(tmp_path):
  config = tmp_path / 'cfg.py'
  config.write_text(CONFIG)
  whole, killed = tmp_path / 'whole', tmp_path / 'killed'
  out = sweep(config, whole, '--parallel=2')  # two jobs in two subprocesses at once
  assert out.returncode == 0, out.stderr[-2000:]
  plan = json.loads((whole / 'sweep.json').read_text())
  assert plan['jobs'] == [RUNS[:2], RUNS[2:]]  # the algorithm is structural; seeds share a program
  assert '| fed_prox | 2/2 |' in out.stdout and (whole / 'results.csv').exists()

  proc = sweep(config, killed, wait=False)
  second = killed / RUNS[2] / 'checkpoints'
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if second.exists() and any(n.isdigit() for n in os.listdir(second)):
      break
    time.sleep(0.05)
  assert proc.poll() is None, 'the sweep ended before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / RUNS[2] / 'summary.json').exists(), 'killed too late to test resume'
  done_first = (killed / RUNS[0] / 'metrics.jsonl').stat().st_mtime_ns
  out = sweep(config, killed)
  assert out.returncode == 0, out.stderr[-2000:]
  assert (killed / RUNS[0] / 'metrics.jsonl').stat().st_mtime_ns == done_first  # not rerun
  for run in RUNS:
    assert read_metrics(str(killed / run)) == read_metrics(str(whole / run)), run
  assert _without_walls(killed / 'results.md') == _without_walls(whole / 'results.md')

  os.remove(whole / 'results.md')
  out = sweep(config, whole, '--report_only')
  assert out.returncode == 0 and (whole / 'results.md').exists()


def _without_walls(path):
  return [line.rsplit('|', 2)[0] for line in path.read_text().splitlines()]


def test_print_commands_and_seeds_for_a_config_without_sweep(tmp_path):
  out = sweep(f'{ROOT}/configs/fedavg.py:runlocal', tmp_path, '--seeds=2', '--print_commands',
              '--config.client_tx.learning_rate=0.2')  # fmt: skip
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 2
  args = shlex.split(lines[1])
  assert args[1:3] == ['-m', 'launch.main']
  assert f'--workdir={tmp_path}/seed=1' in args
  assert '--config.seed=1' in args and '--config.client_tx.learning_rate=0.2' in args
  assert not os.listdir(tmp_path)  # printing runs nothing


def test_bad_sweep_fails_in_one_line_before_anything_runs(tmp_path):
  config = tmp_path / 'cfg.py'
  config.write_text(CONFIG)
  for extra, message in (
    ((f'--config={config}:bad',), 'run algorithm_name=fed_proxx,seed=0: config.algorithm_name='),
    ((f'--config={config}', '--vmap_keys=algorithm_name'), "'algorithm_name' changes what is"),
    ((f'--config={config}', '--seeds=2'), '--seeds adds seeds to a sweep that has none'),
  ):
    cmd = [sys.executable, '-m', 'launch.sweep', f'--workdir={tmp_path / "w"}', *extra]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith('fedcomp: error:')]
    assert len(errors) == 1 and message in errors[0], out.stderr[-2000:]
    assert not (tmp_path / 'w').exists()
