"""Curves of one metric from several runs' metrics.jsonl, in one figure (matplotlib, Agg).

A workdir is a run (it holds metrics.jsonl) or a sweep (its sub-directories are runs, e.g.
seed=0, seed=1, ...): a sweep is drawn as the mean over its runs with a ±1 std band.
"""

import json
import os
from collections.abc import Sequence


def read_metric(workdir: str, metric: str) -> tuple[list[int], list[float]]:
  """(rounds, values) of `metric` in WORKDIR/metrics.jsonl, rounds where it was logged.

  Raises:
    FileNotFoundError: no metrics.jsonl in workdir.
    KeyError: the metric is in no row.
  """
  path = os.path.join(workdir, 'metrics.jsonl')
  rounds, values = [], []
  with open(path) as f:
    for line in f:
      row = json.loads(line) if line.strip() else {}
      if metric in row:
        rounds.append(int(row['round']))
        values.append(float(row[metric]))
  if not rounds:
    raise KeyError(f'{metric!r} is not logged in {path}')
  return rounds, values


def read_curves(workdir: str, metric: str) -> list[tuple[list[int], list[float]]]:
  """The run's curve, or one curve per run of a sweep directory (sorted by name).

  Raises:
    FileNotFoundError: neither metrics.jsonl nor sub-directories with one.
    KeyError: a run does not log the metric.
  """
  if os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
    return [read_metric(workdir, metric)]
  runs = sorted(
    d for d in os.listdir(workdir) if os.path.exists(os.path.join(workdir, d, 'metrics.jsonl'))
  ) if os.path.isdir(workdir) else []  # fmt: skip
  if not runs:
    raise FileNotFoundError(f'{workdir} has no metrics.jsonl and no runs that have one')
  return [read_metric(os.path.join(workdir, d), metric) for d in runs]


def mean_std_curve(curves) -> tuple[list[int], list[float], list[float]]:
  """(rounds every curve logs, mean, sample std (0 for one curve)) over the curves."""
  rounds = sorted(set.intersection(*(set(r) for r, _ in curves)))
  table = [[dict(zip(r, v))[k] for k in rounds] for r, v in curves]
  n = len(table)
  mean = [sum(col) / n for col in zip(*table)]
  std = [
    (sum((x - m) ** 2 for x in col) / (n - 1)) ** 0.5 if n > 1 else 0.0
    for col, m in zip(zip(*table), mean)
  ]
  return rounds, mean, std


def plot_runs(
  workdirs: Sequence[str], labels: Sequence[str], metric: str, out: str, title: str = ''
) -> None:
  """Writes a PNG with `metric` against the round for each run.

  Args:
    workdirs: run directories, or sweep directories (mean ± std over their runs).
    labels: one legend label per run.
    metric: e.g. 'eval/accuracy'.
    out: the PNG path.
    title: figure title.
  """
  if len(workdirs) != len(labels):
    raise ValueError(f'{len(workdirs)} workdirs but {len(labels)} labels')
  curves = [mean_std_curve(read_curves(w, metric)) for w in workdirs]  # fail before drawing
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 3.5))
  for (rounds, mean, std), label in zip(curves, labels):
    line = ax.plot(rounds, mean, marker='.', markersize=3, label=label)[0]
    if any(std):
      low = [m - s for m, s in zip(mean, std)]
      high = [m + s for m, s in zip(mean, std)]
      ax.fill_between(rounds, low, high, color=line.get_color(), alpha=0.2)
  ax.set(xlabel='round', ylabel=metric, title=title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=120)
  plt.close(fig)
