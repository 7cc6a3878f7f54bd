r"""FedPer vs FedAvg with k classes per client on Fashion-MNIST.

10 clients, all in every round, each holding `classes_per_client` classes (label-sorted
shards), 20% of each client's data kept as its local test split. The `cnn` model; with
FedPer its last `num_personal_layers` layers (default 1: the logits layer, `dense1`) are
personal: they stay in the per-client table and are never averaged. 1 local epoch of
batch-32 SGD (lr 0.05). Evaluation: `eval/personal_accuracy` (each client's own model on
its own test split, example-weighted) and `eval/global_accuracy` (the global base with the
mean of the clients' heads on the same splits); for FedAvg, `eval/local_accuracy` is the
global model on the same splits. A 12,000-example subset of the training images keeps
runs short (`train_examples=0` for all).

  python -m launch.main --config=configs/fedper.py:classes_per_client=2 --workdir=/tmp/fedper2
  python -m launch.main --config=configs/fedper.py:classes_per_client=2,algorithm=fed_avg \
    --workdir=/tmp/fedavg2
  python -m launch.main --config=configs/fedper.py:classes_per_client=4 --workdir=/tmp/fedper4

Paper setup (Arivazhagan et al. 2019, Flower baseline), for users with the data: CIFAR-10
via TFDS (`--config.data_name=tfds --config.data.name=cifar10 --config.data.path=None`),
MobileNet-v1 or ResNet-34 (not in fedcomp yet; `--config.model_name=simple_cnn` here),
4, 8 or 10 classes per client, 10 clients, 50 rounds, 4 local epochs, batch 128, lr 0.01.
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(
    arg,
    classes_per_client=2,
    algorithm='fed_per',
    num_personal_layers=1,
    rounds=30,
    train_examples=12000,
    runlocal=False,
  )
  c = common.fmnist_ten_clients(arg.rounds, arg.train_examples)
  c.partition_name = 'shards'
  c.partition.classes_per_client = arg.classes_per_client
  c.partition.local_test_fraction = 0.2
  c.algorithm_name = arg.algorithm
  if arg.algorithm == 'fed_per':
    c.algorithm.num_personal_layers = arg.num_personal_layers
  if arg.runlocal:
    common.runlocal_fmnist(c)
  return c
