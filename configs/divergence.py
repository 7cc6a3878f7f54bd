r"""Weight divergence vs EMD (Zhao et al. 2018): FedAvg against centralised SGD.

For IID, 2-class, 1-class and Dirichlet (concentration 1.0 and 0.1) partitions of
Fashion-MNIST over 10 clients, all in every round, FedAvg trains the `cnn` model and
centralised SGD trains it once on the same examples from the same initialisation (one
pass over all data per round, batch 32, lr 0.05). Every round logs
‖w_FedAvg − w_SGD‖/‖w_SGD‖ per layer; the workdir gets divergence.csv, summary.json
(with the Spearman correlation of mean EMD and final divergence) and two plots. A
6,000-example subset keeps it short (`train_examples=0` for all 60,000).

  python -m launch.main --config=configs/divergence.py --workdir=/tmp/divergence
  python -m launch.main --config=configs/divergence.py:rounds=20 --workdir=/tmp/div20
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, rounds=20, train_examples=6000, runlocal=False)
  c = common.fmnist_ten_clients(arg.rounds, arg.train_examples)
  c.experiment = 'divergence'
  c.partition.local_test_fraction = 0.0
  c.divergence = {
    'partitions': [
      {'label': 'iid', 'partition_name': 'iid'},
      {'label': 'dir1.0', 'partition_name': 'dirichlet', 'partition.alpha': 1.0},
      {'label': 'dir0.1', 'partition_name': 'dirichlet', 'partition.alpha': 0.1},
      {'label': '2class', 'partition_name': 'shards', 'partition.classes_per_client': 2},
      {'label': '1class', 'partition_name': 'shards', 'partition.classes_per_client': 1},
    ]
  }
  if arg.runlocal:
    common.runlocal_fmnist(c)
    c.divergence.partitions = c.divergence.partitions[::4]  # iid and 1class
  return c
