r"""FishLeg vs Adam vs SGD with momentum: centralised training curves (Garcia et al. 2023).

`model=autoencoder` (default): the paper's deep auto-encoder benchmark shape,
784-1000-500-250-30 and mirrored, Bernoulli likelihood, on Fashion-MNIST, batch 1000
(the paper's), 3,000 steps (50 epochs); `model=cnn`: the EMNIST CNN as a 10-class
Fashion-MNIST classifier, batch 100, 2,000 steps (the README's rows: `steps=600`).
Each optimizer runs over a small learning-rate grid of 3-6 rates a factor ~3 apart,
widened until the best rate is inside it, from the same initialisation
and minibatch sequence; the best rate of each is the one with the lowest mean training
loss over the last 5 logged windows. FishLeg: aux Adam lr 1e-3 every 10 steps,
u = normalised gradient EMA, momentum 0.9 (EMA form) and Q0 = I/damping, so its first
steps are SGD with rate learning_rate / damping; damping 0.03 for the auto-encoder (a
pilot of 1,000 steps at damping 0.01 / 0.03 / 0.1 and several rates picked it) and 0.5
for the CNN.

  python -m launch.main --config=configs/fishleg_autoencoder.py --workdir=/tmp/fl_ae
  python -m launch.main --config=configs/fishleg_autoencoder.py:model=cnn,steps=600 \
    --workdir=/tmp/fl_cnn
  python -m launch.main --config=configs/fishleg_autoencoder.py:runlocal --workdir=/tmp/fl_s

Needs `apt-get install dataset-fashion-mnist` (or `--config.data.path=DIR`).
"""

import ml_collections

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, model='autoencoder', steps=0, runlocal=False)
  c = ml_collections.ConfigDict()
  c.experiment = 'optimizers'
  c.seed = 0
  c.data_name = 'idx'
  c.data = {'path': common.FMNIST_PATH}
  c.train_examples = 0
  c.batch_size = 100
  c.total_steps = arg.steps or 2000
  c.log_every_steps = 50
  c.final_window = 5
  # Q0 = I / damping: FishLeg's first steps are SGD with rate learning_rate / damping.
  fishleg = {'damping': 0.1, 'aux_learning_rate': 1e-3, 'aux_every': 10, 'momentum': 0.9}
  if arg.model == 'autoencoder':
    c.task_name = 'reconstruction'
    c.model_name = 'autoencoder'
    c.model = {'encoder': (1000, 500, 250, 30)}
    c.batch_size = 1000
    c.total_steps = arg.steps or 3000
    fishleg['damping'] = 0.03
    # The loss sums 784 Bernoulli terms: SGD with momentum diverged at 0.01 with batch 100.
    grid = {
      'fishleg': [3e-4, 1e-3, 2e-3],  # SGD-equivalent initial rates 0.01, 0.033, 0.067
      'adam': [3e-4, 1e-3, 3e-3],
      'momentum': [3e-4, 1e-3, 3e-3],
    }
  elif arg.model == 'cnn':
    c.task_name = 'classification'
    c.model_name = 'cnn'
    c.model = {'dropout': (0.0, 0.0)}
    fishleg['damping'] = 0.5
    grid = {
      'fishleg': [5e-3, 1.5e-2, 5e-2, 0.15, 0.5, 1.5],  # SGD-equivalent initial rates 0.01 .. 3
      'adam': [3e-4, 1e-3, 3e-3, 1e-2],
      'momentum': [0.01, 0.03, 0.1, 0.3],
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
