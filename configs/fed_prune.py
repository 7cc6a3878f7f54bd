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
Pruning follows a cubic schedule over rounds (updates after rounds 4, 7, 10, 13 by default) to
`sparsity` of the kernels, one global ranking, first conv and classifier dense; masks travel
to the clients, whose masked weights stay exactly zero.

  python -m launch.main --config=configs/fed_prune.py:scorer=magnitude,sparsity=0.9 --workdir=W
  python -m launch.main --config=configs/fed_prune.py:scorer=fishleg,sparsity=0.9 --workdir=W
  python -m launch.main --config=configs/fed_prune.py:scorer=none --workdir=W
"""

import ml_collections

from configs import common, fishleg_fl


def get_config(arg=None):
  arg = common.parse_arg(
    arg, scorer='fishleg', sparsity=0.9, rounds=20, start=3, end=12, every=3,
    train_examples=12000, runlocal=False,
  )  # fmt: skip
  c = fishleg_fl.get_config(
    f'client=fishleg,keep_state=true,rounds={arg.rounds},train_examples={arg.train_examples}'
    + (',runlocal' if arg.runlocal else '')
  )
  c.client_tx.u_sampling = 'gaussian'
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
    c.pruning.schedule_kwargs = {'start': 0, 'end': 1, 'every': 1}
  return c
