"""The client-map primitive: layout, canonical reduction, reducers, per-step server gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fl_testing import mesh, tree_equal

from fedcomp.core import ClientMap, ClientOutput, cohort_layout, reducers
from fedcomp.errors import ConfigError

STRATEGIES = [('vmap', None), ('map', None), ('map', 2), ('loop', None)]


def test_layout_by_hand():
  # 5 clients on 8 leaves of 1 slot: the leaves 0, 4, 2, 6, 1 (bit-reversed order) get one.
  layout = cohort_layout(5, 8)
  assert (layout.size, layout.per_leaf) == (8, 1)
  np.testing.assert_array_equal(layout.slots, [0, 1, 2, 4, 6])
  # 50 clients: 6 per leaf, leaves 0 and 4 get a 7th; each leaf fills from its first slot.
  layout = cohort_layout(50, 8)
  assert (layout.size, layout.per_leaf) == (56, 7)
  counts = np.bincount(layout.slots // 7, minlength=8)
  np.testing.assert_array_equal(counts, [7, 6, 6, 6, 7, 6, 6, 6])
  np.testing.assert_array_equal(layout.slots[:8], [0, 1, 2, 3, 4, 5, 6, 7])  # leaf 1 from 7
  # Every aligned block of leaves (what 2 and 4 devices hold) gets an equal share (+-1).
  for devices in (2, 4):
    per_device = counts.reshape(devices, -1).sum(1)
    assert per_device.max() - per_device.min() <= 1


def canonical_sum(values, valid, width=8):
  """The documented order, in numpy float32: fold each leaf from +0.0, then a pairwise tree."""
  leaves = np.where(valid[:, None], values, 0).reshape(width, -1, values.shape[-1])
  acc = np.zeros((width, values.shape[-1]), np.float32)
  for i in range(leaves.shape[1]):
    acc = acc + leaves[:, i]
  while len(acc) > 1:
    acc = acc[0::2] + acc[1::2]
  return acc[0]


def client_values(k, seed=0):
  """Values spanning magnitudes, so the order of additions shows in the result."""
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(k, 64)) * 10.0 ** rng.integers(-4, 5, (k, 1))).astype(np.float32)


@pytest.mark.parametrize(('strategy', 'chunk'), STRATEGIES)
@pytest.mark.parametrize('devices', [1, 2, 8])
def test_sum_is_the_canonical_order_on_any_device_count(strategy, chunk, devices):
  k = 11
  values = client_values(k)
  cm = ClientMap(mesh(devices), strategy, chunk)
  placed, valid = cm.place(values), cm.valid(k)

  @jax.jit
  def summed(v, ok):
    return cm(lambda shared, c: (c, ()), 0.0, v, ok, reducers.total())[0]

  got = np.asarray(summed(placed, valid))
  want = canonical_sum(np.asarray(placed), np.asarray(valid))
  np.testing.assert_array_equal(got, want)
  # The canonical order is not numpy's own sum order (the test would not notice a change).
  assert not np.array_equal(got, values.sum(0))


@pytest.mark.parametrize(('strategy', 'chunk'), STRATEGIES)
def test_weighted_mean_of_computed_updates_is_bit_identical_on_1_2_4_8_devices(strategy, chunk):
  k = 13
  x = client_values(k, seed=1)
  n = np.arange(1, k + 1, dtype=np.int32)

  def fn(shared, client):
    xi, ni = client
    update = jnp.tanh(shared * xi) * 0.1 + shared  # computed per client
    return ClientOutput(update, ni.astype(jnp.float32), ()), {'n': ni}

  results = []
  for devices in (1, 2, 4, 8):
    cm = ClientMap(mesh(devices), strategy, chunk)
    run = jax.jit(lambda s, c, v, cm=cm: cm(fn, s, c, v, reducers.weighted_mean()))
    mean, outs = run(jnp.float32(0.3), cm.place((x, n)), cm.valid(k))
    results.append(np.asarray(mean))
    # Per-client outputs come back in their slots.
    np.testing.assert_array_equal(np.asarray(outs['n'])[cm.layout(k).slots], n)
  assert all(np.array_equal(results[0], r) for r in results[1:])
  want = (np.tanh(0.3 * x) * 0.1 + 0.3) * n[:, None]
  np.testing.assert_allclose(results[0], want.sum(0) / n.sum(), rtol=1e-5)


@pytest.mark.parametrize(('strategy', 'k'), [('vmap', 9), ('loop', 9), ('map', 3)])
def test_padded_slots_change_nothing(strategy, k):
  """A spare slot's data never reaches the result, whatever it holds (vmap and loop run
  spare slots)."""
  values = client_values(k, seed=2)
  cm = ClientMap(mesh(1), strategy)
  placed = np.asarray(cm.place(values))
  valid = np.asarray(cm.valid(k))
  dirty = placed.copy()
  dirty[~valid] = 1e30
  run = jax.jit(lambda v, ok: cm(lambda s, c: (c, ()), 0.0, v, ok, reducers.total())[0])
  np.testing.assert_array_equal(run(placed, valid), run(dirty, valid))


def test_server_gradient_is_the_sum_of_per_client_gradients():
  """FSL-GAN's generator step: in one jitted step, every client's discriminator feedback on
  the server's fake samples, as gradients of the server-held generator, summed."""
  rng = np.random.default_rng(3)
  generator = {'w': jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)}
  z = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  k = 5
  discriminators = jnp.asarray(rng.normal(size=(k, 6)), jnp.float32)  # one per client

  def client_loss(gen, disc):
    fake = jnp.tanh(z @ gen['w'])
    return -jax.nn.log_sigmoid(fake @ disc).mean()  # the generator's non-saturating loss

  def feedback(gen, disc):
    return jax.grad(client_loss)(gen, disc), ()

  one_by_one = [jax.grad(client_loss)(generator, discriminators[i]) for i in range(k)]
  want = jax.tree.map(lambda *g: sum(np.asarray(x, np.float64) for x in g), *one_by_one)
  for devices in (1, 4):
    cm = ClientMap(mesh(devices), 'vmap')

    @jax.jit
    def generator_step(gen, discs, valid, cm=cm):
      grads, _ = cm(feedback, gen, discs, valid, reducers.total())
      return jax.tree.map(lambda p, g: p - 0.1 * g, gen, grads), grads

    new, grads = generator_step(generator, cm.place(discriminators), cm.valid(k))
    np.testing.assert_allclose(grads['w'], want['w'], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new['w'], generator['w'] - 0.1 * want['w'], rtol=1e-5, atol=1e-6)


