"""The federated experiment end to end: outputs, determinism, resume, errors."""

import json
import os

import jax
import numpy as np
import pytest
from fl_testing import tree_equal

from configs import common
from fedcomp.core import RunDir, trainer
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
  if overrides.get('model_name') == 'cnn':
    c.model = {'features': (4,), 'dense': 16}
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
  whole, parts = read_metrics(str(tmp_path / 'whole')), read_metrics(str(tmp_path / 'parts'))
  # Every row, also its evaluation; the first part's last round (3) was also evaluated, as
  # the final round of that command, which the uninterrupted run did not do.
  assert [r['round'] for r in whole] == [r['round'] for r in parts] == [1, 2, 3, 4, 5, 6]
  for a, b in zip(whole, parts):
    assert a == {k: v for k, v in b.items() if k in a}
  assert set(parts[2]) - set(whole[2]) == {k for k in parts[1] if k.startswith('eval/')}
  # The final states are the same, bit for bit.
  setup = federated.build(small_config())
  like = tuple(trainer.initial_state(setup))
  states = [RunDir.existing(str(tmp_path / d)).restore(6, like) for d in ('whole', 'parts')]
  assert tree_equal(*states)


def test_workdir_refuses_a_different_config(tmp_path):
  federated.run(small_config(total_rounds=2), str(tmp_path))
  with pytest.raises(ConfigError, match=r'config.seed=5 differs from 0 .* use a new --workdir'):
    federated.run(small_config(total_rounds=2, seed=5), str(tmp_path))


def test_config_is_recorded_only_after_the_data_dependent_checks(tmp_path):
  bad = small_config(**{'partition.num_clients': 5000, 'cohort_size': 4})
  with pytest.raises(ConfigError, match='no examples'):
    federated.run(bad, str(tmp_path))
  assert not (tmp_path / 'config.json').exists()
  federated.run(small_config(total_rounds=2), str(tmp_path))  # the corrected command runs
  assert json.loads((tmp_path / 'config.json').read_text())['partition']['num_clients'] == 8


def test_a_diverged_run_keeps_only_finite_checkpoints(tmp_path):
  config = small_config(total_rounds=8, ckpt_every_rounds=1)
  config.server_tx.learning_rate = 1e38  # round 1's update is finite, round 2's loss is not
  with pytest.raises(TrainingDivergedError, match=r'at round 2; stopped, the last good .*round 1'):
    federated.run(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1']
  assert not (tmp_path / 'summary.json').exists()
  setup = federated.build(config)
  state = RunDir.existing(str(tmp_path)).restore(1, tuple(trainer.initial_state(setup)))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))
  # A round whose loss was finite but whose update is not: nothing of it is kept.
  config.server_tx.learning_rate = 1e39  # inf in float32
  with pytest.raises(TrainingDivergedError, match=r'non-finite values at round 1; .*round none'):
    federated.run(config, str(tmp_path / 'b'))
  assert not os.listdir(tmp_path / 'b' / 'checkpoints')


