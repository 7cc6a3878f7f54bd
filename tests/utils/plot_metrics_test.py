"""Metric curves from metrics.jsonl."""

import json

import pytest

from fedcomp.utils.plot_metrics import mean_std_curve, plot_runs, read_curves, read_metric


def write_run(path, rows):
  path.mkdir()
  (path / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in rows) + '\n')


def test_reads_only_rounds_that_log_the_metric_and_plots(tmp_path):
  rows = [{'round': 1, 'train/loss': 2.0}, {'round': 2, 'train/loss': 1.5, 'eval/accuracy': 0.5}]
  write_run(tmp_path / 'a', rows)
  assert read_metric(str(tmp_path / 'a'), 'eval/accuracy') == ([2], [0.5])
  assert read_metric(str(tmp_path / 'a'), 'train/loss') == ([1, 2], [2.0, 1.5])
  out = tmp_path / 'fig' / 'acc.png'
  plot_runs([str(tmp_path / 'a')], ['A'], 'eval/accuracy', str(out))
  assert out.read_bytes()[:4] == b'\x89PNG'


def test_missing_metric_and_label_mismatch(tmp_path):
  write_run(tmp_path / 'a', [{'round': 1, 'train/loss': 2.0}])
  with pytest.raises(KeyError, match="'eval/accuracy' is not logged"):
    read_metric(str(tmp_path / 'a'), 'eval/accuracy')
  with pytest.raises(ValueError, match='1 workdirs but 2 labels'):
    plot_runs([str(tmp_path / 'a')], ['A', 'B'], 'train/loss', str(tmp_path / 'x.png'))


def test_a_sweep_directory_is_the_mean_and_std_over_its_runs(tmp_path):
  sweep = tmp_path / 'sweep'
  sweep.mkdir()
  write_run(sweep / 'seed=0', [{'round': 1, 'eval/loss': 1.0}, {'round': 2, 'eval/loss': 0.5}])
  write_run(sweep / 'seed=1', [{'round': 1, 'eval/loss': 3.0}, {'round': 2, 'eval/loss': 0.5},
                               {'round': 3, 'eval/loss': 0.1}])  # fmt: skip
  (sweep / 'notes').mkdir()  # not a run
  curves = read_curves(str(sweep), 'eval/loss')
  assert len(curves) == 2
  rounds, mean, std = mean_std_curve(curves)
  assert rounds == [1, 2] and mean == [2.0, 0.5]  # only rounds both log
  assert std == pytest.approx([2**0.5, 0.0])  # sample std of (1, 3) and (0.5, 0.5)
  out = tmp_path / 'loss.png'
  plot_runs([str(sweep), str(sweep / 'seed=0')], ['mean', 'one'], 'eval/loss', str(out))
  assert out.read_bytes()[:4] == b'\x89PNG'
  with pytest.raises(FileNotFoundError, match='no runs'):
    read_curves(str(sweep / 'notes'), 'eval/loss')