def run_reducer(reducer, updates, weights, groups=None, devices=2):
  k = len(weights)
  groups = np.zeros(k, np.int32) if groups is None else groups
  cm = ClientMap(mesh(devices), 'vmap')

  def fn(shared, client):
    u, w, g = client
    return ClientOutput(u, w, (), g), ()

  run = jax.jit(lambda c, v: cm(fn, 0.0, c, v, reducer)[0])
  return run(cm.place((updates, weights, groups)), cm.valid(k))


UPDATES = np.array([[1.0, -2.0], [3.0, 0.0], [-1.0, 8.0], [5.0, 4.0], [0.5, 0.5]], np.float32)
WEIGHTS = np.array([1.0, 2.0, 3.0, 0.0, 4.0], np.float32)


def test_weighted_mean_by_hand():
  got = run_reducer(reducers.weighted_mean(), UPDATES, WEIGHTS)
  # (1·[1,-2] + 2·[3,0] + 3·[-1,8] + 0 + 4·[.5,.5]) / 10 = [6, 24] / 10
  np.testing.assert_allclose(got, [0.6, 2.4], rtol=1e-6)


def test_grouped_mean_by_hand():
  groups = np.array([0, 1, 0, 1, 1], np.int32)
  got = run_reducer(reducers.grouped_mean(2, (1.0, 3.0)), UPDATES, WEIGHTS, groups)
  g0 = (1 * UPDATES[0] + 3 * UPDATES[2]) / 4  # [-0.5, 5.5]
  g1 = (2 * UPDATES[1] + 4 * UPDATES[4]) / 6  # [4/3, 1/3]
  np.testing.assert_allclose(got, 0.25 * g0 + 0.75 * g1, rtol=1e-6)
  # A group without clients is left out and the others renormalised.
  only0 = run_reducer(reducers.grouped_mean(2, (1.0, 3.0)), UPDATES, WEIGHTS, np.zeros(5, np.int32))
  np.testing.assert_allclose(only0, (UPDATES * WEIGHTS[:, None]).sum(0) / 10, rtol=1e-6)