BAD_INPUTS = [
  (
    {'data_name': 'cifar'},
    r"config.data_name='cifar' is unknown; known: digits, idx, random, synthetic, tfds",
  ),
  ({'partition_name': 'x'}, r"config.partition_name='x' is unknown; known: dirichlet, "),
  (
    {'model_name': 'vit'},
    r"config.model_name='vit' is unknown; known: autoencoder, cnn, mlp, resnet, simple_cnn, "
    r'split_cnn, split_mlp, vgg',
  ),
  (
    {'algorithm_name': 'fedx'},
    r"config.algorithm_name='fedx' is unknown; known: fed_avg, fed_per, fed_prox, hovefl, scaffold",
  ),
  ({'task_name': 'gan'}, r"config.task_name='gan' is unknown; known: classification, "),
  ({'aggregator_name': 'krum'}, r"config.aggregator_name='krum' is unknown; known: mean, median"),
  ({'client_tx_name': 'sgdd'}, r"config.client_tx_name='sgdd' is unknown; known: "),
  ({'server_tx_name': 'adamm'}, r"config.server_tx_name='adamm' is unknown; known: "),
  ({'total_round': 5}, r'config.total_round is unknown; known: aggregator, aggregator_name, '),
  ({'cohort_size': 9}, r'config.cohort_size=9 exceeds config.partition.num_clients=8'),
  ({'total_rounds': 0}, r'config.total_rounds=0 must be a positive integer'),
  ({'batch_size': -1}, r'config.batch_size=-1 must be a positive integer'),
  ({'eval_batch_size': 0}, r'config.eval_batch_size=0 must be a positive integer'),
  ({'seed': -1}, r'config.seed=-1 must be an integer >= 0'),
  (
    {'client_tx.learning_rate': -0.1},
    r'config.client_tx.learning_rate=-0.1 must be a finite number in \[0, inf\)',
  ),
  (
    {'client_tx.learning_rate': float('inf')},
    r'config.client_tx.learning_rate=inf must be a finite',
  ),
  (
    {'server_tx.learning_rate': float('nan')},
    r'config.server_tx.learning_rate=nan must be a finite',
  ),
  (
    {'client_tx_name': 'momentum', 'client_tx.momentum': 1.5},
    r'config.client_tx.momentum=1.5 must be a finite number in \[0, 1\)',
  ),
  ({'server_tx_name': 'adam', 'server_tx.b1': 1.0}, r'config.server_tx.b1=1.0 must be .* \[0, 1\)'),
  (
    {'server_tx_name': 'adam', 'server_tx.eps': -1e-8},
    r'config.server_tx.eps=-1e-08 must be .*\(0',
  ),
  (
    {'client_tx_name': 'fishleg', 'client_tx.damping': 0.0},
    r'config.client_tx.damping=0.0 must be',
  ),
  (
    {'client_tx_name': 'fishleg', 'client_tx.aux_every': 0},
    r'config.client_tx.aux_every=0 must be an',
  ),
  (
    {'client_tx_name': 'fishleg', 'client_tx.initial_scale': -1.0},
    r'config.client_tx.initial_scale=-1.0 must be',
  ),
  ({'data_name': 'idx', 'data.path': '/no/such/dir'}, r"config.data.path='/no/such/dir' does not"),
  ({'partition.num_clients': 5000, 'cohort_size': 4}, r'config.partition.* no examples'),
  ({'data.path': '/tmp'}, r"config.data.path is set but data source 'digits' does not take it"),
  (
    {'algorithm.keep_client_opt_stat': True},
    r'config.algorithm.keep_client_opt_stat is set but .*'
    r'\(it takes: weighting, keep_client_opt_state, local_batch_norm\)',
  ),  # fmt: skip
  ({'client_map.strategy': 'pmap'}, r"config.client_map.strategy='pmap' is unknown"),
  (
    {'client_map.reduction_width': 6},
    r'config.client_map.reduction_width=6 must be a power of two',
  ),
  ({'shared_data.alpha': 0.5}, r'config.shared_data.alpha=0.5 needs a shared set'),
  ({'shared_data.beta': 1.5}, r'config.shared_data.beta=1.5 must be in \[0, 1\)'),
  ({'train_examples': -3}, r'config.train_examples=-3 must be None \(all\) or a positive'),
  (
    {'algorithm_name': 'fed_per', 'algorithm.personal_layers': ('head/.*',)},
    r"config.algorithm.personal_layers: 'head/\.\*' matches no parameter",
  ),
  (
    {'task_name': 'reconstruction'},
    r"config.task_name='reconstruction' needs one output per input value \(64\)",
  ),
]


@pytest.mark.parametrize(('overrides', 'message'), BAD_INPUTS)
def test_bad_input_fails_before_compiling(overrides, message, tmp_path, monkeypatch):
  def no_round(*args, **kwargs):
    raise AssertionError('reached the federated round')

  monkeypatch.setattr(federated, 'FederatedRound', no_round)
  with pytest.raises(ConfigError, match=message) as e:
    federated.run(small_config(**overrides), str(tmp_path))
  assert '\n' not in str(e.value)
  assert not (tmp_path / 'config.json').exists()


def test_sample_cohort_depends_only_on_seed_and_round():
  a = trainer.sample_cohort(0, 3, 100, 10)
  np.testing.assert_array_equal(a, trainer.sample_cohort(0, 3, 100, 10))
  assert len(set(a)) == 10 and list(a) == sorted(a)
  assert not np.array_equal(a, trainer.sample_cohort(0, 4, 100, 10))


@pytest.mark.parametrize('overrides', [{}, {'model_name': 'cnn', 'client_map.strategy': 'map'}])
def test_one_two_four_eight_devices_give_identical_metrics(overrides, tmp_path):
  import jax

  assert jax.device_count() == 8  # tests/conftest.py
  rows = []
  for devices in (1, 2, 4, 8):
    federated.run(small_config(num_devices=devices, **overrides), str(tmp_path / str(devices)))
    rows.append(read_metrics(str(tmp_path / str(devices))))
  assert all(r == rows[0] for r in rows[1:])


def test_fishleg_clients_with_a_shared_data_warm_up(tmp_path):
  """The warm-up trains centrally with the clients' optimizer step, FishLeg's extra
  arguments included (it raised an error after the data had loaded before)."""
  config = small_config(total_rounds=2, client_tx_name='fishleg')
  config.client_tx = {'learning_rate': 0.2, 'damping': 0.5, 'aux_every': 2}
  config.shared_data.beta = 0.1
  config.shared_data.warmup_epochs = 2
  summary = federated.run(config, str(tmp_path))
  warm = json.loads((tmp_path / 'warmup.json').read_text())
  assert warm['warmup/epochs'] == 2 and warm['warmup/accuracy'] > 0.3  # 10 classes: chance 0.1
  assert np.isfinite(summary['eval/loss'])
