"""Tasks: losses against hand computations, and the battery every registered task passes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fl_testing import mesh, tree_equal

from fedcomp import tasks
from fedcomp.algorithms import ALGORITHMS
from fedcomp.core import AlgorithmContext, ClientMap, FederatedRound, OptimizerStep
from fedcomp.errors import ConfigError

LOGITS = np.array([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [9.0, 9.0, 9.0]], np.float32)
MASK = np.array([True, True, False])


def fixed(logits):
  """An 'apply' that returns given logits (the params are ignored)."""
  return lambda params, state, x, *, train=False, key=None, mask=None: (jnp.asarray(logits), state)


def log_softmax(z):
  z = np.asarray(z, np.float64)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_classification_by_hand():
  y = np.array([0, 2, 1])
  batch = {'x': np.zeros((3, 1)), 'y': y, 'mask': MASK}
  task = tasks.make_task('classification')
  loss, (sums, state) = task.loss(fixed(LOGITS), {}, {}, batch, jax.random.key(0))
  ce = -log_softmax(LOGITS)[np.arange(3), y]
  assert float(loss) == pytest.approx(ce[:2].mean(), rel=1e-6)
  assert float(sums['count']) == 2 and float(sums['accuracy']) == 1.0  # row 0 right, row 1 wrong
  per = task.per_example(fixed(LOGITS), {}, {}, batch)
  np.testing.assert_allclose(per['loss'], ce, rtol=1e-6)


def test_reconstruction_by_hand():
  x = np.array([[[0.0, 1.0, 0.25]], [[1.0, 1.0, 0.5]], [[0.0, 0.0, 0.0]]], np.float32)
  batch = {'x': x, 'mask': MASK}
  loss, (sums, _) = tasks.make_task('reconstruction').loss(fixed(LOGITS), {}, {}, batch, None)
  p = 1 / (1 + np.exp(-LOGITS.astype(np.float64)))
  t = x.reshape(3, -1)
  bce = -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum(-1)
  assert float(loss) == pytest.approx(bce[:2].mean(), rel=1e-5)
  assert float(sums['loss']) == pytest.approx(bce[:2].sum(), rel=1e-5)


@pytest.mark.parametrize('temperature,w', [(1.0, 0.0), (4.0, 0.0), (2.0, 0.3)])
def test_distillation_by_hand(temperature, w):
  teacher = np.array([[1.0, 3.0, 0.0], [0.5, 1.5, 0.0], [0.0, 0.0, 0.0]], np.float32)
  y = np.array([1, 0, 2])
  batch = {'x': np.zeros((3, 1)), 'teacher_logits': teacher, 'y': y, 'mask': MASK}
  task = tasks.make_task('distillation', {'temperature': temperature, 'hard_label_weight': w})
  loss, (sums, _) = task.loss(fixed(LOGITS), {}, {}, batch, None)
  t, s = log_softmax(teacher / temperature), log_softmax(LOGITS / temperature)
  kl = temperature**2 * (np.exp(t) * (t - s)).sum(-1)
  ce = -log_softmax(LOGITS)[np.arange(3), y]
  want = (1 - w) * kl + w * ce
  assert float(loss) == pytest.approx(want[:2].mean(), rel=1e-5)
  assert float(sums['agreement']) == 1.0  # row 0: 0 vs 1 differ; row 1: 1 and 1 agree
  assert float(sums['accuracy']) == 0.0


def test_distillation_with_a_teacher_function_and_bad_options():
  teacher = lambda x: x @ jnp.ones((1, 3))  # noqa: E731
  task = tasks.make_task('distillation', {}, teacher=teacher)
  assert task.batch_keys == ('x',)
  with pytest.raises(ConfigError, match='temperature=0 must be > 0'):
    tasks.make_task('distillation', {'temperature': 0})
  with pytest.raises(
    ConfigError, match=r"config.task_name='gan' is unknown; known: classification"
  ):
    tasks.make_task('gan')
  with pytest.raises(
    ConfigError, match=r'config.task.temperature is set but task .classification.'
  ):
    tasks.make_task('classification', {'temperature': 2.0})


# ------------------------------------------------------------------ battery
def linear(params, state, x, *, train=False, key=None, mask=None):
  return x @ params['w'], state


def data_for(name, k=4, pad=6, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(k, pad, 3)).astype(np.float32)
  mask = np.arange(pad)[None] < np.array([6, 3, 5, 2])[:, None]
  true_w = rng.normal(size=(3, 3)).astype(np.float32)
  data = {'x': x}
  if name == 'classification':
    data['y'] = np.argmax(x @ true_w, -1).astype(np.int32)
  if name == 'distillation':
    data['teacher_logits'] = 3 * x @ true_w
  if name == 'reconstruction':
    data['x'] = (x > 0).astype(np.float32)  # Bernoulli targets: the model outputs 3 logits
  return data, mask


def task_round(name, devices=1):
  task = tasks.make_task(name)
  ctx = AlgorithmContext(
    model=type(
      'M', (), {'apply': staticmethod(linear), 'params': None, 'state': {}, 'norm_paths': ()}
    ),
    task=task,
    client_optimizer=OptimizerStep(optax.sgd(0.3)),
    server_tx=optax.sgd(1.0),
  )
  alg = ALGORITHMS['fed_avg'](ctx)
  return FederatedRound(
    alg, ClientMap(mesh(devices)), num_clients=4, local_epochs=2, batch_size=2, pad_to=6
  )


def run(fr, data, mask, rounds):
  server, table = fr.init({'w': jnp.zeros((3, 3))})
  out = []
  for r in range(rounds):
    server, table, m = fr.round(
      server, table, *fr.put_cohort(np.arange(4), data, mask), jax.random.key(r)
    )
    out.append(m)
  return server, out


@pytest.mark.parametrize('name', sorted(tasks.TASKS))
def test_every_task_trains_is_deterministic_and_shards_bit_identically(name):
  data, mask = data_for(name)
  fr = task_round(name)
  server, metrics = run(fr, data, mask, 4)
  assert fr.round._cache_size() == 1  # no recompilation after the first round
  assert float(metrics[-1]['train/loss']) < 0.8 * float(metrics[0]['train/loss'])
  assert float(metrics[0]['train/examples']) == 2 * 16  # 2 epochs over 16 real rows
  again = run(task_round(name), data, mask, 4)
  assert tree_equal((server, metrics), again)
  assert tree_equal((server, metrics), run(task_round(name, 8), data, mask, 4))
