"""The results table: mean ± std over seeds, best round and wall time, by hand."""

import csv
import json
import math

import pytest

from fedcomp.sweep import report
from fedcomp.sweep import spec as sw


def _fake_run(root, name, accs, wall):
  d = root / name
  d.mkdir(parents=True)
  rows = [
    {'round': r + 1, 'eval/accuracy': a, 'train/loss': 1.0 / (r + 1)} for r, a in enumerate(accs)
  ]
  (d / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  (d / 'summary.json').write_text(json.dumps({'round': len(accs), **rows[-1]}))
  (d / 'perf.json').write_text(json.dumps({'wall_sec': wall}))


def test_table_means_and_sample_stds_by_hand(tmp_path):
  runs = sw.expand(sw.product(sw.axis('client_tx.learning_rate', [0.1, 0.3]), sw.seeds(3)))
  accs = {
    'learning_rate=0.1,seed=0': [0.5, 0.7, 0.6],
    'learning_rate=0.1,seed=1': [0.4, 0.8, 0.7],
    'learning_rate=0.1,seed=2': [0.6, 0.6, 0.8],
    'learning_rate=0.3,seed=0': [0.9, 0.8, 0.7],
    'learning_rate=0.3,seed=1': [0.9, 0.9, 0.9],
  }  # lr 0.3 seed 2 never ran
  for i, (name, a) in enumerate(accs.items()):
    _fake_run(tmp_path, name, a, wall=10.0 + i)
  rows = report.write_report(str(tmp_path), runs, 'eval/accuracy')
  first, second = rows
  assert first['client_tx.learning_rate'] == 0.1 and first['seeds'] == 3
  assert first['eval/accuracy mean'] == pytest.approx((0.6 + 0.7 + 0.8) / 3)
  # sample std of 0.6, 0.7, 0.8: sqrt((0.01 + 0 + 0.01) / 2) = 0.1
  assert first['eval/accuracy std'] == pytest.approx(0.1)
  # best rounds 2, 2, 3 (first maximum); wall 10, 11, 12
  assert first['best_round mean'] == pytest.approx(7 / 3)
  assert first['wall_sec mean'] == pytest.approx(11.0)
  assert second['seeds'] == 2 and second['runs'] == 3
  assert second['eval/accuracy mean'] == pytest.approx(0.8)
  assert second['eval/accuracy std'] == pytest.approx(math.sqrt(0.02))
  with open(tmp_path / 'results.csv') as f:
    table = list(csv.DictReader(f))
  assert float(table[0]['eval/accuracy std']) == pytest.approx(0.1)
  md = (tmp_path / 'results.md').read_text()
  assert '| 0.1 | 3/3 | 0.7000 ± 0.1000 |' in md
  assert '| 0.3 | 2/3 | 0.8000 ± 0.1414 |' in md
  assert (tmp_path / 'eval_accuracy_vs_round.png').exists()
  assert (tmp_path / 'eval_accuracy_vs_client_tx_learning_rate.png').exists()


def test_mean_std_of_one_seed_has_zero_spread():
  assert report.mean_std([0.25]) == (0.25, 0.0)