def test_coordinate_median_and_trimmed_mean_by_hand():
  ones = np.ones(5, np.float32)
  median = run_reducer(reducers.coordinate_median(), UPDATES, ones)
  np.testing.assert_array_equal(median, [1.0, 0.5])  # sorted columns: [-1,.5,1,3,5], [-2,0,.5,4,8]
  even = run_reducer(reducers.coordinate_median(), UPDATES[:4], ones[:4])
  np.testing.assert_array_equal(even, [2.0, 2.0])  # [-1,1,3,5] -> 2; [-2,0,4,8] -> 2
  trimmed = run_reducer(reducers.trimmed_mean(0.2), UPDATES, ones)  # drop 1 at each end
  np.testing.assert_allclose(trimmed, [(0.5 + 1 + 3) / 3, (0 + 0.5 + 4) / 3], rtol=1e-6)
  # A client of weight 0 is left out: without row 3 the columns are [-1,.5,1,3], [-2,0,.5,8].
  np.testing.assert_array_equal(
    run_reducer(reducers.coordinate_median(), UPDATES, WEIGHTS), [0.75, 0.25]
  )
  # One corrupted client moves the mean arbitrarily far. Here it replaces [5, 4]: the
  # median does not move; the trimmed mean of column 1 becomes (0 + 0.5 + 8) / 3.
  bad = UPDATES.copy()
  bad[3] = 1e6
  np.testing.assert_array_equal(run_reducer(reducers.coordinate_median(), bad, ones), median)
  np.testing.assert_allclose(
    run_reducer(reducers.trimmed_mean(0.2), bad, ones), [trimmed[0], 8.5 / 3], rtol=1e-6
  )
  assert run_reducer(reducers.weighted_mean(), bad, ones)[0] > 1e5


def test_stacked_gives_every_client_in_slot_order():
  values, valid = run_reducer(reducers.stacked(), UPDATES, WEIGHTS)
  layout = cohort_layout(5, 8)
  np.testing.assert_array_equal(np.asarray(values.update)[layout.slots], UPDATES)
  np.testing.assert_array_equal(np.asarray(values.weight)[layout.slots], WEIGHTS)
  assert int(np.asarray(valid).sum()) == 5


def test_bad_options():
  with pytest.raises(ConfigError, match=r"strategy='pmap' is unknown; known: vmap, map, loop"):
    ClientMap(mesh(1), 'pmap')
  with pytest.raises(ConfigError, match='reduction_width=6 must be a power of two'):
    ClientMap(mesh(1), reduction_width=6)
  with pytest.raises(ConfigError, match='3 devices: the canonical reduction needs a power-of-two'):
    ClientMap(mesh(3))
  assert ClientMap(mesh(8), reduction_width=4).width == 8  # at least one leaf per device
  with pytest.raises(ConfigError, match=r'trimmed_mean|beta'):
    reducers.trimmed_mean(0.5)


def test_no_recompilation_across_cohorts():
  cm = ClientMap(mesh(2), 'map')
  run = jax.jit(lambda v, ok: cm(lambda s, c: (c, ()), 0.0, v, ok, reducers.total())[0])
  for seed in range(3):
    run(cm.place(client_values(7, seed)), cm.valid(7))
  assert run._cache_size() == 1
  assert tree_equal(
    run(cm.place(client_values(7, 0)), cm.valid(7)), run(cm.place(client_values(7, 0)), cm.valid(7))
  )
