r"""Benchmarks the round engine on a fixed workload; prints one JSON line per repeat.

  python -m launch.bench --config=configs/bench/emnist_cnn.py[:repeats=3] [--workdir=/tmp/bench] \
      [--config.client_map.strategy=vmap] [--config.model.conv_impl=im2col]

Compile time is reported apart (`compile_sec`); evaluation, where the workload
has it, is timed apart too. The JSON line is also appended to WORKDIR/bench.jsonl.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from fedcomp.errors import ConfigError
from fedcomp.utils.xla_flags import set_default_xla_flags

# Component dicts (config.data, config.model, ...) are free and checked by their callee, so
# the command line may add keys to them; fixed keys are checked by the experiment.
_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Bench config file.', lock_config=False, accept_new_attributes=True
)
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/fedcomp_bench', 'Where bench.jsonl is written.')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  set_default_xla_flags()
  from fedcomp.experiments import bench  # after the XLA flags are set

  try:
    bench.run(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    print(f'fedcomp: error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
