r"""Throughput: the pfl-research CIFAR-10 speed benchmark's workload.

`simple_cnn` (32x32x3, 1,626,442 params), 1,000 clients x 50 random examples (10
classes), cohort 50, batch 10, 1 local epoch, client SGD 0.1, server SGD 1.0,
unweighted mean; evaluation on 10,000 examples every 10 rounds, timed apart. With
`--config.data_name=tfds --config.data.name=cifar10 --config.partition_name=iid` the
same workload runs on the real data (when prepared).

  python -m launch.bench --config=configs/bench/pfl_cifar10.py
  python -m launch.bench --config=configs/bench/pfl_cifar10.py:timed_rounds=20
  python -m launch.bench --config=configs/bench/pfl_cifar10.py:runlocal
"""

from configs.bench import common


def get_config(arg=None):
  c = common.bench_config('pfl_cifar10', arg)
  c.data.update(
    num_clients=1000,
    min_examples=50,
    max_examples=50,
    shape=(32, 32, 3),
    num_classes=10,
    test_examples=10000,
  )
  c.partition.num_clients = 1000
  c.cohort_size = 50
  c.batch_size = 10
  c.local_epochs = 1
  c.model_name = 'simple_cnn'
  c.algorithm.weighting = 'uniform'
  c.client_tx.learning_rate = 0.1
  c.server_tx.learning_rate = 1.0
  c.bench.eval_every_rounds = 10
  if common.parse(arg).runlocal:
    c.data.num_clients = c.partition.num_clients = 20
    c.data.test_examples = 100
    c.cohort_size = 2
    c.bench.eval_every_rounds = 1
  return c
