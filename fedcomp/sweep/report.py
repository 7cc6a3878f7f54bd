"""A sweep's results table and plots, built from what its runs wrote.

Per setting (the runs' overrides without the seed): the number of seeds, mean and sample
standard deviation (ddof = 1; 0 for one seed) over seeds of every final metric in the
runs' summary.json, the best round of the chosen metric and its value, and the wall time
(perf.json). Written as DIR/results.csv and DIR/results.md, with DIR/<metric>_vs_round.png
(mean over seeds with a ±1 std band, one line per setting) and DIR/<metric>_vs_<key>.png
for each swept numeric key.
"""

import csv
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedcomp.sweep.spec import Run
from fedcomp.utils.metric_writers import read_jsonl
from fedcomp.utils.plot_metrics import mean_std_curve


def _read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def run_results(workdir: str, run: Run, metric: str) -> dict[str, Any]:
  """What one run left on disk: status, final metrics, best round and value, wall time."""
  rdir = os.path.join(workdir, run.name)
  summary = _read_json(os.path.join(rdir, 'summary.json'))
  perf = _read_json(os.path.join(rdir, 'perf.json')) or {}
  rows = read_jsonl(rdir) if os.path.exists(os.path.join(rdir, 'metrics.jsonl')) else []
  curve = [(r['round'], r[metric]) for r in rows if metric in r]
  out: dict[str, Any] = {'run': run.name, 'status': 'done' if summary else 'missing'}
  out['final'] = {k: v for k, v in (summary or {}).items() if isinstance(v, int | float)}
  out['curve'] = curve
  lower_is_better = metric.endswith('loss')
  if curve:
    pick = min if lower_is_better else max
    best = pick(curve, key=lambda rv: rv[1])
    out['best_round'], out['best'] = best
  out['wall_sec'] = perf.get('wall_sec')
  return out


def setting_of(run: Run) -> tuple:
  """The run's overrides without its seed (runs that differ only in seed share it)."""
  return tuple((k, v) for k, v in run.overrides.items() if k != 'seed')


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof = 1; 0.0 for a single value)."""
  x = np.asarray(values, np.float64)
  return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def summarise(workdir: str, runs: Sequence[Run], metric: str) -> list[dict[str, Any]]:
  """One row per setting: seeds done, mean/std of the final metrics, best round, wall."""
  by_setting: dict[tuple, list[dict]] = {}
  for run in runs:
    by_setting.setdefault(setting_of(run), []).append(run_results(workdir, run, metric))
  rows = []
  for setting, results in by_setting.items():
    done = [r for r in results if r['status'] == 'done']
    row: dict[str, Any] = {k: v for k, v in setting}
    row['seeds'] = len(done)
    row['runs'] = len(results)
    names = sorted({k for r in done for k in r['final'] if k != 'round'})
    for name in names:
      vals = [r['final'][name] for r in done if name in r['final']]
      row[f'{name} mean'], row[f'{name} std'] = mean_std(vals)
    for key in ('best_round', 'best', 'wall_sec'):
      vals = [r[key] for r in done if r.get(key) is not None]
      if vals:
        row[f'{key} mean'] = mean_std(vals)[0]
    row['_curves'] = [r['curve'] for r in done]
    rows.append(row)
  return rows


def write_report(workdir: str, runs: Sequence[Run], metric: str = 'eval/accuracy') -> list[dict]:
  """Writes results.csv, results.md and the plots; returns the rows (without curves)."""
  rows = summarise(workdir, runs, metric)
  keys = list(dict.fromkeys(k for run in runs for k in run.overrides if k != 'seed'))
  columns = list(dict.fromkeys(c for r in rows for c in r if not c.startswith('_')))
  columns = keys + [c for c in columns if c not in keys]
  plain = [{c: r.get(c, '') for c in columns} for r in rows]
  with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(plain)
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(markdown_table(rows, keys, metric))
  _plot_rounds(workdir, rows, keys, metric)
  for key in keys:
    if all(isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool) for r in rows):
      _plot_against(workdir, rows, keys, key, metric)
  return plain


def _fmt(value) -> str:
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value)


def markdown_table(rows: Sequence[dict], keys: Sequence[str], metric: str) -> str:
  """The table a README shows: settings, seeds, final metric mean ± std, best round, wall."""
  names = [metric, 'train/loss', 'eval/loss']
  names = [n for n in dict.fromkeys(names) if any(f'{n} mean' in r for r in rows)]
  head = [*keys, 'seeds', *(f'final {n}' for n in names), f'best round ({metric})', 'wall s']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    cells = [_fmt(r.get(k, '')) for k in keys] + [f'{r["seeds"]}/{r["runs"]}']
    for n in names:
      m, s = r.get(f'{n} mean'), r.get(f'{n} std')
      cells.append('—' if m is None else f'{m:.4f} ± {s:.4f}')
    best = r.get('best_round mean')
    cells.append('—' if best is None else f'{best:.1f}')
    wall = r.get('wall_sec mean')
    cells.append('—' if wall is None else f'{wall:.0f}')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def _label(row: dict, keys: Sequence[str]) -> str:
  return ', '.join(f'{k.rsplit(".", 1)[-1]}={_fmt(row.get(k))}' for k in keys) or 'run'


def _file_part(name: str) -> str:
  return name.replace('/', '_').replace('.', '_')


def _plot_rounds(workdir: str, rows: Sequence[dict], keys: Sequence[str], metric: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for row in rows:
    curves = [c for c in row['_curves'] if c]
    if not curves:
      continue
    rounds, mean, std = mean_std_curve([tuple(zip(*c)) for c in curves])
    if not rounds:
      continue
    mean, std = np.array(mean), np.array(std)
    line = ax.plot(rounds, mean, marker='.', label=_label(row, keys))[0]
    if len(curves) > 1:
      ax.fill_between(rounds, mean - std, mean + std, color=line.get_color(), alpha=0.2)
  ax.set_xlabel('round')
  ax.set_ylabel(metric)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, f'{_file_part(metric)}_vs_round.png'), dpi=120)
  plt.close(fig)


def _plot_against(workdir, rows, keys, key, metric) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  others = [k for k in keys if k != key]
  lines: dict[str, list[dict]] = {}
  for row in rows:
    lines.setdefault(_label(row, others), []).append(row)
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for label, group in lines.items():
    group = sorted((r for r in group if f'{metric} mean' in r), key=lambda r: r[key])
    if not group:
      continue
    x = [r[key] for r in group]
    y = [r[f'{metric} mean'] for r in group]
    e = [r[f'{metric} std'] for r in group]
    ax.errorbar(x, y, yerr=e, marker='o', capsize=3, label=label)
  positive = all(r[key] > 0 for r in rows)
  if positive and max(r[key] for r in rows) / min(r[key] for r in rows) >= 10:
    ax.set_xscale('log')
  ax.set_xlabel(key)
  ax.set_ylabel(f'final {metric}')
  ax.grid(alpha=0.3)
  if len(lines) > 1:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, f'{_file_part(metric)}_vs_{_file_part(key)}.png'), dpi=120)
  plt.close(fig)


def is_finished(workdir: str, run: Run, total_rounds: int | None) -> bool:
  """True if the run's summary.json exists (and, for round-based runs, reached the end)."""
  summary = _read_json(os.path.join(workdir, run.name, 'summary.json'))
  if summary is None:
    return False
  if total_rounds is None or 'round' not in summary:
    return True
  return summary['round'] >= total_rounds and not math.isnan(summary['round'])
