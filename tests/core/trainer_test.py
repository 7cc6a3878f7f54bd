"""The reusable trainer: an outer loop drives rounds and evaluation in-process."""

import jax
import numpy as np
import pytest
from fl_testing import tree_equal

from configs import common
from fedcomp.core import trainer
from fedcomp.errors import TrainingDivergedError
from fedcomp.experiments import federated


def small_config(**kw):
  c = common.federated_config()
  c.total_rounds = 4
  c.cohort_size = 4
  c.batch_size = 16
  c.partition.num_clients = 8
  c.model.hidden = (16,)
  for k, v in kw.items():
    c[k] = v
  return c


@pytest.fixture(scope='module')
def setup():
  return federated.build(small_config())


def test_rounds_in_two_segments_equal_one_run(setup):
  whole = list(trainer.train_rounds(setup, trainer.initial_state(setup), 1, 4))
  first = list(trainer.train_rounds(setup, trainer.initial_state(setup), 1, 2))
  rest = list(trainer.train_rounds(setup, first[-1][1], 3, 4))
  assert [r for r, _, _ in whole] == [1, 2, 3, 4]
  strip = lambda m: {k: v for k, v in m.items() if not k.startswith('perf/')}  # noqa: E731
  assert [strip(m) for _, _, m in whole] == [strip(m) for _, _, m in first + rest]
  assert tree_equal(whole[-1][1], rest[-1][1])


def test_evaluate_matches_a_plain_forward_pass(setup):
  state = list(trainer.train_rounds(setup, trainer.initial_state(setup), 1, 2))[-1][1]
  scores = trainer.evaluate(setup, state)
  params, model_state = trainer.global_model(setup, state)
  test = setup.data.global_test
  logits = np.asarray(setup.model.apply(params, model_state, test['x'])[0], np.float64)
  log_p = (
    logits
    - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
    - logits.max(1, keepdims=True)
  )
  assert scores['eval/accuracy'] == np.mean(logits.argmax(1) == test['y'])
  assert scores['eval/loss'] == pytest.approx(
    -log_p[np.arange(len(logits)), test['y']].mean(), rel=1e-5
  )
  assert 'eval/local_accuracy' in scores  # clients keep 20% as local test data


def test_no_local_test_split_leaves_local_metrics_out():
  c = small_config()
  c.partition.local_test_fraction = 0.0
  s = federated.build(c)
  scores = trainer.evaluate(s, trainer.initial_state(s))
  assert 'eval/accuracy' in scores and not any('local' in k for k in scores)


def test_a_diverging_round_raises_before_its_state_is_seen():
  c = small_config()
  c.server_tx.learning_rate = 1e38  # finite, but the first update overflows
  s = federated.build(c)
  seen = []
  with pytest.raises(TrainingDivergedError, match='at round 2'):
    for r, state, _ in trainer.train_rounds(s, trainer.initial_state(s), 1, 3):
      seen.append(r)
      assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.server.params))
  assert seen == [1]
