"""Runs in one program: every run's outputs equal running it alone, bit for bit."""

import os

import pytest
from experiments.federated_test import read_metrics, read_summary, small_config

from fedcomp.errors import ConfigError, TrainingDivergedError
from fedcomp.experiments import federated
from fedcomp.sweep import group


def _alone(tmp_path, config, name):
  workdir = str(tmp_path / 'alone' / name)
  federated.run(config, workdir)
  return workdir


@pytest.mark.parametrize(('strategy', 'lrs'), [('vmap', 3), ('map', 2)])
def test_group_of_learning_rates_and_seeds_equals_runs_alone(tmp_path, strategy, lrs):
  # 3 learning rates x 2 seeds; the seeds give different Dirichlet partitions (clients
  # padded to different lengths) and initial models; FedProx's μ varies with the learning
  # rate so that an algorithm option is traced too.
  configs, names = [], []
  for lr, mu in ((0.05, 0.0), (0.1, 0.01), (0.2, 0.1))[:lrs]:
    for seed in (0, 1):
      configs.append(small_config(**{
        'seed': seed, 'client_tx.learning_rate': lr, 'algorithm_name': 'fed_prox',
        'algorithm.mu': mu, 'total_rounds': 3, 'ckpt_every_rounds': 3,
        'partition_name': 'dirichlet', 'partition.alpha': 0.5}))  # fmt: skip
      names.append(f'lr={lr},seed={seed}')
  setups = [federated.build(c) for c in configs]
  assert len({s.round.pad_to for s in setups}) > 1  # the group pads to the longest
  workdirs = [str(tmp_path / 'group' / n) for n in names]
  results = group.run_group(configs, workdirs, strategy=strategy, setups=setups)
  for config, name, workdir, final in zip(configs, names, workdirs, results, strict=True):
    alone = _alone(tmp_path, config, name)
    assert read_metrics(workdir) == read_metrics(alone), name
    assert read_summary(workdir) == read_summary(alone) == final
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3']
  # The runs really differ: one program did not run one setting six times.
  assert len({read_summary(w)['train/loss'] for w in workdirs}) == 2 * lrs


def test_group_resumes_each_run_from_its_checkpoint(tmp_path):
  configs = [small_config(seed=s, total_rounds=2, ckpt_every_rounds=1) for s in (0, 1)]
  workdirs = [str(tmp_path / f's{s}') for s in (0, 1)]
  group.run_group(configs, workdirs)
  longer = [small_config(seed=s, total_rounds=4, ckpt_every_rounds=1) for s in (0, 1)]
  group.run_group(longer, workdirs)  # resumes both from round 2
  for config, workdir in zip(longer, workdirs, strict=True):
    alone = _alone(tmp_path, config, os.path.basename(workdir))
    assert read_metrics(workdir) == read_metrics(alone)


def test_group_refuses_runs_that_differ_in_structure():
  configs = [small_config(batch_size=16), small_config(batch_size=32)]
  with pytest.raises(ConfigError, match='batch_size'):
    group.check_group(configs)
  with pytest.raises(ConfigError, match='only float options'):
    group.check_group([small_config(**{'client_tx.nesterov': v}) for v in (True, False)])


def test_a_diverged_run_stops_alone_and_keeps_only_good_checkpoints(tmp_path):
  # server lr 1e38: round 1's update is finite, round 2's loss is not (as a single run).
  configs = [
    small_config(**{'total_rounds': 4, 'ckpt_every_rounds': 1, 'server_tx.learning_rate': lr})
    for lr in (1.0, 1e38)
  ]
  workdirs = [str(tmp_path / 'ok'), str(tmp_path / 'bad')]
  ok, bad = group.run_group(configs, workdirs)
  assert isinstance(bad, TrainingDivergedError)
  assert 'at round 2; stopped, the last good checkpoint (round 1)' in str(bad)
  assert sorted(os.listdir(tmp_path / 'bad' / 'checkpoints')) == ['1']
  assert not (tmp_path / 'bad' / 'summary.json').exists()
  assert ok == read_summary(_alone(tmp_path, configs[0], 'ok'))
