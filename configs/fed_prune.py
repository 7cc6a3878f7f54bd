r"""Pruning inside FedAvg on 2-class Fashion-MNIST: server magnitude vs curvature-aware FLS.

The setting of configs/fishleg_fl.py with `keep_state=true` (10 clients, all in every round,
2 classes each, the `cnn`, FishLeg clients that keep their λ in the per-client table, a
12,000-example subset), every run with the same FishLeg clients (Gaussian probes u, which
fit the whole inverse) so that only the pruning differs:
  scorer=none       dense FedAvg;
  scorer=magnitude  the server prunes the global model by magnitude (jaxpruner's FedJAX
                    baseline);
  scorer=fishleg    clients send 1/diag(Q_k) with their update, the server scores with the
                    aggregate and compensates through the clients' Q in the next round.
Pruning follows a cubic schedule over rounds (updates at rounds 5, 8, ..., 20 by default) to
`sparsity` of the kernels, one global ranking, first conv and classifier dense; masks travel
to the clients, whose masked weights stay exactly zero.

  python -m launch.main --config=configs/fed_prune.py:scorer=magnitude,sparsity=0.9 --workdir=W
  python -m launch.main --config=configs/fed_prune.py:scorer=fishleg,sparsity=0.9 --workdir=W
  python -m launch.main --config=configs/fed_prune.py:scorer=none --workdir=W
"""

import ml_collections

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(
    arg, scorer='fishleg', sparsity=0.9, rounds=30, start=5, end=20, every=3,
    train_examples=12000, runlocal=False,
  )  # fmt: skip
  c = common.fmnist_ten_clients(arg.rounds, arg.train_examples)
  c.partition_name = 'shards'
  c.partition.classes_per_client = 2
  c.eval_every_rounds = 1
  c.client_tx_name = 'fishleg'
  c.client_tx.momentum = 0.0
  c.client_tx.damping = 0.5
  c.client_tx.aux_learning_rate = 1e-3
  c.client_tx.aux_every = 5
  c.client_tx.sgd_learning_rate = 0.05
  c.client_tx.u_sampling = 'gaussian'
  c.algorithm.keep_client_opt_state = True
  if arg.scorer not in ('none', 'magnitude', 'fishleg'):
    raise ValueError(f"scorer={arg.scorer!r} must be 'none', 'magnitude' or 'fishleg'")
  c.pruning = ml_collections.ConfigDict(
    {
      'scorer': None if arg.scorer == 'none' else arg.scorer,
      'sparsity': arg.sparsity,
      'schedule': 'cubic',
      'schedule_kwargs': {'start': arg.start, 'end': arg.end, 'every': arg.every},
      'distribution': 'global',
      'policy': (('conv0/kernel', 0.0), ('dense1/kernel', 0.0)),
    }
  )
  if arg.runlocal:
    common.runlocal_fmnist(c)
    c.total_rounds = 3
    c.pruning.schedule_kwargs = {'start': 0, 'end': 2, 'every': 1}
  return c
