r"""Throughput with many clients in host memory: 1,000 and 100,000 clients of 50 examples.

`simple_cnn` (32x32x3), cohort 100, batch 10, 1 local epoch, client SGD 0.1; one JSON line
per case (`num_clients` in each). The examples are stored as uint8 (100,000 clients x 50 x
3,072 bytes = 15.4 GB) and only the cohort is converted and moved to the device, while the
previous round runs; rounds/s should not depend on the number of clients.

  python -m launch.bench --config=configs/bench/many_clients.py
  python -m launch.bench --config=configs/bench/many_clients.py:runlocal
"""

from configs.bench import common, pfl_cifar10


def get_config(arg=None):
  c = pfl_cifar10.get_config(arg)
  c.bench.workload = 'many_clients'
  c.bench.eval_every_rounds = 0
  c.data.dtype = 'uint8'
  c.data.test_examples = 100
  c.cohort_size = 100
  clients = (1_000, 100_000)
  if common.parse(arg).runlocal:
    c.cohort_size = 2
    clients = (20, 200)
  c.bench.cases = [{'data.num_clients': n, 'partition.num_clients': n} for n in clients]
  return c
