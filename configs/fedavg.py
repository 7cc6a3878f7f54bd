r"""FedAvg on scikit-learn's digits (1,797 real 8×8 images), IID, no network needed.

The main job: 20 clients, 10 per round, the FedJAX/TFF EMNIST CNN, 1 local
epoch of batch-16 SGD, server SGD 1.0 (plain FedAvg). About a minute on 2 CPU
cores; test accuracy above 0.9.

  python -m launch.main --config=configs/fedavg.py --workdir=/tmp/run1
  python -m launch.main --config=configs/fedavg.py:runlocal --workdir=/tmp/run_local

Switch anything from the command line, e.g. Fashion-MNIST from Debian's
dataset-fashion-mnist package with 2 classes per client and FedAdam:

  python -m launch.main --config=configs/fedavg.py --workdir=/tmp/run2 \
    --config.data_name=idx --config.data.path=/usr/share/datasets/fashion-mnist \
    --config.partition_name=shards --config.partition.classes_per_client=2 \
    --config.server_tx_name=adam --config.server_tx.learning_rate=0.01
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False)
  c = common.federated_config()
  c.total_rounds = 60
  c.cohort_size = 10
  c.batch_size = 16
  c.local_epochs = 1
  c.eval_every_rounds = 10
  c.ckpt_every_rounds = 20
  c.partition.num_clients = 20
  c.model_name = 'cnn'
  c.client_tx.learning_rate = 0.1
  if arg.runlocal:
    common.runlocal(c)
  return c
