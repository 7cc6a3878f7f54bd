"""Multi-host helpers on one process, and what a non-primary process writes (nothing).

The multi-process behaviour itself runs in tests/launch/multihost_test.py (2 processes).
"""

import json

import jax
import numpy as np
import pytest
from fl_testing import tree_equal

from configs import common
from fedcomp.core import multihost, run_dir, trainer
from fedcomp.experiments import federated
from fedcomp.utils.metric_writers import JSONL_NAME, MetricWriter


@pytest.fixture(scope='module')
def setup():
  c = common.federated_config()
  c.cohort_size = 10
  c.partition.num_clients = 12
  c.model.hidden = (8,)
  c.algorithm_name = 'fed_per'
  c.algorithm.num_personal_layers = 1
  return federated.build(c)


def test_one_process_owns_every_row_and_put_is_device_put(setup):
  sharded = setup.round.client_map.sharded
  assert multihost.local_rows(sharded, 16).tolist() == list(range(16))
  assert setup.round.local_slots(10).tolist() == list(range(16))  # 8 leaves x 2 slots
  tree = {'a': np.arange(16.0).reshape(8, 2), 'b': np.ones(8, np.int32)}
  put = multihost.put(tree, sharded)
  assert put['a'].sharding == sharded and tree_equal(multihost.fetch(put), tree)
  assert multihost.is_primary() and not multihost.is_multi_process()
  multihost.sync('test')  # a no-op with one process


def test_put_takes_all_slots_and_refuses_other_lengths(setup):
  fr = setup.round
  ids = trainer.sample_cohort(setup.seed, 1, setup.data.num_clients, setup.cohort_size)
  slots = fr.slot_ids(ids)
  data, mask = setup.data.gather(slots, fr.pad_to)
  placed = fr.put(slots, data, mask)
  assert tree_equal(jax.device_get(placed), jax.device_get(trainer.cohort(setup, 1)))
  with pytest.raises(ValueError, match='cohort data has 8 slots; expected all 16'):
    fr.put(slots, {k: v[:8] for k, v in data.items()}, mask[:8])


def test_a_non_primary_process_writes_no_file(tmp_path, monkeypatch):
  monkeypatch.setattr(multihost, 'is_primary', lambda: False)
  rd = run_dir.RunDir(str(tmp_path / 'w'), {'a': 1})
  rd.record_config()
  rd.write_json('summary.json', {'x': 1})
  with rd.metrics(resume_after=3) as writer:
    writer.write(1, {'train/loss': 0.5})
  assert list((tmp_path / 'w').iterdir()) == []
  with MetricWriter(tmp_path / 'm', enabled=False) as writer:
    writer.write(1, {'train/loss': 0.5})
  assert not (tmp_path / 'm' / JSONL_NAME).exists()


def test_the_primary_process_writes_as_before(tmp_path):
  rd = run_dir.RunDir(str(tmp_path), {'a': 1})
  rd.record_config()
  with rd.metrics() as writer:
    writer.write(1, {'train/loss': 0.5})
  assert json.loads((tmp_path / 'config.json').read_text()) == {'a': 1}
  assert rd.logged() == [{'round': 1, 'train/loss': 0.5}]
