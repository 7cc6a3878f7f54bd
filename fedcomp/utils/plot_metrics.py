"""Curves of one metric from several runs' metrics.jsonl, in one figure (matplotlib, Agg)."""

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


def plot_runs(
  workdirs: Sequence[str], labels: Sequence[str], metric: str, out: str, title: str = ''
) -> None:
  """Writes a PNG with `metric` against the round for each run.

  Args:
    workdirs: run directories.
    labels: one legend label per run.
    metric: e.g. 'eval/accuracy'.
    out: the PNG path.
    title: figure title.
  """
  if len(workdirs) != len(labels):
    raise ValueError(f'{len(workdirs)} workdirs but {len(labels)} labels')
  curves = [read_metric(w, metric) for w in workdirs]  # fail before drawing anything
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 3.5))
  for (rounds, values), label in zip(curves, labels):
    ax.plot(rounds, values, marker='.', label=label)
  ax.set(xlabel='round', ylabel=metric, title=title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=120)
  plt.close(fig)
