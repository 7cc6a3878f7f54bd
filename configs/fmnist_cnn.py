r"""FedAvg on Fashion-MNIST (Debian's dataset-fashion-mnist, read as idx files).

100 clients, 10 per round, the FedJAX/TFF EMNIST CNN, 1 local epoch of batch-32
SGD (lr 0.05), plain FedAvg, 100 rounds. `partition` is `iid` or `shards`
(2 classes per client by sorted-label shards, as McMahan et al. and Zhao et al.).
Needs `apt-get install dataset-fashion-mnist` (or `--config.data.path=DIR`).

  python -m launch.main --config=configs/fmnist_cnn.py:partition=iid --workdir=/tmp/fmnist_iid
  python -m launch.main --config=configs/fmnist_cnn.py:partition=shards --workdir=/tmp/fmnist_shards
  python -m launch.main --config=configs/fmnist_cnn.py:partition=shards,runlocal --workdir=/tmp/f
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, partition='iid', runlocal=False)
  c = common.federated_config()
  c.data_name = 'idx'
  c.data.path = common.FMNIST_PATH
  if arg.partition == 'shards':
    c.partition_name = 'shards'
    c.partition.classes_per_client = 2
  elif arg.partition != 'iid':
    raise ValueError(f"partition={arg.partition!r} must be 'iid' or 'shards'")
  c.partition.num_clients = 100
  c.cohort_size = 10
  c.total_rounds = 100
  c.batch_size = 32
  c.local_epochs = 1
  c.eval_every_rounds = 10
  c.ckpt_every_rounds = 10
  c.model_name = 'cnn'
  c.client_tx.learning_rate = 0.05
  if arg.runlocal:
    common.runlocal(c)
    c.cohort_size = 2
    c.batch_size = 120  # 4 local steps: a short compile
  return c
