"""The run directory: config guard, atomic JSON, checkpoints."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from fedcomp.core import RunDir
from fedcomp.core.run_dir import write_json_atomic
from fedcomp.errors import ConfigError

CONFIG = {'seed': 0, 'total_rounds': 4, 'data': {'path': '/a'}, 'optimizers': {'grid': [1]}}


def test_config_is_recorded_only_when_asked_and_guards_the_workdir(tmp_path):
  rd = RunDir(str(tmp_path), CONFIG, resumable=('total_rounds', 'optimizers.grid'))
  assert not (tmp_path / 'config.json').exists()  # nothing locked before the checks pass
  rd.record_config()
  assert json.loads((tmp_path / 'config.json').read_text()) == CONFIG
  # Resumable keys may change (and are recorded); others may not, named by dotted key.
  changed = {**CONFIG, 'total_rounds': 8, 'optimizers': {'grid': [1, 2]}}
  RunDir(str(tmp_path), changed, resumable=('total_rounds', 'optimizers.grid')).record_config()
  assert json.loads((tmp_path / 'config.json').read_text())['total_rounds'] == 8
  with pytest.raises(
    ConfigError, match=r"config.data.path='/b' differs from '/a' .* new --workdir"
  ):
    RunDir(str(tmp_path), {**CONFIG, 'data': {'path': '/b'}}, resumable=('total_rounds',))


def test_a_truncated_config_json_is_a_clear_error(tmp_path):
  (tmp_path / 'config.json').write_text('{"seed": 0, "tot')
  with pytest.raises(ConfigError, match='is not valid JSON'):
    RunDir(str(tmp_path), CONFIG)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
  path = str(tmp_path / 'summary.json')
  write_json_atomic(path, {'a': 1})

  def fail(*args, **kwargs):
    raise OSError('disk full')

  monkeypatch.setattr(os, 'replace', fail)
  with pytest.raises(OSError):
    write_json_atomic(path, {'a': 2})
  with open(path) as f:
    assert json.load(f) == {'a': 1}  # the old file is intact


def test_checkpoints_round_trip(tmp_path):
  rd = RunDir(str(tmp_path), CONFIG)
  state = ({'w': jnp.arange(3.0)}, {'t': jnp.ones((2, 2))})
  rd.save(3, state)
  assert rd.latest_round() == 3
  got = rd.restore(3, jax_like(state))
  np.testing.assert_array_equal(got[0]['w'], [0.0, 1.0, 2.0])
  rd.close()


def jax_like(tree):
  import jax

  return jax.tree.map(jnp.zeros_like, tree)
