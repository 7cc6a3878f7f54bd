r"""Exports a run's model for inference-only deployment (see fedcomp.experiments.export).

  python -m launch.export --workdir=RUN [--out=DIR] [--platforms=cpu,cuda] \
      [--calibration_examples=512] [--latency_repeats=300]

RUN is any run's workdir (federated, prune, distill, a distill run's students/<name>);
the artifacts and report.json/report.md go to DIR (default RUN/export). Bad input ends
with a one-line message (exit status 2) before anything is loaded.
"""

import os
import sys

from absl import app, flags

from fedcomp.errors import ConfigError
from fedcomp.utils import logs

_WORKDIR = flags.DEFINE_string('workdir', None, 'The workdir of the run to export.')
_OUT = flags.DEFINE_string('out', None, 'Output directory (default WORKDIR/export).')
_PLATFORMS = flags.DEFINE_list('platforms', ['cpu'], 'StableHLO platforms (cpu, cuda, rocm, tpu).')
_CALIBRATION = flags.DEFINE_integer('calibration_examples', 512, 'int8 calibration examples.')
_REPEATS = flags.DEFINE_integer('latency_repeats', 300, 'Timed batch-1 calls per latency.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logs.quiet_libraries()
  from configs.export import get_config
  from fedcomp.experiments import get_run

  config = get_config()
  config.source_workdir = _WORKDIR.value
  config.platforms = tuple(_PLATFORMS.value)
  config.calibration_examples = _CALIBRATION.value
  config.latency_repeats = _REPEATS.value
  out = _OUT.value or os.path.join(_WORKDIR.value, 'export')
  try:
    report = get_run('export')(config, out)
  except ConfigError as e:
    print(f'fedcomp: error: {e}', file=sys.stderr)
    sys.exit(2)
  with open(os.path.join(out, 'report.md')) as f:
    print(f.read())
  del report


if __name__ == '__main__':
  app.run(main)
