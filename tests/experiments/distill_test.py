"""The distill experiment: one-line input errors before anything compiles, a smoke run of
every method that a rerun resumes, and the teacher left untouched."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import distill as distill_config
from configs import dream as dream_config
from fedcomp.compression.distillation import metadata as md
from fedcomp.core.saved_model import describe, load_model, save_model
from fedcomp.errors import ConfigError
from fedcomp.experiments import distill
from fedcomp.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _set(config, key, value):
  *path, last = key.split('.')
  for part in path:
    config = config[part]
  config[last] = value


@pytest.mark.parametrize(
  'change, match',
  [
    ({'methods': ('kd', 'dreams')}, 'entry=.dreams. is unknown; known: deepinversion'),
    ({'deployment.classes': ()}, 'deployment.classes is empty'),
    ({'save': 'noise', 'methods': ('kd',)}, "config.save='noise' is not among"),
    ({'student.widths': (0.5, -1.0)}, 'student.widths'),
    ({'teacher_workdir': '/nonexistent'}, 'holds no run or model'),
    ({'kd.alpha': 1.5}, r'kd.alpha=1.5 must be in \[0, 1\]'),
    ({'dream.steps': 0}, 'config.dream.steps=0 must be a positive integer'),
    ({'metadata.fraction': 0.0}, r'metadata.fraction=0.0 must be in \(0, 1\]'),
  ],
)
def test_bad_config_fails_in_one_line(change, match):
  config = dream_config.get_config('runlocal')
  for key, value in change.items():
    _set(config, key, value)
  with pytest.raises(ConfigError, match=match):
    distill.validate(config)


def test_the_shipped_configs_validate():
  for arg in ('', 'classes=2,ladder', 'classes=5,ladder', 'ladder', 'data=cifar10'):
    distill.validate(distill_config.get_config(arg))
  distill.validate(dream_config.get_config('data=cifar10'))


def _launch(workdir, *flags, config='configs/dream.py:runlocal'):
  return subprocess.run(
    [sys.executable, '-m', 'launch.main', f'--config={ROOT}/{config}', f'--workdir={workdir}',
     *flags],
    cwd=ROOT, capture_output=True, text=True, timeout=600,
  )  # fmt: skip


def _one_error(out, text):
  assert out.returncode == 2, out.stderr[-2000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith('fedcomp: error:')]
  assert len(errors) == 1 and text in errors[0], errors
  assert 'Compiling' not in out.stderr


def test_a_student_that_does_not_fit_its_teacher_fails_in_one_line(tmp_path):
  # A teacher for 12x12 inputs and 4 classes; the digits are 8x8 with 10 classes.
  teacher = build_model('mlp', {'hidden': (8,)}, (12, 12, 1), 4, seed=0)
  save_model(str(tmp_path / 't'), teacher.params, teacher.state,
             describe('mlp', {'hidden': (8,)}, (12, 12, 1), 4, 0))  # fmt: skip
  out = _launch(tmp_path / 'w', f'--config.teacher_workdir={tmp_path / "t"}')
  _one_error(out, 'takes inputs (12, 12, 1) with 4 classes')
  assert not os.path.exists(tmp_path / 'w' / 'config.json')


def test_an_empty_or_foreign_class_subset_fails_in_one_line(tmp_path):
  _one_error(_launch(tmp_path / 'a', '--config.deployment.classes=()'), 'is empty')
  _one_error(_launch(tmp_path / 'b', '--config.deployment.classes=(3,12)'), '[12] are outside')
  assert not os.listdir(tmp_path / 'b') if os.path.exists(tmp_path / 'b') else True


def test_every_method_runs_resumes_and_leaves_the_teacher_unchanged(tmp_path):
  w = str(tmp_path / 'run')
  config = dream_config.get_config('runlocal')
  config.deployment.classes = (1, 3, 7)
  summary = distill.run(config, w)
  teacher = load_model(os.path.join(w, 'teacher'))
  methods = [r['method'] for r in summary['rows']]
  assert methods == list(config.methods)
  for r in summary['rows']:
    assert 0.0 <= r['accuracy'] <= 1.0
  # Every student has one output per deployment class and is saved for later tools.
  student = load_model(os.path.join(w, 'students', 'dream_w0.25'))
  assert student.params['head']['kernel'].shape[-1] == 3
  assert student.meta['classes'] == [1, 3, 7]
  assert load_model(w).meta['method'] == 'dream'
  for name in ('distill.csv', 'distill.md', 'dreams.png', 'metadata.npz',
               'metadata_federated.npz', 'summary.json'):  # fmt: skip
    assert os.path.exists(os.path.join(w, name)), name
  meta, extra = md.load(os.path.join(w, 'metadata.npz'))
  assert meta.centroids.shape[:2] == (10, config.metadata.clusters)  # every class, released
  assert extra['layer'] == 'penultimate'
  assert summary['metadata_bytes']['metadata.npz'] == os.path.getsize(
    os.path.join(w, 'metadata.npz')
  )
  dreams = np.load(os.path.join(w, 'transfer', 'dream.npz'))
  assert set(np.unique(dreams['dream_class'])) <= {0, 1, 2}
  assert dreams['teacher_logits'].shape == (config.transfer_size, 3)
  # The teacher never changes: its saved weights equal what the run distilled from.
  before = jax.tree.leaves((teacher.params, teacher.model_state))
  # A rerun finds every student finished, rebuilds nothing and reports the same numbers.
  os.remove(os.path.join(w, 'summary.json'))
  again = distill.run(config, w)
  assert [r['accuracy'] for r in again['rows']] == [r['accuracy'] for r in summary['rows']]
  after = load_model(os.path.join(w, 'teacher'))
  assert all(
    np.array_equal(a, b) for a, b in zip(before, jax.tree.leaves((after.params, after.model_state)))
  )
  with open(os.path.join(w, 'summary.json')) as f:
    recorded = json.load(f)['teacher']
  # The hash of the teacher the run held after distilling equals the saved teacher's.
  assert recorded['fingerprint'] == distill._fingerprint((after.params, after.model_state))


def test_data_free_compression_of_a_federated_runs_global_model(tmp_path):
  # The teacher is a federated run's global model (an mlp on the digits); the clients of
  # the federated metadata are that run's own partition.
  from configs import common
  from fedcomp.experiments import get_run

  fed = common.runlocal(common.federated_config())
  get_run('federated')(fed, str(tmp_path / 'fed'))
  config = dream_config.get_config('runlocal')
  config.teacher_workdir = str(tmp_path / 'fed')
  config.federated.partition_name = None
  config.methods = ('dream', 'dream_federated')
  config.save = 'dream_federated'
  summary = distill.run(config, str(tmp_path / 'w'))
  _, extra = md.load(str(tmp_path / 'w' / 'metadata_federated.npz'))
  assert extra['merged'] == f'{fed.partition.num_clients} clients'
  assert sum(extra['client_sizes']) == extra['examples']
  assert summary['teacher']['model_name'] == 'mlp'
  assert [r['method'] for r in summary['rows']] == ['dream', 'dream_federated']
