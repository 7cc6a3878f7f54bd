r"""Export a run's model for inference-only deployment (ONNX, int8 ONNX, StableHLO) and
measure it: bytes, non-zeros, FLOPs, batch-1 latency, accuracy and parity with JAX.

  python -m launch.main --config=configs/export.py --workdir=/tmp/fmnist_iid/export \
      --config.source_workdir=/tmp/fmnist_iid
  python -m launch.export --workdir=/tmp/fmnist_iid     # the same, writes RUN/export/
  python -m launch.main --config=configs/export.py:runlocal --workdir=W \
      --config.source_workdir=RUN                         # fewer latency calls

Any run's workdir: a federated run (its newest global model), a prune or distill run (its
model/), or a distill run's students/<name>.
"""

import ml_collections
from ml_collections import config_dict

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False)
  c = ml_collections.ConfigDict()
  c.experiment = 'export'
  c.source_workdir = config_dict.placeholder(str)
  c.platforms = ('cpu',)  # add 'cuda', 'tpu', 'rocm' for accelerator StableHLO
  c.calibration_examples = 512
  c.latency_repeats = 300
  c.eval_batch_size = 500
  c.seed = 0
  if arg.runlocal:
    c.calibration_examples = 64
    c.latency_repeats = 20
  return c
