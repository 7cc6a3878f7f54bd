r"""Data-free distillation: Dream Distillation against its baselines, central and federated.

Fashion-MNIST, a BatchNorm ResNet-8 teacher (trained here unless `teacher_workdir` is set)
and a ResNet-8 of width 0.25 as student; one table (distill.md) with the student trained
on labels, by KD on real data (upper bound), by KD on Gaussian noise, on DeepInversion
images, on dreams from central metadata and on dreams from metadata merged over 10 clients
(Dirichlet α = 0.5 split of the same examples; with a federated teacher run, that run's
own partition). The released metadata: `metadata.fraction` (5%) of the training data,
4 k-means centroids per class and 8 principal directions of the penultimate layer.

  python -m launch.main --config=configs/dream.py --workdir=/tmp/dream
  python -m launch.main --config=configs/dream.py --workdir=/tmp/dream_fed \
      --config.teacher_workdir=/tmp/fmnist_iid      # the global model of a federated run
  python -m launch.main --config=configs/dream.py:data=cifar10 --workdir=W   # the paper's
      # CIFAR-10 setting (WRN-20-4 teacher, ResNet-20 student); TFDS data prepared locally
  python -m launch.main --config=configs/dream.py:runlocal --workdir=/tmp/dream_smoke
"""

from configs import common
from configs.distill import base_config, runlocal


def get_config(arg=None):
  arg = common.parse_arg(arg, data='fmnist', classes='all', runlocal=False)
  arg.ladder = False
  c = base_config(arg)
  c.methods = ('labels', 'kd', 'noise', 'deepinversion', 'dream', 'dream_federated')
  c.save = 'dream'
  return runlocal(c) if arg.runlocal else c
