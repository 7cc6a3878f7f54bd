"""The autocompress experiment: a search that resumes where it stopped, a saved policy
reused by another search, the best student saved and exportable, one-line errors."""

import csv
import os

import jax
import numpy as np
import pytest

from configs import autocompress as ac_config
from fedcomp.core.saved_model import load_model
from fedcomp.errors import ConfigError
from fedcomp.experiments import autocompress


def read_rows(workdir):
  with open(os.path.join(workdir, 'search.csv')) as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def searched(tmp_path_factory):
  """A 2-episode search, uninterrupted."""
  workdir = str(tmp_path_factory.mktemp('search'))
  config = ac_config.get_config('runlocal')
  summary = autocompress.run(config, workdir)
  return workdir, config, summary


def test_a_search_writes_its_rows_policy_and_an_exportable_student(searched):
  workdir, config, summary = searched
  rows = read_rows(workdir)
  assert len(rows) == config.search.episodes * config.search.candidates
  assert summary['candidates_evaluated'] == len(rows)
  for name in ('pareto.png', 'baselines.json', 'latency_table.json', 'summary.json'):
    assert os.path.exists(os.path.join(workdir, name)), name
  # Each uniform baseline has a magnitude-pruned teacher with as many non-zeros.
  uniform = [b for b in summary['baselines'] if b['kind'] == 'uniform']
  pruned = [b for b in summary['baselines'] if b['kind'] == 'magnitude']
  assert len(uniform) == len(pruned) == len(config.baselines)
  for u, p in zip(uniform, pruned):
    assert abs(p['params'] - u['params']) <= 0.02 * u['params']
  best = max(rows, key=lambda r: float(r['reward']))
  saved = load_model(workdir)
  assert saved.meta['model']['plan'] == [int(i) if i != 'M' else i for i in best['plan'].split()]
  n = sum(a.size for a in jax.tree.leaves(saved.params))
  assert n == int(best['params'])  # the row's parameter count is the real model's
  assert 0.0 <= summary['final']['test_accuracy'] <= 1.0
  # The latency table was calibrated, and checked on whole models it was not fitted on.
  check = summary['latency_check']
  assert check['calibration'] is not None
  assert len(check['models']) == len(config.baselines) + 1  # uniform baselines + final student
  for m in check['models']:
    assert m['relative_error'] == pytest.approx(m['predicted_ms'] / m['measured_ms'] - 1)


@pytest.mark.slow  # two more searches (about a minute)
def test_a_stopped_search_resumes_to_the_same_rows(searched, tmp_path):
  workdir, config, _ = searched
  w = str(tmp_path / 'resumed')
  first = ac_config.get_config('runlocal')
  first.search.episodes = 1
  first.teacher_workdir = os.path.join(workdir, 'teacher')
  # One latency table for the three runs: timings are measured once, then read.
  first.latency.table = os.path.join(workdir, 'latency_table.json')
  autocompress.run(first, w)
  assert len(read_rows(w)) == config.search.candidates
  second = ac_config.get_config('runlocal')
  second.teacher_workdir = first.teacher_workdir
  second.latency.table = first.latency.table
  autocompress.run(second, w)
  straight = str(tmp_path / 'straight')
  autocompress.run(second, straight)
  assert read_rows(w) == read_rows(straight)


def test_a_saved_policy_initialises_another_search_and_a_foreign_one_fails(searched, tmp_path):
  workdir, config, _ = searched
  from fedcomp.compression.autocompress.policy import TwoStagePolicy

  fresh = TwoStagePolicy(6, len(config.search.ratios), config.policy.hidden, seed=123)
  loaded = autocompress._load_policy(workdir, fresh.params)
  differs = [not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(loaded), jax.tree.leaves(fresh.params))]  # fmt: skip
  assert any(differs)  # the trained policy, not the fresh initialisation
  other = TwoStagePolicy(6, 7, config.policy.hidden, seed=0)  # another ratio set
  with pytest.raises(ConfigError, match='does not fit this search'):
    autocompress._load_policy(workdir, other.params)


def test_a_diverged_candidate_gets_the_invalid_reward_and_the_search_goes_on(searched, tmp_path):
  workdir, _, _ = searched
  config = ac_config.get_config('runlocal')
  config.teacher_workdir = os.path.join(workdir, 'teacher')
  config.latency.table = os.path.join(workdir, 'latency_table.json')
  config.search.episodes = 1
  config.distill.learning_rate = 1e30  # every candidate's KD diverges
  summary = autocompress.run(config, str(tmp_path))
  rows = read_rows(str(tmp_path))
  assert len(rows) == config.search.candidates
  assert all(r['accuracy'] == '' and float(r['reward']) == -1.0 for r in rows)
  assert summary['best'] is None and summary['final'] is None


@pytest.mark.parametrize(
  ('change', 'match'),
  [
    ({'teacher.model_name': 'resnet'}, "model_name='resnet': the search space is defined for vgg"),
    ({'search.ratios': (0.0, 1.0)}, r'search.ratios=\[0.0, 1.0\] must be in \(0, 1\]'),
    ({'reward.latency_weight': -1.0}, 'latency_weight=-1.0 must be >= 0'),
    ({'policy.init_from': '/nonexistent'}, 'holds no saved policy'),
    ({'deployment.classes': ()}, 'deployment.classes is empty'),
    ({'search.mode': 'greedy'}, 'masked, materialized'),
    ({'baselines': (0.3,)}, 'must be among config.search.ratios'),
  ],
)
def test_bad_config_fails_in_one_line(change, match, tmp_path):
  config = ac_config.get_config('runlocal')
  for key, value in change.items():
    *sections, field = key.split('.')
    target = config[sections[0]] if sections else config
    target[field] = value
  with pytest.raises(ConfigError, match=match) as e:
    autocompress.run(config, str(tmp_path))
  assert '\n' not in str(e.value)
  assert not os.listdir(tmp_path)  # nothing written
