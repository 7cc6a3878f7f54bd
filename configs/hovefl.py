r"""HoVeFL: hybrid horizontal–vertical FL of a split model (algorithm `hovefl`).

`horizontal` devices each hold their own non-IID samples (2 label shards) and train the
whole split model; `vertical` devices form groups of `parties` (2: the halves of each image)
that hold the same IID samples, each party's bottom seeing only its half. Every lane gets an
equal share of the train set (horizontal_fraction = H / (H + groups), as the authors'
settings). The authors' hyperparameters: 50 rounds, 2 local epochs, batch 128, Adam (lr 3e-3
on (F)MNIST, 1e-3 on CIFAR-10/SVHN), every client in every round, test every round; the
split model `split_mlp` (two Linear(392→64) bottoms on the left/right halves, top
128→500→10) on Fashion-MNIST, `split_cnn` on the top/bottom halves of CIFAR-10/SVHN
(TFDS: `data=cifar10` or `data=svhn` with the data prepared under ~/tensorflow_datasets).

  python -m launch.sweep --config=configs/hovefl.py:horizontal=18,vertical=0 --workdir=/tmp/hv18_0
  python -m launch.sweep --config=configs/hovefl.py:horizontal=12,vertical=6 --workdir=/tmp/hv12_6
  python -m launch.sweep --config=configs/hovefl.py:horizontal=6,vertical=12 --workdir=/tmp/hv6_12
  python -m launch.sweep --config=configs/hovefl.py:horizontal=12,vertical=6,weighting=uniform \
      --workdir=/tmp/hv12_6_mean          # the authors' baseline: the plain mean of all locals
  python -m launch.main --config=configs/hovefl.py:runlocal --workdir=/tmp/hv_smoke

Arguments: horizontal, vertical (devices), parties, weighting (populations | examples |
uniform), accumulate (the authors' never-cleared lists of local models), rounds, data
(fmnist | cifar10 | svhn | digits), runlocal. Each sweep runs 3 seeds as one program.
"""

import ml_collections

from configs import common
from fedcomp.sweep import spec as sw

TFDS_NAMES = {'cifar10': 'cifar10', 'svhn': 'svhn_cropped'}


def get_config(arg=None):
  arg = common.parse_arg(
    arg, horizontal=12, vertical=6, parties=2, weighting='populations', accumulate=False,
    rounds=50, data='fmnist', runlocal=False,
  )  # fmt: skip
  c = common.federated_config()
  if arg.runlocal:
    arg.data = 'digits'
  if arg.data in TFDS_NAMES:
    c.data_name = 'tfds'
    c.data = ml_collections.ConfigDict({'name': TFDS_NAMES[arg.data]})
  else:
    common.set_image_data(c, arg.data, 'digits')
  if arg.vertical % arg.parties:
    raise ValueError(f'vertical={arg.vertical} devices must be a multiple of parties={arg.parties}')
  groups = arg.vertical // arg.parties
  lanes = arg.horizontal + groups
  c.algorithm_name = 'hovefl'
  c.algorithm = ml_collections.ConfigDict({
    'num_horizontal': arg.horizontal, 'num_vertical': arg.vertical,
    'weighting': arg.weighting, 'accumulate_locals': arg.accumulate,
  })  # fmt: skip
  c.partition_name = 'hovefl'
  c.partition = ml_collections.ConfigDict({
    'num_clients': lanes, 'num_horizontal': arg.horizontal, 'local_test_fraction': 0.0,
  })  # fmt: skip
  c.cohort_size = lanes
  c.total_rounds = arg.rounds
  c.local_epochs = 2
  c.batch_size = 128
  c.eval_every_rounds = 1
  c.ckpt_every_rounds = 10
  c.client_tx_name = 'adam'
  image = arg.data in TFDS_NAMES
  c.client_tx = ml_collections.ConfigDict({'learning_rate': 1e-3 if image else 3e-3})
  if image:
    c.model_name = 'split_cnn'
    c.model = ml_collections.ConfigDict({'axis': 'rows', 'parts': arg.parties})
  else:
    c.model_name = 'split_mlp'
    c.model = ml_collections.ConfigDict({'axis': 'columns', 'parts': arg.parties})
  if arg.runlocal:
    common.runlocal(c)
    c.batch_size = 32
  return c


def get_sweep(arg=None):
  del arg
  return sw.seeds(3)
