"""Saved models: a round trip through a workdir, and a federated run's global model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from fedcomp import models
from fedcomp.core.saved_model import describe, load_model, save_model
from fedcomp.errors import ConfigError
from fedcomp.experiments import get_run


def test_save_and_load_round_trip(tmp_path):
  model = models.build_model('resnet', {'depth': 20}, (8, 8, 1), 3, seed=1)
  params = jax.tree.map(lambda p: p + 0.5, model.params)
  state = jax.tree.map(lambda s: s + 2.0, model.state)  # BatchNorm statistics travel too
  meta = describe('resnet', {'depth': 20}, (8, 8, 1), 3, 1) | {'sparsity': 0.9}
  save_model(str(tmp_path), params, state, meta)
  save_model(str(tmp_path), model.params, model.state, meta | {'sparsity': 0.5})
  save_model(str(tmp_path), params, state, meta)  # replaces the model there
  saved = load_model(str(tmp_path))
  assert saved.meta == meta
  for a, b in zip(
    jax.tree.leaves((saved.params, saved.model_state)), jax.tree.leaves((params, state))
  ):
    np.testing.assert_array_equal(a, b)
  x = jnp.ones((2, 8, 8, 1))
  np.testing.assert_allclose(
    saved.model.apply(saved.params, saved.model_state, x)[0], model.apply(params, state, x)[0]
  )


def test_a_federated_runs_global_model_reproduces_its_reported_accuracy(tmp_path):
  c = common.runlocal(common.federated_config())
  summary = get_run('federated')(c, str(tmp_path))
  saved = load_model(str(tmp_path))
  assert saved.meta['round'] == 2 and saved.meta['model_name'] == 'mlp'
  from fedcomp import data as fdata

  test = fdata.load_source(c.data_name, c.data, c.seed).test
  logits = saved.model.apply(saved.params, saved.model_state, jnp.asarray(test['x'], jnp.float32))[
    0
  ]
  assert float(np.mean(np.asarray(logits).argmax(1) == test['y'])) == pytest.approx(
    summary['eval/accuracy'], abs=1e-6
  )


def test_a_workdir_without_a_model_is_a_one_line_error(tmp_path):
  with pytest.raises(ConfigError, match='holds no run'):
    load_model(str(tmp_path))
