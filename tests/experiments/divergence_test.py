"""The divergence experiment: formulas on exact examples and a short end-to-end run."""

import csv
import json

import numpy as np
import pytest

from configs import common
from fedcomp.errors import ConfigError
from fedcomp.experiments import divergence


def test_layer_divergence_by_hand():
  ref = {'a': {'w': np.array([3.0, 4.0])}, 'b': {'w': np.array([1.0]), 'v': np.array([0.0])}}
  params = {'a': {'w': np.array([3.0, 5.0])}, 'b': {'w': np.array([2.0]), 'v': np.array([1.0])}}
  out = divergence.layer_divergence(params, ref)
  assert out['divergence/a'] == pytest.approx(1 / 5)  # ‖(0, 1)‖ / ‖(3, 4)‖
  assert out['divergence/b'] == pytest.approx(np.sqrt(2))  # ‖(1, 1)‖ / ‖(1, 0)‖
  assert out['divergence/all'] == pytest.approx(np.sqrt(3 / 26))


def test_spearman_by_hand():
  assert divergence.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
  assert divergence.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
  # ranks (1, 2, 3, 4) vs (1, 3, 2, 4): 1 - 6 * 2 / (4 * 15) = 0.8
  assert divergence.spearman([1, 2, 3, 4], [1, 5, 2, 9]) == pytest.approx(0.8)
  # ties share the mean rank: ranks (1.5, 1.5, 3) vs (1, 2, 3)
  assert divergence.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(np.sqrt(3) / 2)


def small_config(**kw):
  c = common.federated_config()
  c.experiment = 'divergence'
  c.total_rounds = 2
  c.eval_every_rounds = 1
  c.ckpt_every_rounds = 1
  c.partition.num_clients = 5
  c.partition.local_test_fraction = 0.0
  c.cohort_size = 5
  c.model.hidden = (16,)
  c.divergence = {
    'partitions': [
      {'label': 'iid', 'partition_name': 'iid'},
      {'label': '1class', 'partition_name': 'shards', 'partition.classes_per_client': 1},
    ]
  }
  for k, v in kw.items():
    c[k] = v
  return c


def test_runs_writes_and_resumes(tmp_path):
  summary = divergence.run(small_config(), str(tmp_path))
  for name in ('divergence.csv', 'summary.json', 'accuracy_vs_emd.png', 'divergence_vs_emd.png'):
    assert (tmp_path / name).exists(), name
  with open(tmp_path / 'divergence.csv') as f:
    rows = list(csv.DictReader(f))
  assert [(r['partition'], r['round']) for r in rows] == [
    ('iid', '1'),
    ('iid', '2'),
    ('1class', '1'),
    ('1class', '2'),
  ]
  assert {'divergence/dense0', 'divergence/dense1', 'divergence/all'} <= set(rows[0])
  parts = summary['partitions']
  assert parts['1class']['emd_mean'] > parts['iid']['emd_mean']
  assert all(p['divergence_all'] > 0 for p in parts.values())
  # Rerunning the finished experiment trains nothing and reports the same summary.
  again = divergence.run(small_config(), str(tmp_path))
  assert again == json.loads((tmp_path / 'summary.json').read_text()) == summary


@pytest.mark.parametrize(
  'kw,match',
  [
    ({'cohort_size': 2}, 'config.cohort_size=2 must equal config.partition.num_clients=5'),
    ({'divergence': {'partitions': [{'label': 'iid'}]}}, 'needs at least two partitions'),
    (
      {'divergence': {'partitions': [{'label': 'a'}, {'label': 'a'}]}},
      "each needs a unique label, got 'a'",
    ),
    (
      {'divergence': {'partitions': [{'label': 'a'}, {'label': 'b', 'partition.x': 1}]}},
      "config.partition.x is set but partition 'iid' does not take it",
    ),
  ],
)
def test_bad_config_fails_before_training(kw, match, tmp_path):
  with pytest.raises(ConfigError, match=match):
    divergence.run(small_config(**kw), str(tmp_path))
