r"""Knowledge distillation from a trained teacher, with class-subset deployments.

Fashion-MNIST (Debian's dataset-fashion-mnist). The teacher is a BatchNorm ResNet-8 trained
here (config.teacher) unless `teacher_workdir` names any run's workdir (a federated,
pruned or distilled run); students are narrower ResNet-8s (`student.widths`: the model's
width multiplier), trained on labels alone and by KD on the real data.

  python -m launch.main --config=configs/distill.py --workdir=/tmp/distill
  python -m launch.main --config=configs/distill.py --workdir=/tmp/kd_fed \
      --config.teacher_workdir=/tmp/fmnist_iid          # a federated run's global model
  # class-subset deployments: the first N classes, a ladder of student widths; distill.md
  # names the smallest width within 1 point of the teacher on those classes
  python -m launch.main --config=configs/distill.py:classes=2,ladder --workdir=/tmp/deploy2 \
      --config.teacher_workdir=/tmp/distill/teacher
  python -m launch.main --config=configs/distill.py:classes=5,ladder --workdir=/tmp/deploy5 \
      --config.teacher_workdir=/tmp/distill/teacher
  python -m launch.main --config=configs/distill.py:ladder --workdir=/tmp/deploy10 \
      --config.teacher_workdir=/tmp/distill/teacher
  # any classes: --config.deployment.classes='(5,7,9)'
  python -m launch.main --config=configs/distill.py:runlocal --workdir=/tmp/distill_smoke
"""

import ml_collections
from ml_collections import config_dict

from configs import common

LADDER = (0.125, 0.25, 0.5)  # the teacher is width 1


def base_config(arg) -> ml_collections.ConfigDict:
  """The distill experiment's config (shared with configs/dream.py)."""
  c = ml_collections.ConfigDict()
  c.experiment = 'distill'
  c.seed = 0
  common.set_image_data(c, arg.data, 'digits')
  c.train_examples = config_dict.placeholder(int)
  c.eval_examples = config_dict.placeholder(int)  # None: the whole test set
  c.teacher_workdir = config_dict.placeholder(str)  # None: train config.teacher here
  c.teacher = ml_collections.ConfigDict(
    {'model_name': 'resnet', 'model': {'depth': 8}, 'epochs': 3, 'batch_size': 64,
     'tx_name': 'adam', 'tx': {'learning_rate': 2e-3}}
  )  # fmt: skip
  c.student = ml_collections.ConfigDict(
    {'model_name': 'resnet', 'model': {'depth': 8}, 'widths': (0.25,)}
  )
  c.deployment = ml_collections.ConfigDict(
    {'classes': config_dict.placeholder(tuple), 'tolerance': 0.01}
  )
  c.methods = ('labels', 'kd')
  c.kd = ml_collections.ConfigDict({'temperature': 4.0, 'alpha': 0.0})
  c.train = ml_collections.ConfigDict(
    {'steps': 3000, 'batch_size': 128, 'tx_name': 'adam', 'tx': {'learning_rate': 2e-3},
     'log_every': 500}
  )  # fmt: skip
  c.transfer_size = 8192
  c.metadata = ml_collections.ConfigDict(
    {'layer': 'penultimate', 'fraction': 0.05, 'clusters': 4, 'components': 8, 'iters': 25,
     'batch_size': 100}
  )  # fmt: skip
  c.dream = ml_collections.ConfigDict(
    {'steps': 200, 'learning_rate': 0.05, 'tv_weight': 1e-3, 'l2_weight': 0.0, 'jitter': 2,
     'flip': False, 'batch_size': 256, 'spread': 1.0, 'class_weight': 0.0}
  )  # fmt: skip
  c.deepinversion = ml_collections.ConfigDict(
    {'steps': 200, 'learning_rate': 0.05, 'tv_weight': 1e-3, 'l2_weight': 0.0, 'jitter': 2,
     'flip': False, 'batch_size': 256, 'bn_weight': 1.0}
  )  # fmt: skip
  c.federated = ml_collections.ConfigDict(
    {'partition_name': 'dirichlet', 'partition': {'num_clients': 10, 'alpha': 0.5}}
  )
  c.save = 'kd'
  c.eval_batch_size = 1000
  if arg.classes != 'all':
    c.deployment.classes = tuple(range(int(arg.classes)))
  if arg.ladder:
    c.student.widths = LADDER
    c.methods = ('kd',)
    c.train.steps = 1500
  if arg.data == 'cifar10':  # the Dream Distillation paper's setting: WRN teacher, CIFAR-10
    c.teacher.model = {'depth': 20, 'width': 4.0}
    c.teacher.epochs = 60
    c.student.model = {'depth': 20}
    c.student.widths = (1.0,)
    c.dream.flip = c.deepinversion.flip = True
    c.deepinversion.bn_weight = 10.0
    c.train.steps = 20000
    c.transfer_size = 50000
  return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A seconds-long version on the embedded 8x8 digits (tests and smoke runs)."""
  c.data_name, c.data = 'digits', ml_collections.ConfigDict()
  c.eval_examples = 200
  c.teacher.model = {'depth': 8, 'width': 0.5}
  c.teacher.epochs = 2
  c.teacher.batch_size = 32
  c.student.widths = (0.25,) if len(c.student.widths) == 1 else (0.125, 0.25)
  c.train.steps = 20
  c.train.batch_size = 32
  c.train.log_every = 10
  c.transfer_size = 64
  c.metadata.fraction = 0.2
  c.metadata.clusters = 2
  c.metadata.components = 4
  c.metadata.iters = 5
  c.metadata.batch_size = 16
  for s in (c.dream, c.deepinversion):
    s.steps = 3
    s.batch_size = 32
    s.jitter = 1
  c.federated.partition.num_clients = 4
  c.eval_batch_size = 100
  return c


def get_config(arg=None):
  arg = common.parse_arg(arg, data='fmnist', classes='all', ladder=False, runlocal=False)
  c = base_config(arg)
  return runlocal(c) if arg.runlocal else c
