r"""Plots one metric of several runs (or sweeps: mean ± std over their runs) against the round.

  python -m launch.plot --workdirs=/tmp/a,/tmp/b --labels=FedAvg,SCAFFOLD \
      --metric=eval/accuracy --out=/tmp/accuracy.png
"""

import sys

from absl import app, flags

from fedcomp.utils.plot_metrics import plot_runs

_WORKDIRS = flags.DEFINE_list(
  'workdirs', None, 'Run directories (with metrics.jsonl) or sweep directories (their runs).'
)
_LABELS = flags.DEFINE_list('labels', None, 'One legend label per workdir.')
_METRIC = flags.DEFINE_string('metric', 'eval/accuracy', 'The metric to plot.')
_OUT = flags.DEFINE_string('out', None, 'Output PNG path.')
_TITLE = flags.DEFINE_string('title', '', 'Figure title.')
flags.mark_flags_as_required(['workdirs', 'labels', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  try:
    plot_runs(_WORKDIRS.value, _LABELS.value, _METRIC.value, _OUT.value, _TITLE.value)
  except (OSError, KeyError, ValueError) as e:
    print(f'fedcomp: error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
