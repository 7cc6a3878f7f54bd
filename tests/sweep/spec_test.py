"""Sweep expansion, run names and job planning, by hand."""

import pytest

from fedcomp.errors import ConfigError
from fedcomp.sweep import plan
from fedcomp.sweep import spec as sw


def test_product_zip_and_seeds_expand_as_written():
  lrs = sw.axis('client_tx.learning_rate', [0.1, 0.3])
  algs = sw.axis('algorithm_name', ['fed_avg', 'fed_prox'])
  assert sw.product(algs, lrs) == [
    {'algorithm_name': 'fed_avg', 'client_tx.learning_rate': 0.1},
    {'algorithm_name': 'fed_avg', 'client_tx.learning_rate': 0.3},
    {'algorithm_name': 'fed_prox', 'client_tx.learning_rate': 0.1},
    {'algorithm_name': 'fed_prox', 'client_tx.learning_rate': 0.3},
  ]
  assert sw.zipped(algs, lrs) == [
    {'algorithm_name': 'fed_avg', 'client_tx.learning_rate': 0.1},
    {'algorithm_name': 'fed_prox', 'client_tx.learning_rate': 0.3},
  ]
  assert sw.seeds(2, start=5) == [{'seed': 5}, {'seed': 6}]
  runs = sw.expand(lrs, num_seeds=2)
  assert [r.name for r in runs] == [
    'learning_rate=0.1,seed=0',
    'learning_rate=0.1,seed=1',
    'learning_rate=0.3,seed=0',
    'learning_rate=0.3,seed=1',
  ]
  assert runs[3].overrides == {'client_tx.learning_rate': 0.3, 'seed': 1}
  assert [r.name for r in sw.expand(None)] == ['run']
  assert [r.name for r in sw.expand(None, 3)] == ['seed=0', 'seed=1', 'seed=2']


def test_names_keep_the_full_key_where_the_last_part_is_ambiguous():
  runs = sw.expand(
    sw.zipped(
      sw.axis('client_tx.learning_rate', [0.1]),
      sw.axis('server_tx.learning_rate', [1.0]),
      sw.axis('model.hidden', [(32, 16)]),
    )
  )
  assert runs[0].name == 'client_tx.learning_rate=0.1,server_tx.learning_rate=1.0,hidden=32-16'


@pytest.mark.parametrize(
  ('make', 'match'),
  [
    (lambda: sw.axis('seed', []), 'has no values'),
    (lambda: sw.expand([]), 'empty'),
    (lambda: sw.seeds(0), 'positive integer'),
    (lambda: sw.zipped(sw.seeds(2), sw.axis('x', [1])), 'different lengths'),
    (lambda: sw.product(sw.seeds(2), sw.seeds(3)), "key 'seed' is set by two"),
    (lambda: sw.expand(sw.seeds(2), num_seeds=3), 'sets seed'),
    (lambda: sw.expand([{'seed': 1}, {'seed': 1}]), 'same run twice'),
    (lambda: sw.expand(['seed=1']), 'dict of dotted config keys'),
  ],
)
def test_bad_sweeps_fail_in_one_line(make, match):
  with pytest.raises(ConfigError, match=match):
    make()


def test_runs_differing_in_numbers_share_a_job_and_structure_splits_them():
  runs = sw.expand(
    sw.product(
      sw.axis('algorithm_name', ['fed_avg', 'scaffold']),
      sw.axis('client_tx.learning_rate', [0.1, 0.3]),
      sw.seeds(2),
    )
  )
  jobs = plan.plan_jobs(runs, 'federated')
  assert [len(j.runs) for j in jobs] == [4, 4]
  assert {r.overrides['algorithm_name'] for r in jobs[1].runs} == {'scaffold'}
  # Integer options change what is compiled: separate jobs.
  ints = sw.expand(sw.axis('local_epochs', [1, 2]))
  assert [len(j.runs) for j in plan.plan_jobs(ints, 'federated')] == [1, 1]
  # Only federated runs are grouped; --vmap=false runs each alone.
  assert len(plan.plan_jobs(runs, 'prune')) == 8
  assert len(plan.plan_jobs(runs, 'federated', vmap=False)) == 8
  # --vmap_keys=seed: learning rates become structural.
  assert len(plan.plan_jobs(runs, 'federated', vmap_keys=['seed'])) == 4


def test_a_structural_key_in_a_vmapped_group_fails_in_one_line():
  runs = sw.expand(sw.axis('batch_size', [16, 32]))
  with pytest.raises(ConfigError, match="'batch_size' changes what is compiled"):
    plan.plan_jobs(runs, 'federated', vmap_keys=['batch_size'])
