r"""FedAvg with FishLeg clients vs SGD clients on 2-class Fashion-MNIST.

10 clients, all in every round, 2 classes each (label-sorted shards), the `cnn` model
(its 9216x128 dense layer falls back to a diagonal FishLeg block; the convs and the
logits layer are Kronecker-factored), 1 local epoch of batch 32, a 12,000-example subset.
`client=sgd`: client SGD lr 0.05 (as configs/noniid.py). `client=fishleg`: FishLeg lr
0.05 with momentum 0, damping 0.5, aux Adam lr 1e-3 every 5 steps, Q0 so that the first
steps equal SGD with lr 0.05 (`sgd_learning_rate`); each client starts every round from a
fresh λ, or keeps its λ in the per-client state table with `keep_state=true`. Evaluation
every round, so the rounds to reach a target accuracy can be read off metrics.jsonl.

  python -m launch.main --config=configs/fishleg_fl.py:client=fishleg --workdir=/tmp/fl_fishleg
  python -m launch.main --config=configs/fishleg_fl.py:client=sgd --workdir=/tmp/fl_sgd
  python -m launch.main --config=configs/fishleg_fl.py:client=fishleg,keep_state=true \
    --workdir=/tmp/fl_fishleg_kept

Needs `apt-get install dataset-fashion-mnist` (or `--config.data.path=DIR`).
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(
    arg, client='fishleg', keep_state=False, rounds=30, train_examples=12000, runlocal=False
  )
  c = common.fmnist_ten_clients(arg.rounds, arg.train_examples)
  c.partition_name = 'shards'
  c.partition.classes_per_client = 2
  c.eval_every_rounds = 1
  if arg.client == 'fishleg':
    c.client_tx_name = 'fishleg'
    c.client_tx.momentum = 0.0
    c.client_tx.damping = 0.5
    c.client_tx.aux_learning_rate = 1e-3
    c.client_tx.aux_every = 5
    c.client_tx.sgd_learning_rate = 0.05
    c.algorithm.keep_client_opt_state = arg.keep_state
  elif arg.client != 'sgd':
    raise ValueError(f"client={arg.client!r} must be 'fishleg' or 'sgd'")
  if arg.runlocal:
    common.runlocal_fmnist(c)
  return c
