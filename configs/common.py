"""Pieces shared by the configs: the federated config and argument parsing.

A config's fixed keys (seed, rounds, ...) are checked by the experiment; each component
(`data`, `partition`, `task`, `model`, `algorithm`, `aggregator`, `client_tx`,
`server_tx`, `client_map`) is a dict of the keyword arguments its callee takes, checked
against the callee's signature, so any of them can be switched and set from the command
line: `--config.partition_name=dirichlet --config.partition.alpha=0.1`.
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


def federated_config() -> ml_collections.ConfigDict:
  """A federated config: fixed keys plus one free kwargs dict per component.

  Each `<thing>` dict holds only what differs from the callee's defaults and is checked
  against the callee's keyword arguments when the run is built (an unknown key fails
  naming the known ones); set any from the command line, e.g.
  `--config.partition_name=dirichlet --config.partition.alpha=0.1`.
  """
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
  c.num_devices = config_dict.placeholder(int)  # None: all devices
  c.train_examples = config_dict.placeholder(int)  # a random subset of the train set
  # How a device runs its share of the cohort (fedcomp.experiments.federated.client_map_options):
  # strategy 'vmap', 'map' (lax.map over chunks of chunk_size clients), 'loop' (unrolled) or
  # 'auto' (measured best per model on CPU: 'map', one client at a time with a rolled scan,
  # for conv models with im2col convolutions; 'loop' with fully unrolled steps for XLA's conv;
  # 'vmap' for dense models and on accelerators); unroll of the local steps (None: auto);
  # dynamic_steps for ragged clients; reduction_width: results are bit-identical on every
  # device count that divides it.
  c.client_map = ml_collections.ConfigDict(
    {
      'strategy': 'auto',
      'chunk_size': config_dict.placeholder(int),
      'unroll': config_dict.placeholder(int),
      'dynamic_steps': False,
      'reduction_width': 8,
    }
  )

  c.data_name = 'digits'
  c.data = ml_collections.ConfigDict()
  # Globally shared data (Zhao et al. 2018), the paper's convention: a class-balanced G with
  # |G| = beta * |D| (D: the whole train set) is removed before partitioning; the server
  # trains a warm-up model on G for warmup_epochs (client optimizer and batch size); then
  # each client gets its own random alpha share of G (alpha * |G| examples) merged into its
  # data. beta = 0 disables it; alpha = 0 keeps G on the server (warm-up only).
  c.shared_data = ml_collections.ConfigDict({'beta': 0.0, 'alpha': 0.0, 'warmup_epochs': 5})
  c.partition_name = 'iid'
  c.partition = ml_collections.ConfigDict({'num_clients': 10, 'local_test_fraction': 0.2})
  c.task_name = 'classification'
  c.task = ml_collections.ConfigDict()
  c.model_name = 'mlp'
  c.model = ml_collections.ConfigDict()
  c.algorithm_name = 'fed_avg'
  c.algorithm = ml_collections.ConfigDict()
  c.aggregator_name = 'mean'
  c.aggregator = ml_collections.ConfigDict()
  c.client_tx_name = 'sgd'
  c.client_tx = ml_collections.ConfigDict({'learning_rate': 0.1})
  c.server_tx_name = 'sgd'
  c.server_tx = ml_collections.ConfigDict({'learning_rate': 1.0})
  return c


FMNIST_PATH = '/usr/share/datasets/fashion-mnist'  # Debian's dataset-fashion-mnist


def set_image_data(c: ml_collections.ConfigDict, data: str, *extra: str) -> None:
  """Sets c.data_name/c.data for 'fmnist' (Debian's idx files), 'cifar10' (TFDS, prepared
  locally) or one of `extra` ('digits': the embedded 8x8 digits)."""
  if data == 'fmnist':
    c.data_name = 'idx'
    c.data = ml_collections.ConfigDict({'path': FMNIST_PATH})
  elif data == 'cifar10':
    c.data_name = 'tfds'
    c.data = ml_collections.ConfigDict({'name': 'cifar10'})
  elif data in extra:
    c.data_name, c.data = data, ml_collections.ConfigDict()
  else:
    known = ', '.join(repr(d) for d in ('fmnist', 'cifar10', *extra))
    raise ValueError(f'data={data!r} must be one of {known}')


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
