r"""Runs any fedcomp experiment from an ml-collections config.

  python -m launch.main --config=configs/fedavg.py --workdir=/tmp/run1 \
      [--config.key=value ...]

The config names the experiment (`config.experiment`); the workdir receives
everything the run writes, and a run started again on the same workdir resumes
from its last checkpoint. Bad input ends the program with a one-line message
(exit status 2) before anything is compiled.
"""

import logging as py_logging
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from fedcomp.errors import ConfigError, TrainingDivergedError
from fedcomp.utils.xla_flags import set_default_xla_flags

# Component dicts (config.data, config.model, ...) are free and checked by their callee, so
# the command line may add keys to them; fixed keys are checked by the experiment (an
# unknown one fails naming the known ones).
_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Config file.', lock_config=False, accept_new_attributes=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(py_logging.Filter):
  """Drops INFO records of libraries that narrate every checkpoint write."""

  def filter(self, record):
    return record.levelno >= 30 or not any(f'/{lib}/' in record.pathname for lib in _QUIET)


_QUIET = ('orbax', 'tensorstore', 'etils')


def _enable_compilation_cache() -> None:
  """Keeps compiled rounds on disk so re-runs and resumed runs skip compiling.

  JAX_COMPILATION_CACHE_DIR (or jax's own config) wins; the default is
  ~/.cache/fedcomp/jax. Only programs that took over a second to compile are kept.
  """
  if jax.config.jax_compilation_cache_dir:
    return
  default = os.path.join(os.path.expanduser('~'), '.cache', 'fedcomp', 'jax')
  jax.config.update(
    'jax_compilation_cache_dir', os.environ.get('JAX_COMPILATION_CACHE_DIR', default)
  )
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def main(argv):
  set_default_xla_flags()  # before the backend starts (jax.process_count below)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  _enable_compilation_cache()
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  # Multi-host: every host runs this same program; jax.distributed connects
  # them when the cluster environment (e.g. TPU pod, SLURM) is detected.
  if jax.process_count() == 1 and _is_multi_host_env():
    jax.distributed.initialize()
  config = _CONFIG.value
  logging.info(
    'fedcomp: %d process(es), %d local / %d global devices (%s)',
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
  )
  logging.info('config:\n%s', config)
  from fedcomp.experiments import get_run  # after flags: keeps --help fast

  try:
    get_run(config.experiment)(config, _WORKDIR.value)
  except ConfigError as e:
    print(f'fedcomp: error: {e}', file=sys.stderr)
    sys.exit(2)
  except TrainingDivergedError as e:
    print(f'fedcomp: error: {e}', file=sys.stderr)
    sys.exit(1)


def _is_multi_host_env() -> bool:
  return any(k in os.environ for k in ('JAX_COORDINATOR_ADDRESS', 'TPU_WORKER_HOSTNAMES'))


if __name__ == '__main__':
  app.run(main)
