r"""Pruning a trained model: one-shot and gradual, magnitude vs OBS vs FishLeg Surgeon.

Fashion-MNIST (Debian's dataset-fashion-mnist) with the `cnn` (default) or a BatchNorm
ResNet-20; the dense model is trained here (config.dense) unless `init_from` names a run's
workdir. The first layer and the classifier stay dense (config.prune.policy); the other
kernels are pruned with one global ranking. The CIFAR-10/ResNet-18 setting of the FishLeg
Surgeon paper is `data=cifar10,model=resnet18` (TFDS, needs the data prepared locally).

  python -m launch.main --config=configs/prune.py --workdir=/tmp/prune_cnn
  python -m launch.main --config=configs/prune.py:model=resnet20 --workdir=/tmp/prune_resnet
  python -m launch.main --config=configs/prune.py --workdir=/tmp/prune2 \
      --config.init_from=/tmp/fmnist_iid           # prune a federated run's global model
  python -m launch.main --config=configs/prune.py:data=cifar10,model=resnet18 --workdir=W
  python -m launch.main --config=configs/prune.py:runlocal --workdir=/tmp/prune_smoke
"""

import ml_collections
from ml_collections import config_dict

from configs import common

POLICIES = {
  'cnn': (('conv0/kernel', 0.0), ('dense1/kernel', 0.0)),
  'resnet': (('stem/kernel', 0.0), ('head/kernel', 0.0)),
}


def get_config(arg=None):
  arg = common.parse_arg(arg, model='cnn', data='fmnist', runlocal=False)
  c = ml_collections.ConfigDict()
  c.experiment = 'prune'
  c.seed = 0
  common.set_image_data(c, arg.data)
  c.train_examples = config_dict.placeholder(int)
  c.eval_examples = config_dict.placeholder(int)  # None: the whole test set
  c.task_name = 'classification'
  c.task = ml_collections.ConfigDict()
  if arg.model == 'cnn':
    c.model_name, c.model = 'cnn', ml_collections.ConfigDict()
  elif arg.model in ('resnet20', 'resnet18'):
    c.model_name = 'resnet'
    c.model = ml_collections.ConfigDict({'depth': int(arg.model[len('resnet') :])})
  else:
    raise ValueError(f"model={arg.model!r} must be 'cnn', 'resnet20' or 'resnet18'")
  c.init_from = config_dict.placeholder(str)  # a run's workdir holding the dense model
  c.dense = ml_collections.ConfigDict(
    {'epochs': 3, 'batch_size': 64, 'tx_name': 'momentum', 'tx': {'learning_rate': 0.02}}
  )
  p = ml_collections.ConfigDict()
  p.scorers = ('magnitude', 'obs', 'fishleg')
  p.sparsities = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
  p.distribution = 'global'
  p.policy = POLICIES['cnn' if arg.model == 'cnn' else 'resnet']
  # OBS/OBD damping 1e-3 measured better than 1e-5 on the cnn; FLS without the diagonal warm
  # start (Q0 = I/γ) better than with it (README: pruning results).
  # (README: pruning results); SparseML's default is 1e-7 with 1,024 gradients.
  p.scorer_kwargs = ml_collections.ConfigDict(
    {
      'obd': {'num_grads': 256, 'damping': 1e-3},
      'obs': {'num_grads': 256, 'block_size': 50, 'damping': 1e-3},
      'fishleg': {'damping': 1e-3, 'aux_learning_rate': 1e-3, 'pretrain_steps': 500,
                  'refine_steps': 50, 'aux_every': 10},
    }
  )  # fmt: skip
  p.grad_batch_size = 16  # examples per gradient of OBS/OBD's empirical Fisher
  p.nll_batch_size = 64  # examples per Fisher-vector product of FLS
  p.batch_size = 64
  p.finetune_steps = 300
  p.tx_name = 'momentum'
  p.tx = ml_collections.ConfigDict({'learning_rate': 0.01})
  p.gradual_targets = (0.9, 0.95)
  p.gradual_steps = 1500
  p.gradual_every = 100
  p.gradual_end_fraction = 0.7
  p.save = 'fishleg'  # whose gradual model at the highest target is kept in workdir/model
  p.eval_batch_size = 1000
  c.prune = p
  if arg.runlocal:
    c.train_examples = 600
    c.eval_examples = 200
    c.dense.epochs = 1
    p.sparsities = (0.5, 0.9)
    p.gradual_targets = (0.9,)
    p.gradual_steps = 20
    p.gradual_every = 5
    p.finetune_steps = 5
    p.scorer_kwargs.obs.num_grads = 8
    p.scorer_kwargs.obd.num_grads = 8
    p.scorer_kwargs.fishleg.pretrain_steps = 5
    p.scorer_kwargs.fishleg.refine_steps = 2
    p.eval_batch_size = 100
  return c
