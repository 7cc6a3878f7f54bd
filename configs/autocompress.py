r"""Automatic compression: an RL search over distilled students of a VGG teacher, rewarded
for accuracy, measured latency and memory (experiment `autocompress`).

Fashion-MNIST, a BatchNorm VGG-11 of width 0.25 as teacher (trained here unless
`teacher_workdir` is set), students that remove convs and keep 25/50/75/100% of each
conv's channels, each distilled 200 KD steps from the teacher, 8 per episode; reward
R_a · R_c(latency) · R_c(memory) (N2N's form with latency added); baselines: uniform widths.

  python -m launch.main --config=configs/autocompress.py --workdir=/tmp/autocompress
  python -m launch.main --config=configs/autocompress.py:classes=2 --workdir=/tmp/ac2 \
      --config.teacher_workdir=/tmp/autocompress/teacher \
      --config.policy.init_from=/tmp/autocompress        # reuse the first search's policy
  python -m launch.main --config=configs/autocompress.py:runlocal --workdir=/tmp/ac_smoke
"""

import ml_collections
from ml_collections import config_dict

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, data='fmnist', classes='all', runlocal=False)
  c = ml_collections.ConfigDict()
  c.experiment = 'autocompress'
  c.seed = 0
  common.set_image_data(c, arg.data, 'digits')
  c.teacher_workdir = config_dict.placeholder(str)
  c.teacher = ml_collections.ConfigDict(
    {'model_name': 'vgg', 'model': {'depth': 11, 'width': 0.25}, 'epochs': 3, 'batch_size': 64,
     'tx_name': 'adam', 'tx': {'learning_rate': 2e-3}}
  )  # fmt: skip
  c.deployment = ml_collections.ConfigDict({'classes': config_dict.placeholder(tuple)})
  if arg.classes != 'all':
    c.deployment.classes = tuple(range(int(arg.classes)))
  # 'materialized' (each candidate a real, smaller vgg in its own program) measured 3.5x
  # faster than 'masked' (all candidates vmapped at the teacher's width) on this 2-core CPU:
  # 8 Fashion-MNIST candidates of 50 KD steps in 148 s vs 515 s (README).
  c.search = ml_collections.ConfigDict(
    {'ratios': (0.25, 0.5, 0.75, 1.0), 'episodes': 40, 'candidates': 8,
     'transfer_examples': 8192, 'heldout_examples': 2000, 'mode': 'materialized'}
  )  # fmt: skip
  c.distill = ml_collections.ConfigDict(
    {'steps': 200, 'batch_size': 64, 'learning_rate': 1e-3, 'temperature': 4.0}
  )
  c.reward = ml_collections.ConfigDict(
    {'accuracy_weight': 1.0, 'latency_weight': 1.0, 'memory_weight': 1.0,
     'latency_budget_ms': config_dict.placeholder(float),
     'memory_budget_bytes': config_dict.placeholder(float), 'anneal_episodes': 15}
  )  # fmt: skip
  c.policy = ml_collections.ConfigDict(
    {'hidden': 64, 'learning_rate': 3e-3, 'baseline_decay': 0.9,
     'init_from': config_dict.placeholder(str)}
  )  # fmt: skip
  c.baselines = (0.25, 0.5, 0.75)
  c.final = ml_collections.ConfigDict({'steps': 1000})
  c.latency = ml_collections.ConfigDict(
    {'table': config_dict.placeholder(str), 'threads': 1, 'repeats': 100, 'calibration_models': 8}
  )
  c.eval_batch_size = 500
  if arg.runlocal:
    c.data_name, c.data = 'digits', ml_collections.ConfigDict()
    c.teacher.model = {'plan': (8, 'M', 16, 16, 'M')}
    c.teacher.epochs = 2
    c.teacher.batch_size = 32
    c.search.episodes = 2
    c.search.candidates = 3
    c.search.transfer_examples = 256
    c.search.heldout_examples = 128
    c.distill.steps = 5
    c.distill.batch_size = 16
    c.final.steps = 3
    c.latency.repeats = 5
    c.latency.calibration_models = 2
    c.baselines = (0.5,)
    c.search.ratios = (0.5, 1.0)
  return c
