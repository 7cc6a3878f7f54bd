"""The federated experiment end to end: outputs, determinism, resume, errors."""

import json
import os

import numpy as np
import pytest

from configs import common
from fedcomp.errors import ConfigError, TrainingDivergedError
from fedcomp.experiments import federated
from fedcomp.utils.config_overrides import with_overrides


def small_config(**overrides):
  """FedAvg on digits with a small MLP: a few seconds per run."""
  c = common.federated_config()
  c.total_rounds = 4
  c.cohort_size = 4
  c.batch_size = 16
  c.eval_every_rounds = 2
  c.ckpt_every_rounds = 2
  c.partition.num_clients = 8
  c.model_name = 'mlp'
  c.model.hidden = (32,)
  return with_overrides(c, overrides)


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if not k.startswith('perf/')} for r in rows]


def read_summary(workdir):
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)


def test_run_writes_everything_and_learns(tmp_path):
  summary = federated.run(small_config(total_rounds=6), str(tmp_path))
  for name in ('config.json', 'metrics.jsonl', 'summary.json', 'data_stats.json', 'perf.json'):
    assert (tmp_path / name).exists(), name
  assert os.listdir(tmp_path / 'tb')
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['4', '6']
  rows = read_metrics(str(tmp_path))
  assert [r['round'] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert 'eval/accuracy' in rows[1] and 'eval/accuracy' not in rows[0]
  assert summary == read_summary(str(tmp_path))
  assert summary['round'] == 6 and summary['eval/accuracy'] > 0.5
  assert rows[-1]['train/loss'] < rows[0]['train/loss']
  stats = json.loads((tmp_path / 'data_stats.json').read_text())
  assert len(stats['emd']) == 8


def test_same_seed_gives_identical_metrics(tmp_path):
  federated.run(small_config(), str(tmp_path / 'a'))
  federated.run(small_config(), str(tmp_path / 'b'))
  assert read_metrics(str(tmp_path / 'a')) == read_metrics(str(tmp_path / 'b'))
  federated.run(small_config(seed=1), str(tmp_path / 'c'))
  assert read_metrics(str(tmp_path / 'a')) != read_metrics(str(tmp_path / 'c'))


def test_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
  federated.run(small_config(total_rounds=6), str(tmp_path / 'whole'))
  # Stops after round 3 (checkpointed, as the last round), then resumes to 6.
  federated.run(small_config(total_rounds=3, ckpt_every_rounds=1), str(tmp_path / 'parts'))
  federated.run(small_config(total_rounds=6, ckpt_every_rounds=1), str(tmp_path / 'parts'))
  assert read_summary(str(tmp_path / 'whole')) == read_summary(str(tmp_path / 'parts'))
  whole = read_metrics(str(tmp_path / 'whole'))
  parts = read_metrics(str(tmp_path / 'parts'))
  for a, b in zip(whole, parts, strict=True):
    assert a['round'] == b['round']
    assert a['train/loss'] == b['train/loss']


def test_workdir_refuses_a_different_config(tmp_path):
  federated.run(small_config(total_rounds=2), str(tmp_path))
  with pytest.raises(ConfigError, match=r'config.seed=5 differs from 0 .* use a new --workdir'):
    federated.run(small_config(total_rounds=2, seed=5), str(tmp_path))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = small_config(total_rounds=8, ckpt_every_rounds=1)
  config.server_tx.learning_rate = float('inf')  # round 1 trains, then params blow up
  with pytest.raises(TrainingDivergedError, match=r'at round (\d+); stopped') as e:
    federated.run(config, str(tmp_path))
  bad_round = int(e.value.args[0].split('at round ')[1].split(';')[0])
  assert bad_round == 2
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1']
  assert not (tmp_path / 'summary.json').exists()


BAD_INPUTS = [
  (
    {'data_name': 'cifar'},
    r"config.data_name='cifar' is unknown; known: digits, idx, random, synthetic, tfds",
  ),
  ({'partition_name': 'x'}, r"config.partition_name='x' is unknown; known: dirichlet, "),
  (
    {'model_name': 'vit'},
    r"config.model_name='vit' is unknown; known: autoencoder, cnn, mlp, simple_cnn",
  ),
  (
    {'algorithm_name': 'fedx'},
    r"config.algorithm_name='fedx' is unknown; known: fed_avg, fed_per, fed_prox, scaffold",
  ),
  ({'client_tx_name': 'sgdd'}, r"config.client_tx_name='sgdd' is unknown; known: "),
  ({'server_tx_name': 'adamm'}, r"config.server_tx_name='adamm' is unknown; known: "),
  ({'cohort_size': 9}, r'config.cohort_size=9 exceeds config.partition.num_clients=8'),
  ({'total_rounds': 0}, r'config.total_rounds=0 must be a positive integer'),
  ({'batch_size': -1}, r'config.batch_size=-1 must be a positive integer'),
  (
    {'client_tx.learning_rate': -0.1},
    r'config.client_tx.learning_rate=-0.1 must be a non-negative number',
  ),
  ({'data_name': 'idx', 'data.path': '/no/such/dir'}, r"config.data.path='/no/such/dir' does not"),
  ({'partition.num_clients': 5000, 'cohort_size': 4}, r'config.partition.* no examples'),
  ({'data.path': '/tmp'}, r"config.data.path is set but data source 'digits' does not take it"),
  ({'client_parallelism': 'pmap'}, r"config.client_parallelism='pmap' is unknown"),
  ({'shared_data.alpha': 0.5}, r'config.shared_data.alpha=0.5 needs a shared set'),
  ({'shared_data.beta': 1.5}, r'config.shared_data.beta=1.5 must be in \[0, 1\)'),
  ({'train_examples': -3}, r'config.train_examples=-3 must be None \(all\) or a positive'),
  (
    {'algorithm_name': 'fed_per', 'algorithm.personal_layers': ('head/.*',)},
    r"config.algorithm.personal_layers: 'head/\.\*' matches no parameter",
  ),
]


@pytest.mark.parametrize(('overrides', 'message'), BAD_INPUTS)
def test_bad_input_fails_before_compiling(overrides, message, tmp_path, monkeypatch):
  def no_engine(*args, **kwargs):
    raise AssertionError('reached the round engine')

  monkeypatch.setattr(federated, 'RoundEngine', no_engine)
  with pytest.raises(ConfigError, match=message) as e:
    federated.run(small_config(**overrides), str(tmp_path))
  assert '\n' not in str(e.value)


def test_sample_cohort_depends_only_on_seed_and_round():
  a = federated.sample_cohort(0, 3, 100, 10)
  np.testing.assert_array_equal(a, federated.sample_cohort(0, 3, 100, 10))
  assert len(set(a)) == 10 and list(a) == sorted(a)
  assert not np.array_equal(a, federated.sample_cohort(0, 4, 100, 10))


def test_eight_devices_match_one(tmp_path):
  import jax

  assert jax.device_count() == 8  # tests/conftest.py
  federated.run(small_config(num_devices=1), str(tmp_path / 'one'))
  federated.run(small_config(num_devices=8), str(tmp_path / 'eight'))
  for a, b in zip(
    read_metrics(str(tmp_path / 'one')), read_metrics(str(tmp_path / 'eight')), strict=True
  ):
    assert a.keys() == b.keys()
    for key in a:
      assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
