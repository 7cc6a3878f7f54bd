r"""Throughput: the dispatch-bound small_mlp workload of ../shared/peers.

784-200-62 MLP, 3,400 clients with ragged sizes (10 to 400 examples, seeded
log-uniform as the peers' scripts), cohort 100, batch 10, 1 local epoch, client SGD 0.1,
plain FedAvg. Clients run in vmapped chunks of 4 (`map`), each client only for its own
steps (`client_map.dynamic_steps`: clients of similar size share a chunk): with the previous
engine, chunks of 5 ran 2.5-2.8x plain vmap, whose lanes all run the longest client's 40
steps (mean client: about 10.5). The canonical layout puts 100 clients on 8 leaves of 13
slots (4 + 4 + 4 + 1). Chunks of 2-5 measured alike once each chunk was sliced straight from
the device's data (2 devices, 2026-12-04: 47-57k examples/s, 3 and 4 best); 7 ran 37k.

  python -m launch.bench --config=configs/bench/small_mlp.py
  python -m launch.bench --config=configs/bench/small_mlp.py:repeats=3
  python -m launch.bench --config=configs/bench/small_mlp.py:runlocal
"""

from configs.bench import common


def get_config(arg=None):
  c = common.bench_config('small_mlp', arg)
  c.data.update(
    num_clients=3400,
    min_examples=10,
    max_examples=400,
    shape=(28, 28, 1),
    num_classes=62,
    test_examples=1000,
  )
  c.partition.num_clients = 3400
  c.cohort_size = 100
  c.batch_size = 10
  c.local_epochs = 1
  c.model_name = 'mlp'
  c.model.hidden = (200,)
  c.client_tx.learning_rate = 0.1
  c.client_map.strategy = 'map'
  c.client_map.chunk_size = 4
  c.client_map.dynamic_steps = True
  if common.parse(arg).runlocal:
    c.data.num_clients = c.partition.num_clients = 200
    c.cohort_size = 8
  return c
