r"""A sweep: FedAvg vs FedProx vs SCAFFOLD on 2-class Fashion-MNIST, 3 seeds each.

10 clients holding 2 classes each (label-sorted shards), all in every round, an MLP
(784-200-10), 1 local epoch of batch-32 SGD (lr 0.05), a 12,000-example subset. The
algorithm changes what is compiled, so each is a job; its 3 seeds run as one program
(fedcomp.sweep.group). Needs `apt-get install dataset-fashion-mnist`.

  python -m launch.sweep --config=configs/sweep_noniid.py --workdir=/tmp/sweep_noniid
  python -m launch.sweep --config=configs/sweep_noniid.py:runlocal --workdir=/tmp/sweep_smoke

writes /tmp/sweep_noniid/<run>/ per run and results.csv, results.md and plots.
"""

from configs import common
from fedcomp.sweep import spec as sw


def get_config(arg=None):
  arg = common.parse_arg(arg, rounds=30, train_examples=12000, runlocal=False)
  c = common.fmnist_ten_clients(arg.rounds, arg.train_examples)
  c.partition_name = 'shards'
  c.partition.classes_per_client = 2
  c.model_name = 'mlp'
  c.model.hidden = (200,)
  if arg.runlocal:
    common.runlocal_fmnist(c)
  return c


def get_sweep(arg=None):
  del arg
  return sw.product(sw.axis('algorithm_name', ['fed_avg', 'fed_prox', 'scaffold']), sw.seeds(3))
