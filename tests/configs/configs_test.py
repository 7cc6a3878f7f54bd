"""Every config runs end to end for two rounds under `runlocal`."""

import importlib
import os

import numpy as np
import pytest

from configs import common
from fedcomp.experiments import get_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_ARGS = {
  'fedavg': ['runlocal'],
  'fmnist_cnn': ['partition=iid,runlocal', 'partition=shards,runlocal'],
  'fedprox_synthetic': ['runlocal'],
  'noniid': ['partition=1class,beta=0.1,alpha=0.5,runlocal', 'partition=2class,runlocal'],
  'fedper': ['classes_per_client=2,runlocal', 'algorithm=scaffold,runlocal'],
  'divergence': ['runlocal'],
  'fishleg_autoencoder': ['runlocal', 'model=cnn,runlocal'],
  'fishleg_fl': ['client=fishleg,runlocal', 'client=fishleg,keep_state=true,runlocal'],
}
FMNIST = '/usr/share/datasets/fashion-mnist'


def test_every_config_file_is_covered():
  names = {f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs')) if f.endswith('.py')}
  assert names - {'__init__', 'common'} == set(CONFIG_ARGS)


@pytest.mark.parametrize(('name', 'arg'), [(n, a) for n, args in CONFIG_ARGS.items() for a in args])
def test_runlocal_runs_two_rounds(name, arg, tmp_path):
  config = importlib.import_module(f'configs.{name}').get_config(arg)
  if config.data_name == 'idx' and not os.path.exists(config.data.path):
    pytest.skip(f'{config.data.path} missing (apt-get install dataset-fashion-mnist)')
  summary = get_run(config.experiment)(config, str(tmp_path))
  if config.experiment == 'optimizers':
    assert set(summary['best']) == {'fishleg', 'adam', 'momentum'}
    assert all(np.isfinite(b['final_loss']) for b in summary['best'].values())
    return
  if config.experiment == 'divergence':
    assert set(summary['partitions']) == {'iid', '1class'}
    assert -1.0 <= summary['spearman_emd_divergence'] <= 1.0
    return
  assert summary['round'] == config.total_rounds == 2
  assert 0.0 <= summary['eval/accuracy'] <= 1.0
  if config.algorithm_name == 'fed_per':
    assert 0.0 <= summary['eval/personal_accuracy'] <= 1.0
  if config.shared_data.beta:
    assert (tmp_path / 'warmup.json').exists()


def test_tfds_source_runs_end_to_end(mock_tfds, tmp_path):
  c = common.runlocal(common.federated_config())
  c.data_name = 'tfds'
  c.data.name = 'mnist'
  c.partition.num_clients = 4
  c.cohort_size = 2
  with mock_tfds.testing.mock_data(num_examples=64):
    summary = get_run('federated')(c, str(tmp_path))
  assert summary['round'] == 2
