"""Multi-process runs: 2 processes x 4 CPU devices give the bits of 1 process x 8 devices.

`python -m launch.main` is started as two processes connected over 127.0.0.1 (gloo
collectives), each with 4 fake CPU devices, and as one process with 8. The two-process run
stops after round 2 and is resumed to round 3 by a second pair of processes (restoring the
orbax checkpoint in both). FedPer covers the per-client state table and the per-client
evaluation as well as the round and the global evaluation.
"""

import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = (
  f'--config={ROOT}/configs/fedavg.py:runlocal',
  '--config.model_name=mlp',
  '--config.model.hidden=(32,)',
  '--config.algorithm_name=fed_per',
  '--config.algorithm.num_personal_layers=1',
  '--config.eval_every_rounds=1',  # every row comparable, whichever round a run ends at
)
TIMEOUT = 240


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def environment(devices: int) -> dict[str, str]:
  """This process's environment with `devices` fake CPU devices."""
  flags = [
    f
    for f in os.environ.get('XLA_FLAGS', '').split()
    if not f.startswith('--xla_force_host_platform_device_count')
  ]
  flags.append(f'--xla_force_host_platform_device_count={devices}')
  return {**os.environ, 'XLA_FLAGS': ' '.join(flags), 'JAX_PLATFORMS': 'cpu'}


def start(workdir, rounds: int, devices: int, log, process=None) -> subprocess.Popen:
  """Starts launch.main on the test config; process = (port, count, index) or None."""
  cmd = [sys.executable, '-m', 'launch.main', *ARGS, f'--workdir={workdir}']
  cmd.append(f'--config.total_rounds={rounds}')
  if process is not None:
    port, count, index = process
    cmd += [
      f'--coordinator_address=127.0.0.1:{port}',
      f'--num_processes={count}',
      f'--process_id={index}',
    ]
  with open(log, 'w') as out:  # the child keeps its own descriptor
    proc = subprocess.Popen(
      cmd, cwd=ROOT, env=environment(devices), stdout=out, stderr=subprocess.STDOUT
    )
  proc.log = log
  return proc


def start_pair(workdir, rounds: int, logs) -> list[subprocess.Popen]:
  """Two processes of 4 devices each, connected through a fresh port."""
  port = free_port()
  return [start(workdir, rounds, 4, logs / f'{rounds}_{i}.log', (port, 2, i)) for i in (0, 1)]


def finish(procs: list[subprocess.Popen]) -> None:
  """Waits for the processes; all must succeed (their log's tail otherwise).

  A process that fails ends the others at once (they would wait for it in a collective).
  """
  deadline = time.time() + TIMEOUT
  try:
    while time.time() < deadline:
      codes = [p.poll() for p in procs]
      if None not in codes or any(codes):
        break
      time.sleep(0.1)
  finally:
    for p in procs:
      finish_quietly(p)
  for p in procs:
    if p.returncode:
      with open(p.log) as f:
        tail = f.read()[-3000:]
      raise AssertionError(f'{p.args} exited with {p.returncode}:\n{tail}')


def finish_quietly(proc: subprocess.Popen) -> None:
  """Kills the process if it still runs (a failed test leaves nothing behind)."""
  if proc.poll() is None:
    proc.kill()
    proc.wait()


def rows(workdir) -> list[dict]:
  """metrics.jsonl without timings."""
  with open(workdir / 'metrics.jsonl') as f:
    lines = f.read().splitlines()
  return [{k: v for k, v in json.loads(x).items() if not k.startswith('perf/')} for x in lines]


def files(workdir) -> set[str]:
  """The workdir's files outside checkpoints/ and tb/."""
  out = set()
  for dirpath, dirnames, filenames in os.walk(workdir):
    dirnames[:] = [d for d in dirnames if d not in ('checkpoints', 'tb')]
    out.update(os.path.relpath(os.path.join(dirpath, f), workdir) for f in filenames)
  return out


def test_two_processes_match_one_process_bit_for_bit(tmp_path):
  logs = tmp_path / 'logs'
  logs.mkdir()
  one, two = tmp_path / 'one', tmp_path / 'two'
  single = start(one, 3, 8, logs / 'single.log')
  try:
    finish(start_pair(two, 2, logs))  # rounds 1-2, checkpointed
    finish(start_pair(two, 3, logs) + [single])  # resumed: round 3
  finally:
    finish_quietly(single)

  with open(logs / '3_0.log') as f:
    assert 'process 0 of 2, 4 local / 8 global devices' in f.read()
  for i in (0, 1):
    with open(logs / f'3_{i}.log') as f:
      assert 'resumed from the checkpoint of round 2' in f.read()
  expected = rows(one)
  assert [r['round'] for r in expected] == [1, 2, 3]
  assert 'eval/personal_accuracy' in expected[-1]
  assert rows(two) == expected  # one row per round: process 1 wrote none
  written = {'config.json', 'data_stats.json', 'metrics.jsonl', 'perf.json', 'summary.json'}
  assert files(two) == files(one) == written
  for name in ('summary.json', 'data_stats.json'):
    assert (two / name).read_text() == (one / name).read_text()
  assert json.loads((two / 'config.json').read_text()) == json.loads(
    (one / 'config.json').read_text()
  )
  # One TensorBoard event file per command, from process 0 alone.
  assert len(os.listdir(one / 'tb')) == 1 and len(os.listdir(two / 'tb')) == 2
  assert sorted(os.listdir(two / 'checkpoints')) == sorted(os.listdir(one / 'checkpoints'))


def test_distributed_flags_go_together(tmp_path):
  cmd = [sys.executable, '-m', 'launch.main', *ARGS, f'--workdir={tmp_path}']
  out = subprocess.run(
    [*cmd, '--coordinator_address=127.0.0.1:1', '--num_processes=2'],
    cwd=ROOT,
    env=environment(1),
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
  )
  assert out.returncode == 2
  errors = [line for line in out.stderr.splitlines() if line.startswith('fedcomp: error:')]
  assert errors == [
    'fedcomp: error: --coordinator_address, --num_processes and --process_id go together; '
    'missing --process_id'
  ]
  assert not list(tmp_path.iterdir())


def test_multi_host_environments():
  cases = [
    ({}, False),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, True),
    ({'FEDCOMP_MULTIHOST': '1'}, True),
    ({'TPU_WORKER_HOSTNAMES': 'w0'}, False),
    ({'TPU_WORKER_HOSTNAMES': 'w0,w1'}, True),
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4'}, False),  # the sbatch shell, not an srun step
    ({'SLURM_JOB_ID': '7', 'SLURM_STEP_NUM_TASKS': '1'}, False),
    ({'SLURM_JOB_ID': '7', 'SLURM_STEP_NUM_TASKS': '4'}, True),
    ({'OMPI_MCA_orte_hnp_uri': 'x', 'OMPI_COMM_WORLD_SIZE': '2'}, True),
  ]
  # In a subprocess: launch.main defines absl flags that other launchers define too.
  code = (
    'import json, sys; from launch.main import _is_multi_host_env; '
    'print(json.dumps([_is_multi_host_env(e) for e in json.load(sys.stdin)]))'
  )
  out = subprocess.run(
    [sys.executable, '-c', code],
    input=json.dumps([env for env, _ in cases]),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
    check=True,
  )
  assert json.loads(out.stdout) == [multi for _, multi in cases]
