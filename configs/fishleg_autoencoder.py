r"""FishLeg vs Adam vs SGD with momentum: centralised training curves (Garcia et al. 2023).

`model=autoencoder` (default): the deep auto-encoder benchmark shape,
784-1000-500-250-30 and mirrored, Bernoulli likelihood, on Fashion-MNIST; `model=cnn`:
the EMNIST CNN as a 10-class Fashion-MNIST classifier. Each optimizer runs over a small
learning-rate grid: 3 rates a factor ~3 apart (5-6 for FishLeg, whose best rate was at the
top of the first 3; for SGD+momentum on the auto-encoder, below the rates where it
diverged), from the same initialisation and minibatch sequence; the best rate of each is
the lowest mean training loss over the last 5 logged windows. Batch 100, 2,000 steps (the
README's CNN rows: `steps=600`). FishLeg: damping 0.1 (0.5 for the CNN), aux Adam lr 1e-3
every 10 steps, u = normalised gradient EMA, momentum 0.9 (EMA form), and Q0 = I/damping,
so its grid is the SGD-equivalent initial rates times the damping.

  python -m launch.main --config=configs/fishleg_autoencoder.py --workdir=/tmp/fl_ae
  python -m launch.main --config=configs/fishleg_autoencoder.py:model=cnn --workdir=/tmp/fl_cnn
  python -m launch.main --config=configs/fishleg_autoencoder.py:runlocal --workdir=/tmp/fl_s

Needs `apt-get install dataset-fashion-mnist` (or `--config.data.path=DIR`).
"""

import ml_collections

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, model='autoencoder', steps=2000, runlocal=False)
  c = ml_collections.ConfigDict()
  c.experiment = 'optimizers'
  c.seed = 0
  c.data_name = 'idx'
  c.data = {'path': common.FMNIST_PATH}
  c.train_examples = 0
  c.batch_size = 100
  c.total_steps = arg.steps
  c.log_every_steps = 50
  c.final_window = 5
  # Q0 = I / damping: FishLeg's first steps are SGD with rate learning_rate / damping.
  fishleg = {'damping': 0.1, 'aux_learning_rate': 1e-3, 'aux_every': 10, 'momentum': 0.9}
  if arg.model == 'autoencoder':
    c.task = 'autoencoder'
    c.model_name = 'autoencoder'
    c.model = {'encoder': (1000, 500, 250, 30)}
    # The loss sums 784 Bernoulli terms: SGD with momentum diverged at 0.01-0.1.
    grid = {
      'fishleg': [1e-4, 3e-4, 1e-3, 3e-3, 1e-2],  # SGD-equivalent initial rates 1e-3 .. 0.1
      'adam': [3e-4, 1e-3, 3e-3],
      'momentum': [1e-4, 3e-4, 1e-3],
    }
  elif arg.model == 'cnn':
    c.task = 'classification'
    c.model_name = 'cnn'
    c.model = {'dropout': (0.0, 0.0)}
    fishleg['damping'] = 0.5
    grid = {
      'fishleg': [5e-3, 1.5e-2, 5e-2, 0.15, 0.5, 1.5],  # SGD-equivalent initial rates 0.01 .. 3
      'adam': [3e-4, 1e-3, 3e-3],
      'momentum': [0.01, 0.03, 0.1],
    }
  else:
    raise ValueError(f"model={arg.model!r} must be 'autoencoder' or 'cnn'")
  c.optimizers = {'grid': grid, 'kwargs': {'fishleg': fishleg, 'momentum': {'momentum': 0.9}}}
  if arg.runlocal:
    c.train_examples = 500
    c.batch_size = 20
    c.total_steps = 20
    c.log_every_steps = 10
    c.final_window = 1
    c.model = {'encoder': (32, 8)} if arg.model == 'autoencoder' else {'features': (4,), 'dense': 8}
    c.optimizers.grid = {k: v[1:2] for k, v in grid.items()}
  return c
