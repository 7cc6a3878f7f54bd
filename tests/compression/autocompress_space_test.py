"""A candidate student computes the same function materialised as a real vgg and as
masks over its teacher (no fine-tuning), also vmapped over candidates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedcomp import models
from fedcomp.compression.autocompress import space as sp
from fedcomp.errors import ConfigError

PLAN = (8, 'M', 16, 16, 'M', 24, 24, 'M')
RATIOS = (0.25, 0.5, 1.0)


@pytest.fixture(scope='module')
def teacher():
  model = models.build_model('vgg', {'plan': PLAN}, (16, 16, 3), 10, seed=0)
  rng = np.random.default_rng(0)
  # Running statistics away from (0, 1) but small next to the activations (a large mean
  # shift would zero every ReLU and make every candidate compute 0).
  norms = {
    i: {'mean': rng.normal(0, 0.02, s['mean'].shape), 'var': rng.uniform(0.5, 1.5, s['var'].shape)}
    for i, s in model.state['norms'].items()
  }
  state = jax.tree.map(lambda a: np.asarray(a, np.float32), {'norms': norms})
  space = sp.vgg_space({'plan': PLAN}, model.params, RATIOS)
  x = rng.uniform(0, 1, (4, 16, 16, 3)).astype(np.float32)
  assert np.asarray(model.apply(model.params, state, x)[0]).std() > 1e-2  # a live teacher
  return model, state, space, x


def test_the_space_of_a_vgg():
  model = models.build_model('vgg', {'plan': PLAN}, (16, 16, 3), 10, seed=0)
  space = sp.vgg_space({'plan': PLAN}, model.params, RATIOS)
  np.testing.assert_array_equal(space.channels, [8, 16, 16, 24, 24])
  np.testing.assert_array_equal(space.removable, [False, False, True, False, True])
  assert space.candidate_plan([True, True, False, True, True], [0, 1, 2, 2, 0]) == (
    2, 'M', 8, 'M', 24, 6, 'M',
  )  # fmt: skip
  # Channel order: descending L1 norm of each output channel's kernel.
  norms = np.abs(np.asarray(model.params['convs'][1]['kernel'])).sum((0, 1, 2))
  assert norms[space.order[1][0]] == norms.max()
  assert space.embeddings().shape == (5, 6)


@pytest.mark.parametrize('classes', [None, (2, 5, 7)])
def test_materialised_and_masked_candidates_compute_the_same_function(teacher, classes):
  model, state, space, x = teacher
  rng = np.random.default_rng(1)
  candidates = []
  for _ in range(4):
    keep = rng.random(5) < 0.5
    keep[~space.removable] = True
    candidates.append((keep, rng.integers(0, len(RATIOS), 5)))
  masked = jax.jit(
    jax.vmap(lambda k, r: sp.masked_forward(space, model.params, state, x, k, r, classes))
  )(jnp.asarray(np.stack([c[0] for c in candidates])),
    jnp.asarray(np.stack([c[1] for c in candidates])))  # fmt: skip
  for n, (keep, ratio) in enumerate(candidates):
    plan, params, st = sp.materialize(space, model.params, state, keep, ratio, classes)
    num = 10 if classes is None else len(classes)
    student = models.build_model('vgg', {'plan': plan}, (16, 16, 3), num, seed=0)
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, student.params)
    logits = student.apply(params, st, x)[0]
    np.testing.assert_allclose(np.asarray(masked[n]), np.asarray(logits), atol=1e-5, rtol=1e-5)
  assert np.asarray(masked).std(axis=0).max() > 1e-3  # the candidates differ


def test_the_full_candidate_is_the_teacher(teacher):
  model, state, space, x = teacher
  keep, ratio = jnp.ones(5, bool), jnp.full(5, len(RATIOS) - 1)
  got = sp.masked_forward(space, model.params, state, x, keep, ratio)
  np.testing.assert_allclose(got, model.apply(model.params, state, x)[0], atol=1e-5, rtol=1e-5)


def test_bad_ratios_fail_in_one_line(teacher):
  model = teacher[0]
  with pytest.raises(ConfigError, match=r'ratios=\[0.0, 1.0\] must be in \(0, 1\]'):
    sp.vgg_space({'plan': PLAN}, model.params, (0.0, 1.0))


def test_latency_signatures_by_hand_and_the_table_measures_each_layer_once(tmp_path, monkeypatch):
  from fedcomp.compression.autocompress import latency

  sigs = latency.vgg_signatures((8, 'M', 16, 'M', 16, 'M'), (28, 28, 1), 10)
  assert sigs == [
    ('conv', 28, 28, 1, 8), ('pool', 28, 28, 8), ('conv', 14, 14, 8, 16), ('pool', 14, 14, 16),
    ('conv', 7, 7, 16, 16), ('pool', 7, 7, 16), ('gap', 4, 4, 16), ('head', 16, 10),
  ]  # fmt: skip
  calls = []

  def fake_time(fn, shape, threads, repeats):
    calls.append(tuple(shape))
    return 1.0 + len(calls)  # distinct per measurement

  monkeypatch.setattr(latency, 'time_onnx', fake_time)
  table = latency.LatencyTable(str(tmp_path / 'lat.json'), repeats=5)
  first = table.predict(sigs, (28, 28, 1))
  assert len(calls) == len(set(sigs)) + 1  # every distinct layer and the overhead, once
  # overhead (first measurement: 2.0) + each layer's latency above it.
  assert first == pytest.approx(2.0 + sum(range(1, len(calls))))
  again = latency.LatencyTable(str(tmp_path / 'lat.json')).predict(sigs, (28, 28, 1))
  assert again == first and len(calls) == len(set(sigs)) + 1  # read from the cache
  # Calibration: the least-squares line through (layer sum, measured) by hand, then every
  # prediction is scale * layer sum + offset, also after reloading the cache.
  scale, offset = table.calibrate([1.0, 2.0, 3.0], [2.0, 3.0, 5.0])
  # mean x 2, mean y 10/3; slope = sum((x-2)(y-10/3)) / sum((x-2)^2) = 3/2; offset 1/3.
  assert (scale, offset) == pytest.approx((1.5, 1.0 / 3.0))
  reloaded = latency.LatencyTable(str(tmp_path / 'lat.json'))
  assert reloaded.calibration == pytest.approx((1.5, 1.0 / 3.0))
  assert reloaded.predict(sigs, (28, 28, 1)) == pytest.approx(1.5 * first + 1.0 / 3.0)
  assert latency.LatencyTable(str(tmp_path / 'lat.json'), threads=2).calibration is None
  with pytest.raises(ValueError, match='two models of different latency'):
    table.calibrate([1.0, 1.0], [2.0, 3.0])


def sharp_teacher(teacher, seed):
  """(params with a 30x head, 64 random inputs, their logits): the random teacher's own
  logits are nearly uniform, leaving nothing to distil."""
  model, state, _, _ = teacher
  data = np.random.default_rng(seed).uniform(0, 1, (64, 16, 16, 3)).astype(np.float32)
  tparams = dict(model.params, head=jax.tree.map(lambda a: 30.0 * a, model.params['head']))
  return tparams, data, model.apply(tparams, state, data)[0]


def test_distilled_masked_candidates_learn_alone_and_materialise_to_the_same_function(teacher):
  from fedcomp.compression.autocompress import candidates as cand

  model, state, space, x = teacher
  tparams, data, teacher_logits = sharp_teacher(teacher, 2)
  keep = jnp.asarray([[1, 1, 0, 1, 1], [1, 1, 1, 1, 0]], bool)
  ratio = jnp.asarray([[0, 1, 2, 0, 1], [1, 0, 0, 2, 2]], jnp.int32)
  kw = dict(steps=30, batch_size=16, learning_rate=3e-3, temperature=2.0, key=jax.random.key(0))
  train = jax.jit(lambda k, r: cand.distill_masked(space, tparams, state, k, r, data,
                                                   teacher_logits, **kw))  # fmt: skip
  params, losses = train(keep, ratio)
  losses = np.asarray(losses)
  assert (losses[:, -5:].mean(1) < 0.5 * losses[:, :5].mean(1)).all()  # both learn
  # Candidate 1 trained alone ends where it ended in the batch: candidates do not interact.
  alone, _ = train(keep[1:], ratio[1:])
  for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(params)):
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[1]), atol=1e-6)
  # The trained candidate, materialised, computes what its masked form computes.
  p1 = jax.tree.map(lambda a: a[1], params)
  plan, mp, ms = sp.materialize(space, p1, state, np.asarray(keep[1]), np.asarray(ratio[1]))
  student = models.build_model('vgg', {'plan': plan}, (16, 16, 3), 10, seed=0)
  np.testing.assert_allclose(
    np.asarray(student.apply(mp, ms, x)[0]),
    np.asarray(sp.masked_forward(space, p1, state, x, keep[1], ratio[1])), atol=1e-5, rtol=1e-5,
  )  # fmt: skip
  acc = cand.evaluate_masked(space, params, state, keep, ratio, data,
                             np.asarray(teacher_logits.argmax(-1)), batch_size=32)  # fmt: skip
  assert acc.shape == (2,) and (np.asarray(acc) > 0.3).all()


def test_materialised_scoring_matches_masked_scoring(teacher):
  # Same candidates, loss, budget and minibatches: the two paths reach the same accuracy
  # (float summation order differs, so compare predictions on a clear-cut set).
  from fedcomp.compression.autocompress import candidates as cand

  model, state, space, x = teacher
  tparams, data, logits = sharp_teacher(teacher, 3)
  labels = np.asarray(logits.argmax(-1))
  keep = jnp.asarray([[1, 1, 0, 1, 1], [1, 1, 1, 1, 1]], bool)
  ratio = jnp.asarray([[0, 1, 2, 0, 1], [2, 2, 2, 2, 2]], jnp.int32)
  kw = dict(steps=10, batch_size=16, learning_rate=1e-3, temperature=2.0, key=jax.random.key(1))
  trained, _ = cand.distill_masked(space, tparams, state, keep, ratio, data, logits, **kw)
  masked = np.asarray(cand.evaluate_masked(space, trained, state, keep, ratio, data, labels))
  real = cand.distill_materialized(space, tparams, state, keep, ratio, data, logits, data,
                                   labels, **kw)  # fmt: skip
  np.testing.assert_allclose(real, masked, atol=2 / 64)  # at most two borderline examples


def test_magnitude_masks_keep_the_largest_kernel_weights_and_training_keeps_zeros(teacher):
  from fedcomp.compression.autocompress import candidates as cand

  model, state, space, x = teacher
  masks = cand.magnitude_masks(model.params, 500)
  kernels = [model.params['convs'][i]['kernel'] for i in model.params['convs']]
  kernels.append(model.params['head']['kernel'])
  flat = np.sort(np.concatenate([np.abs(np.asarray(k)).ravel() for k in kernels]))
  kept = [np.asarray(masks['convs'][i]['kernel']) for i in masks['convs']]
  kept.append(np.asarray(masks['head']['kernel']))
  assert sum(int(m.sum()) for m in kept) == 500
  smallest_kept = min(np.abs(np.asarray(k))[m > 0].min() for k, m in zip(kernels, kept) if m.any())
  assert smallest_kept == flat[-500]  # exactly the 500 largest magnitudes
  assert all(np.all(np.asarray(m['bias']) == 1) for m in masks['norms'].values())
  data = np.random.default_rng(4).uniform(0, 1, (32, 16, 16, 3)).astype(np.float32)
  logits = model.apply(model.params, state, data)[0]
  trained = cand.distill_pruned(model.apply, model.params, state, masks, data, logits, steps=5,
                                batch_size=8, learning_rate=1e-2, temperature=2.0,
                                key=jax.random.key(0))  # fmt: skip
  for t, m in zip(jax.tree.leaves(trained), jax.tree.leaves(masks)):
    assert np.all(np.asarray(t)[np.asarray(m) == 0] == 0)
