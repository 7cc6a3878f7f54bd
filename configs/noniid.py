r"""Non-IID FedAvg with globally shared data (Zhao et al. 2018) on Fashion-MNIST.

10 clients, all in every round (the paper's setup), the `cnn` model, 1 local epoch of
batch-32 SGD (lr 0.05), plain FedAvg. Partitions: `iid`, `2class` (label-sorted shards,
2 classes per client) and `1class` (each client one class).

Shared data, the paper's convention (not swapped): beta = |G| / |D| sizes the
class-balanced globally shared set G carved from the training set D before it is
partitioned; the server first trains a warm-up model on G (`warmup_epochs`), then each
client receives its own random alpha share of G merged into its local data, and FedAvg
starts from the warm-up model. beta=0 disables it.

To keep runs minutes long on a 2-core CPU, a 12,000-example random subset of the 60,000
training images is used (`train_examples=12000`, 0 for all). Needs
`apt-get install dataset-fashion-mnist` (or `--config.data.path=DIR`).

  python -m launch.main --config=configs/noniid.py:partition=iid --workdir=/tmp/noniid_iid
  python -m launch.main --config=configs/noniid.py:partition=1class --workdir=/tmp/noniid_1c
  python -m launch.main --config=configs/noniid.py:partition=1class,beta=0.05,alpha=0.5 \
    --workdir=/tmp/noniid_1c_shared

Paper setup, for users who have the data: CIFAR-10 via TFDS and the paper's CNN family,
batch 10 or 100, 1 or 5 local epochs, lr 0.1 decayed 0.992 per round, 500 rounds:
  --config=configs/noniid.py:partition=2class,train_examples=0 --config.data_name=tfds
  --config.data.name=cifar10 --config.data.path=None --config.model_name=simple_cnn
Other overrides: `--config.data_name=...`, `--config.model_name=...`.
"""

from configs import common

PARTITIONS = {
  'iid': ('iid', None),
  '2class': ('shards', 2),
  '1class': ('shards', 1),
}


def get_config(arg=None):
  arg = common.parse_arg(
    arg,
    partition='iid',
    beta=0.0,
    alpha=0.0,
    warmup_epochs=5,
    rounds=30,
    train_examples=12000,
    runlocal=False,
  )
  if arg.partition not in PARTITIONS:
    raise ValueError(f'partition={arg.partition!r}; known: {", ".join(PARTITIONS)}')
  c = common.fmnist_ten_clients(arg.rounds, arg.train_examples)
  c.partition_name, k = PARTITIONS[arg.partition]
  if k is not None:
    c.partition.classes_per_client = k
  c.shared_data.beta = arg.beta
  c.shared_data.alpha = arg.alpha
  c.shared_data.warmup_epochs = arg.warmup_epochs
  if arg.runlocal:
    common.runlocal_fmnist(c)
    c.shared_data.warmup_epochs = min(arg.warmup_epochs, 1)
  return c
