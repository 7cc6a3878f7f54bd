"""The prune experiment's input checks: one line, before anything is read or compiled."""

import os
import subprocess
import sys

import pytest

from configs import prune as prune_config
from fedcomp.errors import ConfigError
from fedcomp.experiments import prune

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(
  'change, match',
  [
    ({'prune.sparsities': (0.5, 1.0)}, r'must be a sparsity in \[0, 1\)'),
    ({'prune.scorers': ('magnitude', 'taylor')}, "pruning.scorer='taylor' is unknown"),
    ({'prune.distribution': 'random'}, "pruning.distribution='random' is unknown"),
    ({'prune.save': 'obd'}, "config.prune.save='obd' is not among"),
    ({'init_from': '/nonexistent'}, 'holds no run or saved model'),
    ({'prune.gradual_end_fraction': 0.0}, 'gradual_end_fraction'),
  ],
)
def test_bad_config_fails_in_one_line(change, match):
  config = prune_config.get_config('runlocal')
  for key, value in change.items():
    target = config
    *path, last = key.split('.')
    for part in path:
      target = target[part]
    target[last] = value
  with pytest.raises(ConfigError, match=match):
    prune.validate(config)


def test_the_cifar10_resnet18_setting_validates():
  prune.validate(prune_config.get_config('data=cifar10,model=resnet18'))


def test_launcher_exits_with_one_line_and_writes_nothing(tmp_path):
  out = subprocess.run(
    [sys.executable, '-m', 'launch.main', f'--config={ROOT}/configs/prune.py:runlocal',
     f'--workdir={tmp_path}', '--config.prune.sparsities=(0.5,1.5)'],
    cwd=ROOT, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert out.returncode == 2
  errors = [line for line in out.stderr.splitlines() if line.startswith('fedcomp: error:')]
  assert len(errors) == 1 and 'must be a sparsity in [0, 1)' in errors[0]
  assert not os.listdir(tmp_path)
