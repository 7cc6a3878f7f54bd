"""Every config runs end to end for two rounds under `runlocal`."""

import importlib
import os

import jax
import numpy as np
import pytest

from configs import common
from fedcomp.core import RunDir, trainer
from fedcomp.experiments import federated, get_run
from fedcomp.utils.config_overrides import with_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_ARGS = {
  'fedavg': ['runlocal'],
  'fmnist_cnn': ['partition=iid,runlocal', 'partition=shards,runlocal'],
  'fedprox_synthetic': ['runlocal'],
  'noniid': ['partition=1class,beta=0.1,alpha=0.5,runlocal', 'partition=2class,runlocal'],
  'fedper': ['classes_per_client=2,runlocal', 'algorithm=scaffold,runlocal'],
  'divergence': ['runlocal'],
  'fishleg_autoencoder': ['runlocal', 'model=cnn,runlocal'],
  'fishleg_fl': ['client=fishleg,runlocal', 'client=fishleg,keep_state=true,runlocal'],
  'prune': ['runlocal', 'runlocal,scorers=all'],
  'fed_prune': ['scorer=magnitude,runlocal', 'scorer=fishleg,runlocal'],
  'sweep_noniid': ['runlocal'],
  'distill': ['runlocal'],
  'dream': ['runlocal'],
  'export': ['runlocal'],
  'autocompress': ['runlocal'],
  'hovefl': ['runlocal', 'accumulate=true,weighting=examples,runlocal'],
  'fsl_gan': ['runlocal'],
}
FMNIST = '/usr/share/datasets/fashion-mnist'
# Smoke runs of minutes whose code paths faster tests cover (federated pruning:
# tests/compression/federated_pruning_test.py; kept FishLeg state: tests/optim; divergence:
# tests/experiments/divergence_test.py): run them with -m slow.
# The prune smoke run with magnitude only in CI (OBS and FLS compile for minutes; their
# algebra and masks are tested in tests/compression); all three with -m slow.
PRUNE_FAST = {'prune.scorers': ('magnitude',), 'prune.save': 'magnitude'}
SLOW = {
  ('fishleg_fl', 'client=fishleg,keep_state=true,runlocal'),
  ('prune', 'runlocal,scorers=all'),
  ('fed_prune', 'scorer=magnitude,runlocal'),
  ('fed_prune', 'scorer=fishleg,runlocal'),
  ('divergence', 'runlocal'),
  ('fmnist_cnn', 'partition=shards,runlocal'),
  # Second variants of configs whose first variant runs in CI (shared data's warm-up also in
  # tests/experiments/federated_test.py).
  ('noniid', 'partition=1class,beta=0.1,alpha=0.5,runlocal'),
  ('fedper', 'classes_per_client=2,runlocal'),
  ('fishleg_autoencoder', 'model=cnn,runlocal'),
  # Runs that a test in tests/experiments makes from the same runlocal config.
  ('dream', 'runlocal'),  # distill_test.py
  ('export', 'runlocal'),  # export_test.py
  ('autocompress', 'runlocal'),  # autocompress_test.py
  ('fsl_gan', 'runlocal'),  # fsl_gan_test.py
}


