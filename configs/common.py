"""Pieces shared by the configs: the full federated config and argument parsing.

Every federated config carries every field any data source, partition, model,
algorithm or optimizer may take, set to None where unused, so that any of them
can be switched and set from the command line with the config locked:
`--config.partition_name=dirichlet --config.partition.alpha=0.1`.
"""

import ml_collections
from ml_collections import config_dict


def parse_arg(arg: str | None, **defaults):
  """Parses 'a=1,b=x,flag' into a ConfigDict over `defaults` (types follow them).

  Args:
    arg: the text after ':' in --config=configs/x.py:arg (may be None or '').
    **defaults: every accepted key with its default value.

  Returns:
    A ConfigDict with the defaults overridden by `arg`.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, _, value = item.partition('=')
    if key not in defaults:
      raise ValueError(f'config argument {key!r} is unknown; known: {", ".join(sorted(defaults))}')
    default = defaults[key]
    if not value:
      if not isinstance(default, bool):
        raise ValueError(f'config argument {key!r} needs a value ({key}=...)')
      out[key] = True
    elif isinstance(default, bool):
      out[key] = value.lower() in ('1', 'true', 'yes')
    elif default is None:
      out[key] = value
    else:
      out[key] = type(default)(value)
  return out


def _fields(**types) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({k: config_dict.placeholder(t) for k, t in types.items()})


def federated_config() -> ml_collections.ConfigDict:
  """A complete federated config with every optional field present and unset."""
  c = ml_collections.ConfigDict()
  c.experiment = 'federated'
  c.seed = 0
  c.total_rounds = 100
  c.cohort_size = 10
  c.local_epochs = 1
  c.batch_size = 32
  c.eval_every_rounds = 10
  c.ckpt_every_rounds = 10
  c.log_every_rounds = 1
  c.eval_batch_size = 1024
  # How one device runs its share of the cohort: 'vmap', 'map' (lax.map), 'loop'
  # (unrolled at trace time) or 'auto' (measured best per model on CPU: 'map', one client
  # at a time with a rolled scan, for conv models with im2col convolutions (the CPU
  # default, model.conv_impl='auto'); 'loop' with fully unrolled steps for XLA's conv;
  # 'vmap' with a rolled scan for dense models and on accelerators).
  c.client_parallelism = 'auto'
  c.local_steps_unroll = config_dict.placeholder(int)  # None: auto; 0: fully unrolled
  c.client_chunk_size = config_dict.placeholder(int)  # 'map': clients vmapped per chunk
  # Ragged clients: each client runs only its own steps (a while_loop) and the cohort is
  # ordered by size, so 'map' chunks of short clients stop early. Dense models only.
  c.dynamic_local_steps = False
  c.num_devices = config_dict.placeholder(int)  # None: all devices

  c.data_name = 'digits'
  c.data = _fields(
    path=str,  # idx: folder of MNIST-format files
    name=str,  # tfds: mnist, fashion_mnist, emnist, cifar10, cifar100, svhn_cropped
    data_dir=str,  # tfds: where prepared data lives
    test_fraction=float,  # digits
    split_seed=int,  # digits
    alpha=float,  # synthetic(alpha, beta)
    beta=float,
    num_devices=int,  # synthetic
    num_clients=int,  # random: throughput workloads (configs/bench)
    min_examples=int,
    max_examples=int,
    shape=tuple,
    num_classes=int,
    test_examples=int,
    dtype=str,
  )
  c.train_examples = config_dict.placeholder(int)  # a random subset of the train set
  # Globally shared data (Zhao et al. 2018), the paper's convention: a class-balanced G with
  # |G| = beta * |D| (D: the whole train set) is removed before partitioning; the server
  # trains a warm-up model on G for warmup_epochs (client optimizer and batch size); then
  # each client gets its own random alpha share of G (alpha * |G| examples) merged into its
  # data. beta = 0 disables it; alpha = 0 keeps G on the server (warm-up only).
  c.shared_data = ml_collections.ConfigDict({'beta': 0.0, 'alpha': 0.0, 'warmup_epochs': 5})
  c.partition_name = 'iid'
  c.partition = _fields(
    classes_per_client=int,  # shards
    alpha=float,  # dirichlet concentration
    min_size=int,  # dirichlet
    sigma=float,  # quantity: lognormal spread of client sizes
  )
  c.partition.num_clients = 10
  c.partition.local_test_fraction = 0.2

  c.model_name = 'mlp'
  c.model = _fields(
    hidden=tuple,
    features=tuple,
    dense=int,
    dropout=tuple,
    conv_impl=str,
    compute_dtype=str,
    encoder=tuple,
  )

  c.algorithm_name = 'fed_avg'
  c.algorithm = _fields(mu=float, weighting=str, personal_layers=tuple, num_personal_layers=int)

  c.client_tx_name = 'sgd'
  c.client_tx = _fields(
    learning_rate=float,
    momentum=float,
    b1=float,
    b2=float,
    eps=float,
    # fishleg
    damping=float,
    aux_learning_rate=float,
    aux_every=int,
    u_sampling=str,
    sgd_learning_rate=float,
    initial_scale=float,
    momentum_on=str,
    precondition_aux=bool,
  )
  c.client_tx.learning_rate = 0.1
  c.server_tx_name = 'sgd'
  c.server_tx = _fields(learning_rate=float, momentum=float, b1=float, b2=float, eps=float)
  c.server_tx.learning_rate = 1.0
  return c


FMNIST_PATH = '/usr/share/datasets/fashion-mnist'  # Debian's dataset-fashion-mnist


def fmnist_ten_clients(rounds: int, train_examples: int) -> ml_collections.ConfigDict:
  """Fashion-MNIST (idx) over 10 clients, all in every round: the non-IID studies' setup.

  The `cnn` model, 1 local epoch of batch-32 SGD (lr 0.05), plain FedAvg, evaluation and
  checkpoints every 5 rounds; `train_examples` > 0 trains on a random subset.
  """
  c = federated_config()
  c.data_name = 'idx'
  c.data.path = FMNIST_PATH
  c.train_examples = train_examples or None
  c.partition.num_clients = 10
  c.cohort_size = 10
  c.total_rounds = rounds
  c.batch_size = 32
  c.local_epochs = 1
  c.eval_every_rounds = 5
  c.ckpt_every_rounds = 5
  c.model_name = 'cnn'
  c.client_tx.learning_rate = 0.05
  return c


def runlocal_fmnist(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """runlocal for fmnist_ten_clients configs: 600 examples, one batch-64 step per client."""
  runlocal(c)
  c.train_examples = 600
  c.batch_size = 64
  return c


def runlocal(c: ml_collections.ConfigDict, rounds: int = 2) -> ml_collections.ConfigDict:
  """Shrinks a config to a seconds-long smoke run."""
  c.total_rounds = rounds
  c.eval_every_rounds = rounds  # the final round is always evaluated
  c.ckpt_every_rounds = 1
  return c
