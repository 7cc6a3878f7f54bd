r"""FedProx on Synthetic(α, β) (Li et al., MLSys 2020): 30 devices, natural split.

Each device draws its own model and inputs (α: how much device models differ,
β: how much device inputs differ); the partition is the devices themselves
(`natural`). The model is multinomial logistic regression (an MLP with no
hidden layer) as in the paper; 10 devices per round, 20 local epochs of batch-10
SGD (lr 0.01) as in its synthetic experiments, μ = 1.

  python -m launch.main --config=configs/fedprox_synthetic.py --workdir=/tmp/fedprox
  python -m launch.main --config=configs/fedprox_synthetic.py:alpha=0.5,beta=0.5 --workdir=/tmp/p
  python -m launch.main --config=configs/fedprox_synthetic.py:runlocal --workdir=/tmp/p_local

Set --config.algorithm.mu=0 for FedAvg on the same data.
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, alpha=1.0, beta=1.0, runlocal=False)
  c = common.federated_config()
  c.data_name = 'synthetic'
  c.data.alpha = arg.alpha
  c.data.beta = arg.beta
  c.data.num_devices = 30
  c.partition_name = 'natural'
  c.partition.num_clients = 30
  c.partition.local_test_fraction = 0.0  # the source keeps each device's 10% test part
  c.model_name = 'mlp'
  c.model.hidden = ()
  c.algorithm_name = 'fed_prox'
  c.algorithm.mu = 1.0
  c.cohort_size = 10
  c.local_epochs = 20
  c.batch_size = 10
  c.total_rounds = 200
  c.eval_every_rounds = 10
  c.ckpt_every_rounds = 50
  c.client_tx.learning_rate = 0.01
  if arg.runlocal:
    common.runlocal(c)
    c.local_epochs = 1
  return c
