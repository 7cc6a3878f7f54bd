"""Every config runs end to end for two rounds under `runlocal`."""

import importlib
import os

import jax
import numpy as np
import pytest

from configs import common
from fedcomp.core import RunDir, trainer
from fedcomp.experiments import federated, get_run

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
    assert all(np.isfinite(p['divergence_all']) for p in summary['partitions'].values())
    return
  assert summary['round'] == config.total_rounds == 2
  # The reported accuracy is the checkpointed model's, recomputed here with a plain
  # forward pass over the test set.
  setup = federated.build(config)
  state = RunDir.existing(str(tmp_path)).restore(2, tuple(trainer.initial_state(setup)))
  params, model_state = trainer.global_model(setup, trainer.TrainState(*state))
  test = setup.data.global_test
  forward = jax.jit(lambda x: setup.model.apply(params, model_state, x)[0])
  logits = np.concatenate([forward(test['x'][i : i + 500]) for i in range(0, len(test['x']), 500)])
  assert summary['eval/accuracy'] == np.mean(logits.argmax(1) == test['y'])
  if config.algorithm_name == 'fed_per':
    assert 'eval/personal_accuracy' in summary
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
