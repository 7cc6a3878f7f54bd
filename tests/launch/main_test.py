"""The command line: config overrides, one-line errors, kill -9 and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from absl import flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(
  f for f in os.listdir(os.path.join(ROOT, 'configs')) if f.endswith('.py') and f[0] != '_'
)
CONFIGS.remove('common.py')
# Configs of federated runs (the optimizers, prune, distill, export and autocompress
# experiments' configs have no federated fields).
NOT_FEDERATED = (
  'fishleg_autoencoder',
  'prune',
  'distill',
  'dream',
  'export',
  'autocompress',
  'fsl_gan',
)
FEDERATED_CONFIGS = [c for c in CONFIGS if not c.startswith(NOT_FEDERATED)]


def parse(*argv):
  """Parses launcher-style flags (config locked) into a config."""
  argv = ['main', *argv]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
    'config',
    None,
    'config',
    flag_values=fv,
    lock_config=False,
    accept_new_attributes=True,
    sys_argv=argv,
  )
  fv(argv)
  return fv.config


@pytest.mark.parametrize('name', CONFIGS)
def test_every_config_documents_its_command_and_has_runlocal(name):
  path = os.path.join(ROOT, 'configs', name)
  with open(path) as f:
    source = f.read()
  assert f'--config=configs/{name}' in source, 'docstring must hold the exact command'
  config = parse(
    f'--config={path}:runlocal'
    if 'fmnist' not in name
    else f'--config={path}:partition=iid,runlocal'
  )
  if config.experiment == 'optimizers':  # centralised training: steps, not rounds
    assert config.total_steps <= 50
  elif config.experiment == 'prune':
    assert config.dense.epochs == 1 and config.prune.gradual_steps <= 50
  elif config.experiment == 'distill':
    assert config.teacher.epochs <= 2 and config.train.steps <= 50
  elif config.experiment == 'export':
    assert config.latency_repeats <= 50
  elif config.experiment == 'autocompress':
    assert config.search.episodes * config.search.candidates <= 10
  elif config.experiment == 'fsl_gan':
    assert config.epochs <= 2 and config.data_name == 'digits'
  else:
    assert config.total_rounds <= 3


@pytest.mark.parametrize(
  'overrides',
  [
    ('--config.data_name=idx', '--config.data.path=/some/dir'),
    ('--config.data_name=tfds', '--config.data.name=mnist'),
    ('--config.partition_name=shards', '--config.partition.classes_per_client=2'),
    ('--config.partition_name=dirichlet', '--config.partition.alpha=0.1'),
    ('--config.client_tx.learning_rate=0.05', '--config.server_tx_name=adam'),
    ('--config.model_name=mlp', '--config.model.hidden=(64,32)'),
    ('--config.algorithm.keep_client_opt_state=true', '--config.client_map.strategy=map'),
  ],
)
@pytest.mark.parametrize('name', FEDERATED_CONFIGS)
def test_overrides_across_choices(name, overrides):
  config = parse(f'--config={ROOT}/configs/{name}', *overrides)
  for flag in overrides:
    key, value = flag.removeprefix('--config.').split('=')
    target = config
    for part in key.split('.'):
      target = target[part]
    if value == 'true':
      assert target is True
    else:
      assert str(target).replace(' ', '') == value.replace(' ', '') or target == float(value)


def launch(workdir, *extra, wait=True):
  cmd = [
    sys.executable,
    '-m',
    'launch.main',
    f'--config={ROOT}/configs/fedavg.py',
    f'--workdir={workdir}',
    '--config.model_name=mlp',
    '--config.model.hidden=(32,)',
    *extra,
  ]
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
  'flag,message',
  [
    ('--config.cohort_size=50', 'config.cohort_size=50 exceeds config.partition.num_clients=20'),
    ('--config.total_round=5', 'config.total_round is unknown; known: aggregator, aggregator_name'),
    ('--config.model.hiden=(8,)', "config.model.hiden is set but model 'mlp' does not take it"),
  ],
)
def test_bad_input_exits_with_one_line(flag, message, tmp_path):
  out = launch(tmp_path, flag)
  assert out.returncode == 2
  errors = [line for line in out.stderr.splitlines() if line.startswith('fedcomp: error:')]
  assert len(errors) == 1 and errors[0].startswith(f'fedcomp: error: {message}')
  assert not (tmp_path / 'config.json').exists()


def test_kill_9_then_resume_matches_uninterrupted(tmp_path):
  args = (
    '--config.total_rounds=40',
    '--config.ckpt_every_rounds=4',
    '--config.eval_every_rounds=5',
  )
  assert launch(tmp_path / 'whole', *args).returncode == 0
  proc = launch(tmp_path / 'killed', *args, wait=False)
  metrics = tmp_path / 'killed' / 'metrics.jsonl'
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 10:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (tmp_path / 'killed' / 'summary.json').exists(), 'killed too late to test resume'
  assert launch(tmp_path / 'killed', *args).returncode == 0

  def rows(d):
    lines = (tmp_path / d / 'metrics.jsonl').read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if not k.startswith('perf/')} for x in lines]

  assert rows('whole') == rows('killed')
  summary = [(tmp_path / d / 'summary.json').read_text() for d in ('whole', 'killed')]
  assert summary[0] == summary[1]
