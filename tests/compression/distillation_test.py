"""KD loss, class subsets, synthesis (the dream and DeepInversion steps) against hand
computations and fixed teachers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedcomp.compression.distillation import deepinversion, dream, kd, subset, synthesis
from fedcomp.compression.distillation import metadata as md
from fedcomp.errors import ConfigError
from fedcomp.models import build_model


def _log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize('temperature,alpha', [(1.0, 0.0), (4.0, 0.0), (3.0, 0.25), (2.0, 1.0)])
def test_kd_loss_by_hand(temperature, alpha):
  student = np.array([[2.0, -1.0, 0.5], [0.0, 0.3, 1.2]], np.float32)
  teacher = np.array([[1.0, 3.0, 0.0], [0.5, 0.5, -2.0]], np.float32)
  y = np.array([1, 2])
  got = kd.distillation_loss(student, teacher, y, temperature, alpha)
  # Hand: KL(p_t || p_s) of the softened distributions, times T^2, mixed with CE at T = 1.
  pt = np.exp(_log_softmax(teacher / temperature))
  ps = np.exp(_log_softmax(student / temperature))
  kl = (pt * np.log(pt / ps)).sum(-1)
  ce = -_log_softmax(student)[np.arange(2), y]
  want = (1 - alpha) * temperature**2 * kl + alpha * ce
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_kd_gradient_is_t2_scaled_soft_target_difference():
  # d/ds of T^2 KL(softmax(t/T) || softmax(s/T)) = T (softmax(s/T) - softmax(t/T)).
  s = jnp.array([0.3, -1.0, 2.0])
  t = jnp.array([1.0, 0.0, -1.0])
  temperature = 5.0
  g = jax.grad(lambda s: kd.kd_loss(s, t, temperature))(s)
  want = temperature * (jax.nn.softmax(s / temperature) - jax.nn.softmax(t / temperature))
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)


def test_class_subset_restriction_by_hand():
  logits = np.arange(12, dtype=np.float32).reshape(2, 6)
  got = subset.restrict_logits(logits, (4, 1))
  np.testing.assert_array_equal(got, [[4.0, 1.0], [10.0, 7.0]])
  arrays = {'x': np.arange(6) * 10, 'y': np.array([0, 4, 1, 4, 2, 1])}
  sel = subset.select(arrays, (4, 1))
  np.testing.assert_array_equal(sel['x'], [10, 20, 30, 50])
  np.testing.assert_array_equal(sel['y'], [0, 1, 0, 1])  # 4 -> 0, 1 -> 1


@pytest.mark.parametrize(
  'classes, match',
  [((), 'is empty'), ((1, 1), 'repeats'), ((3, 10), r'\[10\] are outside'), ((1.5,), 'integers')],
)
def test_bad_class_subsets_fail_in_one_line(classes, match):
  with pytest.raises(ConfigError, match=match):
    subset.check_classes(classes, 10, 'deployment.classes')


def test_image_prior_by_hand():
  x = np.zeros((1, 2, 3, 1), np.float32)
  x[0, 0, 0, 0] = 1.0
  # Vertical neighbour pairs: 3, one differs by 1 -> 1/3; horizontal: 4, one differs -> 1/4.
  got = synthesis.image_prior(jnp.asarray(x), tv_weight=2.0, l2_weight=3.0)
  np.testing.assert_allclose(got, [2.0 * (1 / 3 + 1 / 4) + 3.0 / 6], rtol=1e-6)


STATS = synthesis.InputStats(
  np.zeros(1, np.float32), np.ones(1, np.float32), np.full(1, 0.3, np.float32),
  np.full(1, 0.3, np.float32),
)  # fmt: skip


@pytest.fixture(scope='module')
def teacher():
  return build_model('resnet', {'depth': 8, 'width': 0.25}, (8, 8, 1), 4, seed=0)


def test_dream_steps_lower_the_matching_loss_and_leave_the_teacher_alone(teacher):
  x_real = jax.random.uniform(jax.random.key(1), (6, 8, 8, 1))
  targets = dream.layer_activations(teacher, teacher.params, teacher.state, x_real, 'penultimate')
  labels = jnp.arange(6) % 4
  loss_fn = dream.dream_loss(teacher, teacher.params, teacher.state, 'penultimate')
  before = jax.tree.map(np.array, (teacher.params, teacher.state))
  x0 = synthesis.noise_inputs(jax.random.key(2), 6, (8, 8, 1), STATS)
  opts = synthesis.SynthesisOptions(steps=30, learning_rate=0.05, tv_weight=0.0, jitter=0)
  x, metrics = jax.jit(
    lambda x0: synthesis.optimise_inputs(
      loss_fn, x0, (targets, labels), jax.random.key(3), opts, STATS
    )  # fmt: skip
  )(x0)
  first = float(loss_fn(x0, (targets, labels))[0])
  last = float(loss_fn(x, (targets, labels))[0])
  assert last < 0.5 * first, (first, last)
  assert float(metrics['match_first']) == pytest.approx(first, rel=1e-5)
  assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0  # clipped to the data's range
  after = jax.tree.map(np.array, (teacher.params, teacher.state))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))


def test_dream_loss_is_the_relative_squared_error_by_hand(teacher):
  x = jax.random.uniform(jax.random.key(4), (3, 8, 8, 1))
  a = np.asarray(dream.layer_activations(teacher, teacher.params, teacher.state, x, 'penultimate'))
  t = a + np.random.default_rng(0).normal(size=a.shape).astype(np.float32)
  loss_fn = dream.dream_loss(teacher, teacher.params, teacher.state, 'penultimate')
  got = float(loss_fn(x, (jnp.asarray(t), jnp.zeros(3, jnp.int32)))[0])
  want = np.mean(((a - t) ** 2).sum(-1) / (t**2).sum(-1))
  assert got == pytest.approx(want, rel=1e-4)


def test_deepinversion_steps_lower_the_bn_statistics_loss(teacher):
  loss_fn = deepinversion.deepinversion_loss(teacher, teacher.params, teacher.state, 1.0)
  labels = jnp.arange(8) % 4
  x0 = synthesis.noise_inputs(jax.random.key(5), 8, (8, 8, 1), STATS)
  opts = synthesis.SynthesisOptions(steps=40, learning_rate=0.05, tv_weight=0.0, jitter=0)
  x, _ = jax.jit(
    lambda x0: synthesis.optimise_inputs(loss_fn, x0, labels, jax.random.key(6), opts, STATS)
  )(x0)
  assert float(loss_fn(x, labels)[1]['bn']) < 0.8 * float(loss_fn(x0, labels)[1]['bn'])


def test_bn_statistics_loss_by_hand():
  taps = (
    {'mean': jnp.array([1.0, 2.0]), 'var': jnp.array([1.0, 1.0]),
     'running_mean': jnp.array([1.0, 0.0]), 'running_var': jnp.array([4.0, 5.0])},
  )  # fmt: skip
  # ||(0, 2)|| + ||(-3, -4)|| = 2 + 5
  assert float(deepinversion.bn_statistics_loss(taps)) == pytest.approx(7.0)


def test_deepinversion_needs_a_batchnorm_teacher():
  cnn = build_model('cnn', {'features': (4,), 'dense': 8}, (8, 8, 1), 4, seed=0)
  with pytest.raises(ConfigError, match='needs a teacher with BatchNorm'):
    deepinversion.check_teacher(cnn, (8, 8, 1))


def test_dream_targets_follow_the_metadata():
  d = 3
  meta = md.Metadata(
    centroids=jnp.array([[[1.0, 0, 0], [9, 9, 9]], [[0, 5.0, 0], [0, 6, 0]]]),
    counts=jnp.array([[4.0, 0.0], [1.0, 3.0]]),
    components=jnp.array([[[1.0, 0, 0]], [[0, 0, 1.0]]]),
    variances=jnp.array([[4.0], [0.0]]),
    total=jnp.array([4.0, 4.0]),
  )
  labels = jnp.array([0] * 2000 + [1] * 2000)
  t = np.asarray(md.targets_for_labels(meta, jax.random.key(0), labels, spread=1.0))
  c0, c1 = t[:2000], t[2000:]
  # class 0: only cluster 0 (count 4 vs 0), spread along axis 0 with std 2.
  np.testing.assert_allclose(c0[:, 1:], 0.0, atol=1e-6)
  assert abs(c0[:, 0].mean() - 1.0) < 0.15 and abs(c0[:, 0].std() - 2.0) < 0.15
  # class 1: no spread; cluster 1 three times as often as cluster 0.
  assert set(np.round(c1[:, 1]).tolist()) == {5.0, 6.0} and c1.shape[1] == d
  assert abs((c1[:, 1] > 5.5).mean() - 0.75) < 0.04
