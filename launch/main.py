r"""Runs any fedcomp experiment from an ml-collections config.

  python -m launch.main --config=configs/fedavg.py --workdir=/tmp/run1 \
      [--config.key=value ...]

The config names the experiment (`config.experiment`); the workdir receives
everything the run writes, and a run started again on the same workdir resumes
from its last checkpoint. Bad input ends the program with a one-line message
(exit status 2) before anything is compiled.

Multi-process (multi-host): run the same command in every process, on a workdir
they all see. The processes connect through `jax.distributed.initialize()`, either
from the cluster environment (SLURM under srun, Open MPI, a TPU pod: see
_is_multi_host_env) or from the three flags

  --coordinator_address=HOST:PORT --num_processes=N --process_id=I

(all three or none; HOST:PORT is process 0's). Process 0 writes the metrics and
JSON files; every process takes part in checkpoints. See docs/running_at_scale.md.
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from fedcomp.errors import ConfigError, TrainingDivergedError
from fedcomp.utils import compilation_cache, logs
from fedcomp.utils.xla_flags import set_default_xla_flags

# Component dicts (config.data, config.model, ...) are free and checked by their callee, so
# the command line may add keys to them; fixed keys are checked by the experiment (an
# unknown one fails naming the known ones).
_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Config file.', lock_config=False, accept_new_attributes=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address',
  None,
  'Multi-process runs: HOST:PORT of process 0 (with --num_processes and --process_id).',
)
_NUM_PROCESSES = flags.DEFINE_integer(
  'num_processes', None, 'Multi-process runs: the number of processes.'
)
_PROCESS_ID = flags.DEFINE_integer(
  'process_id', None, "Multi-process runs: this process's index, 0..num_processes-1."
)
flags.mark_flags_as_required(['config', 'workdir'])


def _distributed_args() -> dict | None:
  """The arguments of jax.distributed.initialize, or None for a single-process run.

  Returns:
    The three flags' values when they are set; {} (the cluster environment's values,
    auto-detected by JAX) in a multi-process cluster environment; None otherwise.

  Raises:
    ConfigError: only some of the three flags are set, or their values are impossible.
  """
  values = {
    'coordinator_address': _COORDINATOR.value,
    'num_processes': _NUM_PROCESSES.value,
    'process_id': _PROCESS_ID.value,
  }
  missing = [f'--{k}' for k, v in values.items() if v is None]
  if len(missing) == len(values):
    return {} if _is_multi_host_env() else None
  if missing:
    raise ConfigError(
      '--coordinator_address, --num_processes and --process_id go together; missing '
      + ', '.join(missing)
    )
  n, i = values['num_processes'], values['process_id']
  if n < 1 or not 0 <= i < n:
    raise ConfigError(f'--process_id={i} must be in [0, --num_processes={n})')
  if ':' not in values['coordinator_address']:
    raise ConfigError(f'--coordinator_address={values["coordinator_address"]!r} must be HOST:PORT')
  return values


def _start_processes() -> None:
  """Connects the processes of a multi-process run (before anything starts the backend).

  On CPU, JAX 0.10.2's cross-process collectives default to gloo
  (jax_cpu_collectives_implementation), which this needs; GPUs use NCCL and TPUs their
  interconnect.
  """
  try:
    args = _distributed_args()
  except ConfigError as e:
    print(f'fedcomp: error: {e}', file=sys.stderr)
    sys.exit(2)
  if args is not None:
    jax.distributed.initialize(**args)


def main(argv):
  set_default_xla_flags()  # before the backend starts
  logs.quiet_libraries()
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  # Multi-host: every host runs this same program; jax.distributed connects them (from
  # the flags or the cluster environment) before any JAX call starts the backend.
  _start_processes()
  compilation_cache.enable()
  config = _CONFIG.value
  logging.info(
    'fedcomp: process %d of %d, %d local / %d global devices (%s)',
    jax.process_index(),
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


def _more_than_one(environ, name: str) -> bool:
  """Whether the environment variable `name` holds an integer > 1."""
  try:
    return int(environ.get(name, '1')) > 1
  except ValueError:
    return False


def _is_multi_host_env(environ=os.environ) -> bool:
  """Whether this process is one of several that JAX can connect from the environment.

  - JAX_COORDINATOR_ADDRESS set (JAX takes the process count and index from the
    cluster environment);
  - FEDCOMP_MULTIHOST=1: a TPU VM pod (launch/tpu_pod.sh sets it), where JAX reads
    everything from the TPU metadata server;
  - a multi-worker TPU slice on GKE (TPU_WORKER_HOSTNAMES or TPU_PROCESS_ADDRESSES with
    several hosts);
  - a SLURM job step of several tasks (srun: SLURM_STEP_NUM_TASKS > 1);
  - Open MPI with several ranks (OMPI_COMM_WORLD_SIZE > 1).

  A single-task SLURM step or one TPU VM stays a plain single-process run.
  """
  hosts = environ.get('TPU_PROCESS_ADDRESSES') or environ.get('TPU_WORKER_HOSTNAMES') or ''
  return (
    'JAX_COORDINATOR_ADDRESS' in environ
    or environ.get('FEDCOMP_MULTIHOST') == '1'
    or ',' in hosts
    or ('SLURM_JOB_ID' in environ and _more_than_one(environ, 'SLURM_STEP_NUM_TASKS'))
    or ('OMPI_MCA_orte_hnp_uri' in environ and _more_than_one(environ, 'OMPI_COMM_WORLD_SIZE'))
  )


if __name__ == '__main__':
  app.run(main)
