"""Tests for fedcomp.utils.metric_writers."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from fedcomp.utils import metric_writers
from fedcomp.utils.metric_writers import MetricWriter, read_jsonl, truncate_after


def test_jsonl_round_trip_and_tensorboard(tmp_path):
  with MetricWriter(tmp_path) as w:
    w.write(1, {'train/loss': jnp.float32(0.5), 'eval/accuracy': np.float64(0.25)})
    w.write(2, {'train/loss': 0.25, 'perf/examples_per_sec': 1000})
  rows = read_jsonl(tmp_path)
  assert rows == [
    {'round': 1, 'train/loss': 0.5, 'eval/accuracy': 0.25},
    {'round': 2, 'train/loss': 0.25, 'perf/examples_per_sec': 1000.0},
  ]
  assert all(type(v) is float for row in rows for k, v in row.items() if k != 'round')
  events = list((tmp_path / 'tb').glob('events.out.tfevents.*'))
  assert events and events[0].stat().st_size > 0


def test_appends_across_writers(tmp_path):
  with MetricWriter(tmp_path, tensorboard=False) as w:
    w.write(1, {'a': 1.0})
  with MetricWriter(tmp_path, tensorboard=False) as w:
    w.write(2, {'a': 2.0})
  assert [r['round'] for r in read_jsonl(tmp_path)] == [1, 2]
  assert not (tmp_path / 'tb').exists()


def test_non_scalar_metric_raises(tmp_path):
  with MetricWriter(tmp_path, tensorboard=False) as w, pytest.raises(TypeError, match="'x'"):
    w.write(1, {'x': 'abc'})


def test_truncate_after_drops_later_rows_and_broken_last_line(tmp_path):
  path = tmp_path / metric_writers.JSONL_NAME
  rows = [json.dumps({'round': r, 'train/loss': 1.0 / r}) for r in range(1, 6)]
  path.write_text('\n'.join(rows) + '\n{"round": 6, "train/lo')
  assert truncate_after(tmp_path, 3) == 3
  assert [r['round'] for r in read_jsonl(tmp_path)] == [1, 2, 3]
  assert path.read_text().endswith('}\n')
  assert truncate_after(tmp_path / 'missing', 3) == 0


def test_truncate_after_rejects_corruption_in_the_middle(tmp_path):
  (tmp_path / metric_writers.JSONL_NAME).write_text('{"round": 1}\nxx\n{"round": 2}\n')
  with pytest.raises(ValueError, match=':2 is not JSON'):
    truncate_after(tmp_path, 5)


def test_resume_after(tmp_path):
  (tmp_path / metric_writers.JSONL_NAME).write_text('{"round": 1}\n{"round": 2}\n{"rou')
  with MetricWriter(tmp_path, resume_after=1) as w:
    w.write(2, {'a': 3.0})
  assert read_jsonl(tmp_path) == [{'round': 1}, {'round': 2, 'a': 3.0}]
