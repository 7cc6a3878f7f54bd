"""The optimizer-comparison experiment: curves, best rates, reuse of finished runs."""

import json
import os

import ml_collections
import numpy as np
import pytest

from fedcomp.errors import ConfigError
from fedcomp.experiments import optimizers


def tiny_config(**grid):
  c = ml_collections.ConfigDict()
  c.experiment = 'optimizers'
  c.seed = 0
  c.data_name = 'digits'
  c.data = {}
  c.train_examples = 0
  c.task_name = 'classification'
  c.model_name = 'mlp'
  c.model = {'hidden': (16,)}
  c.batch_size = 32
  c.total_steps = 40
  c.log_every_steps = 10
  c.final_window = 2
  c.optimizers = {
    'grid': grid or {'adam': [1e-3, 1e-2], 'fishleg': [0.05]},
    'kwargs': {'fishleg': {'damping': 0.5, 'aux_every': 2}},
  }
  return c


def test_runs_picks_best_and_reuses_finished_runs(tmp_path):
  summary = optimizers.run(tiny_config(), str(tmp_path))
  runs = {f: json.loads((tmp_path / 'runs' / f).read_text()) for f in os.listdir(tmp_path / 'runs')}
  assert set(runs) == {'adam_0.001.json', 'adam_0.01.json', 'fishleg_0.05.json'}
  adam = [r for r in runs.values() if r['optimizer'] == 'adam']
  best = min(adam, key=lambda r: r['final_loss'])
  assert summary['best']['adam']['learning_rate'] == best['learning_rate']
  assert best['final_loss'] == pytest.approx(np.mean(best['loss'][-2:]))
  assert runs['fishleg_0.05.json']['steps'] == [10, 20, 30, 40]
  # FishLeg's aux loss A(λ; u) is logged at every log step; Adam has none.
  assert all(np.isfinite(a) for a in runs['fishleg_0.05.json']['aux_loss'])
  assert runs['adam_0.01.json']['aux_loss'] == [None] * 4
  assert np.isfinite(summary['best']['fishleg']['final_loss'])
  assert summary['fishleg_time_per_step_over_adam'] > 0
  for name in ('optimizers.csv', 'loss_vs_steps.png', 'loss_vs_time.png', 'config.json'):
    assert (tmp_path / name).exists()
  # A grown grid runs only the new rate; the finished runs are reused as they are.
  before = os.path.getmtime(tmp_path / 'runs' / 'adam_0.001.json')
  optimizers.run(tiny_config(adam=[1e-3, 1e-2, 3e-2], fishleg=[0.05]), str(tmp_path))
  assert os.path.getmtime(tmp_path / 'runs' / 'adam_0.001.json') == before
  assert (tmp_path / 'runs' / 'adam_0.03.json').exists()
  # A different config refuses the workdir.
  changed = tiny_config()
  changed.batch_size = 16
  with pytest.raises(ConfigError, match='use a new --workdir'):
    optimizers.run(changed, str(tmp_path))


@pytest.mark.parametrize(
  'key,value,match',
  [
    ('total_steps', 45, 'must be a multiple of config.log_every_steps=10'),
    ('task_name', 'regression', "config.task_name='regression' is unknown"),
  ],
)
def test_bad_config(tmp_path, key, value, match):
  c = tiny_config()
  c[key] = value
  with pytest.raises(ConfigError, match=match):
    optimizers.run(c, str(tmp_path))