def test_every_config_file_is_covered():
  names = {f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs')) if f.endswith('.py')}
  assert names - {'__init__', 'common'} == set(CONFIG_ARGS)


@pytest.mark.parametrize(
  ('name', 'arg'),
  [
    pytest.param(n, a, marks=[pytest.mark.slow] if (n, a) in SLOW else [])
    for n, args in CONFIG_ARGS.items()
    for a in args
  ],
)
def test_runlocal_runs_two_rounds(name, arg, tmp_path):
  all_scorers = arg.endswith(',scorers=all')
  config = importlib.import_module(f'configs.{name}').get_config(arg.removesuffix(',scorers=all'))
  if name == 'prune' and not all_scorers:
    config = with_overrides(config, PRUNE_FAST)
  if config.get('data_name') == 'idx' and not os.path.exists(config.data.path):
    pytest.skip(f'{config.data.path} missing (apt-get install dataset-fashion-mnist)')
  if config.experiment == 'export':  # exports a federated run made here
    config.source_workdir = str(tmp_path / 'source')
    get_run('federated')(common.runlocal(common.federated_config()), config.source_workdir)
    report = get_run('export')(config, str(tmp_path / 'export'))
    assert set(report['artifacts']) == {'jax', 'stablehlo', 'onnx', 'onnx_int8'}
    assert report['artifacts']['stablehlo']['bit_equal']
    return
  summary = get_run(config.experiment)(config, str(tmp_path))
  if config.experiment == 'fsl_gan':
    assert np.isfinite(summary['fid']) and (tmp_path / 'summary.json').exists()
    return
  if config.experiment == 'autocompress':
    assert summary['candidates_evaluated'] == config.search.episodes * config.search.candidates
    assert (tmp_path / 'model.json').exists() and (tmp_path / 'pareto.png').exists()
    return
  if config.experiment == 'optimizers':
    assert set(summary['best']) == {'fishleg', 'adam', 'momentum'}
    assert all(np.isfinite(b['final_loss']) for b in summary['best'].values())
    return
  if config.experiment == 'prune':
    check_prune_run(config, summary, tmp_path)
    return
  if config.experiment == 'distill':
    check_distill_run(config, summary, tmp_path)
    return
  if config.experiment == 'divergence':
    assert set(summary['partitions']) == {'iid', '1class'}
    assert all(np.isfinite(p['divergence_all']) for p in summary['partitions'].values())
    return
  assert summary['round'] == config.total_rounds == 2
  # The reported accuracy is the checkpointed model's, recomputed here with a plain
  # forward pass over the test set.
  setup = federated.build(config)
  state = RunDir.existing(str(tmp_path)).restore(2, tuple(trainer.initial_state(setup)))
  params, model_state = trainer.global_model(setup, trainer.TrainState(*state))
  test = setup.data.global_test
  forward = jax.jit(lambda x: setup.model.apply(params, model_state, x)[0])
  logits = np.concatenate([forward(test['x'][i : i + 500]) for i in range(0, len(test['x']), 500)])
  assert summary['eval/accuracy'] == np.mean(logits.argmax(1) == test['y'])
  if config.algorithm_name == 'fed_per':
    assert 'eval/personal_accuracy' in summary
  if config.shared_data.beta:
    assert (tmp_path / 'warmup.json').exists()
  if config.get('pruning') and config.pruning.scorer:
    kernels = [params['conv1']['kernel'], params['dense0']['kernel']]
    zeros = sum(int((np.asarray(k) == 0).sum()) for k in kernels)
    assert abs(zeros / sum(k.size for k in kernels) - config.pruning.sparsity) < 1e-3
    assert summary['pruning/sparsity'] == pytest.approx(config.pruning.sparsity, abs=1e-3)


def check_distill_run(config, summary, tmp_path):
  """One row per method and width in distill.csv; model/ holds the saved student."""
  import csv

  from fedcomp.core.saved_model import load_model

  with open(tmp_path / 'distill.csv') as f:
    rows = list(csv.DictReader(f))
  assert [(r['method'], float(r['width'])) for r in rows] == [
    (m, w) for m in config.methods for w in config.student.widths
  ]
  assert all(0.0 <= float(r['accuracy']) <= 1.0 for r in rows)
  saved = load_model(str(tmp_path))
  assert saved.meta['method'] == config.save
  assert saved.params['head']['kernel'].shape[-1] == len(summary['classes'])
  if 'dream' in config.methods:
    assert (tmp_path / 'dreams.png').exists()
    assert summary['metadata_bytes']['metadata.npz'] == (tmp_path / 'metadata.npz').stat().st_size


def check_prune_run(config, summary, tmp_path):
  """pruning.csv has every run; the saved model loads and has the sparsity it claims."""
  import csv

  from fedcomp.core.saved_model import load_model

  with open(tmp_path / 'pruning.csv') as f:
    rows = list(csv.DictReader(f))
  p = config.prune
  per_scorer = len(p.sparsities) * (2 if p.finetune_steps else 1) + len(p.gradual_targets)
  assert len(rows) == len(p.scorers) * per_scorer
  assert all(0.0 <= float(r['accuracy']) <= 1.0 for r in rows)
  for name in ('pruning.md', 'accuracy_vs_sparsity.png', 'summary.json'):
    assert (tmp_path / name).exists()
  saved = load_model(str(tmp_path))
  assert saved.meta['scorer'] == p.save
  dense0 = np.asarray(saved.params['dense0']['kernel'])
  conv1 = np.asarray(saved.params['conv1']['kernel'])
  zeros = (dense0 == 0).sum() + (conv1 == 0).sum()
  assert zeros / (dense0.size + conv1.size) == pytest.approx(max(p.gradual_targets), abs=1e-3)
  assert not (np.asarray(saved.params['dense1']['kernel']) == 0).any()  # kept dense
  if {'fishleg', 'obs'} <= set(p.scorers):
    fls, obs = summary['memory']['fishleg'], summary['memory']['obs']
    assert fls['state_bytes'] * 4 < obs['curvature_bytes']


def test_tfds_source_runs_end_to_end(mock_tfds, tmp_path):
  c = common.runlocal(common.federated_config())
  c.data_name = 'tfds'
  c.data.name = 'mnist'
  c.partition.num_clients = 4
  c.cohort_size = 2
  with mock_tfds.testing.mock_data(num_examples=64):
    summary = get_run('federated')(c, str(tmp_path))
  assert summary['round'] == 2
