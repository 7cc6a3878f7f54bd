r"""Throughput: the FedJAX/TFF EMNIST CNN workload of ../shared/peers (FedJAX, Flower, PyTorch).

200 clients x 128 random 28x28x1 examples (62 classes), cohort 50, batch 32, 1 local
epoch, client SGD 0.1, plain FedAvg (example-weighted mean). Same client sizes as the
peers' scripts.

  python -m launch.bench --config=configs/bench/emnist_cnn.py
  python -m launch.bench --config=configs/bench/emnist_cnn.py:repeats=3
  python -m launch.bench --config=configs/bench/emnist_cnn.py:runlocal
"""

from configs.bench import common


def get_config(arg=None):
  c = common.bench_config('emnist_cnn', arg)
  c.data.update(
    num_clients=200,
    min_examples=128,
    max_examples=128,
    shape=(28, 28, 1),
    num_classes=62,
    test_examples=1000,
  )
  c.partition.num_clients = 200
  c.cohort_size = 50
  c.batch_size = 32
  c.local_epochs = 1
  c.model_name = 'cnn'
  c.client_tx.learning_rate = 0.1
  if common.parse(arg).runlocal:
    c.cohort_size = 4
  return c
