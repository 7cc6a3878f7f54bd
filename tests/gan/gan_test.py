"""FSL-GAN building blocks: the notebook's DCGAN sizes, placement and the simulated clock,
against the notebook's case and hand computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fedcomp.errors import ConfigError
from fedcomp.gan import clock, losses
from fedcomp.gan.dcgan import Discriminator, Generator, part_sizes
from fedcomp.gan.placement import Device, place, place_users

THRESHOLD = (1664, 204928, 823553)  # the notebook's part sizes


def test_dcgan_sizes_match_the_notebook():
  d = Discriminator((28, 28, 1), nnx.Rngs(0))
  assert part_sizes(d) == THRESHOLD
  g = Generator(100, (28, 28, 1), nnx.Rngs(0))
  # The TensorFlow DCGAN tutorial's generator: 2,305,472 trainable parameters.
  assert sum(v.size for v in jax.tree.leaves(nnx.state(g, nnx.Param))) == 2_305_472
  z = jax.random.normal(jax.random.key(0), (3, 100))
  images = g(z)
  assert images.shape == (3, 28, 28, 1) and float(jnp.abs(images).max()) <= 1.0


def test_the_split_discriminator_computes_the_unsplit_function():
  d = Discriminator((28, 28, 1), nnx.Rngs(1))
  x = jax.random.uniform(jax.random.key(2), (4, 28, 28, 1), minval=-1, maxval=1)
  h = x
  for part in d.parts:  # as three devices would, passing activations on
    h = part(h)
  np.testing.assert_allclose(h[:, 0], d(x), rtol=1e-6)
  # and by hand for part A: conv, LeakyReLU(0.3)
  a = jax.lax.conv_general_dilated(x, d.A.conv.kernel.value, (2, 2), 'SAME',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))  # fmt: skip
  a = a + d.A.conv.bias.value
  np.testing.assert_allclose(d.A(x), np.where(a > 0, a, 0.3 * a), rtol=1e-5, atol=1e-6)


def test_training_passes_by_im2col_compute_the_xla_function():
  """The CPU training path (im2col convs and transposed convs) is the same function, with
  the same gradients, as the layers' own XLA convolutions."""
  x = jax.random.uniform(jax.random.key(2), (3, 28, 28, 1), minval=-1, maxval=1)
  z = jax.random.normal(jax.random.key(3), (3, 100))
  key = jax.random.key(4)
  for make, inputs in (
    (Discriminator, x),
    (lambda s, r, conv_impl: Generator(100, s, r, conv_impl), z),
  ):
    pair = [losses.pure(make((28, 28, 1), nnx.Rngs(0), conv_impl=c)) for c in ('xla', 'im2col')]
    outs, grads = [], []
    for apply, params, state in pair:

      def total(p, apply=apply, state=state, inputs=inputs):
        return apply(p, state, inputs, train=True, key=key)[0].sum()

      outs.append(apply(params, state, inputs, train=True, key=key)[0])
      grads.append(jax.grad(total)(params))
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
      np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)


def test_placement_on_the_notebook_case():
  users = [[Device(823_553, 1.0)] * 3 for _ in range(5)]
  placements = place_users(THRESHOLD, users, 'given')
  assert [p.device_of_part for p in placements] == [(0, 0, 1)] * 5  # A+B on 1, C on 2
  assert all(p.hops() == 1 for p in placements)


def test_a_user_that_cannot_host_every_part_is_dropped():
  # A fits on device 0 (1,664), B does not fit in what is left (198,336): device 1 takes B,
  # then C (823,553) exceeds its remaining 595,072 and there is no third device.
  p = place(THRESHOLD, [Device(200_000, 1.0), Device(800_000, 1.0)])
  assert p.dropped and p.hops() == 0
  users = [[Device(2_000_000, 1.0)], [Device(200_000, 1.0), Device(800_000, 1.0)]]
  placements = place_users(THRESHOLD, users, 'given')
  assert [p.dropped for p in placements] == [False, True]


def test_device_orders():
  devices = [Device(300_000, 2.0), Device(1_100_000, 0.5), Device(900_000, 1.0)]
  assert place(THRESHOLD, devices, 'capacity').device_of_part == (1, 1, 1)
  assert place(THRESHOLD, devices, 'time').order == (1, 2, 0)
  # given order: device 0 takes A and B (206,592 of 300,000), C goes to device 1.
  assert place(THRESHOLD, devices, 'given').device_of_part == (0, 0, 1)
  random = place(THRESHOLD, devices, 'random', np.random.default_rng(0))
  assert sorted(random.order) == [0, 1, 2]
  with pytest.raises(ConfigError, match='unknown; known: given, random, time, capacity'):
    place(THRESHOLD, devices, 'fastest')


def test_the_clock_by_hand():
  devices = [Device(10**6, 2.0), Device(10**6, 3.0)]
  p = place((1, 2, 10**6 - 2), devices)  # A, B on device 0 (1 + 2), C on device 1
  assert p.device_of_part == (0, 0, 1)
  part_ms = (1.0, 4.0, 10.0)
  # 1·2 + 4·2 + 10·3 = 40 ms of compute, one hop of 50 ms.
  assert clock.user_time_ms(p, devices, part_ms) == pytest.approx(90.0)
  fast = [Device(10**6, 1.0)]
  q = place((1, 2, 3), fast)
  assert clock.user_time_ms(q, fast, part_ms, link_ms=20.0) == pytest.approx(15.0)
  # The epoch takes the slowest kept user, times the steps; dropped users do not count.
  dropped = place((10**7,), fast)
  assert clock.epoch_time_ms([p, q, dropped], [devices, fast, fast], part_ms, steps=3) == 270.0


def test_the_generator_gradient_is_the_sum_of_the_users_gradients():
  from fedcomp.gan import losses

  g_apply, gp, gs = losses.pure(Generator(8, (28, 28, 1), nnx.Rngs(0)))
  d_apply, _, _ = losses.pure(Discriminator((28, 28, 1), nnx.Rngs(0)))
  users = [losses.pure(Discriminator((28, 28, 1), nnx.Rngs(u + 1))) for u in range(3)]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *[u[1] for u in users])
  states = jax.tree.map(lambda *a: jnp.stack(a), *[u[2] for u in users])
  z = jax.random.normal(jax.random.key(3), (4, 8))
  key = jax.random.key(4)

  def total(p):
    return losses.generator_loss(g_apply, p, gs, d_apply, stacked, states, z, key)[0]

  def one_by_one(p, u):  # user u alone, with the key the batch gives it
    fakes = g_apply(p, gs, z, train=True)[0]
    k = jax.random.fold_in(key, u)
    logits = d_apply(users[u][1], users[u][2], fakes, train=True, key=k)[0]
    return losses.bce(logits, 1.0).mean()

  grads = jax.grad(total)(gp)
  summed = jax.tree.map(lambda *g: sum(g), *[jax.grad(one_by_one)(gp, u) for u in range(3)])
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(summed)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
  # The discriminator loss by hand: BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x).
  real = jax.random.uniform(jax.random.key(5), (3, 28, 28, 1))
  mask = jnp.array([True, True, False])
  fakes = g_apply(gp, gs, z)[0]
  p0, s0 = users[0][1], users[0][2]
  loss = losses.discriminator_loss(d_apply, p0, s0, real, mask, fakes, key)
  kr, kf = jax.random.split(key)
  r = d_apply(p0, s0, real, train=True, key=kr)[0]
  f = d_apply(p0, s0, fakes, train=True, key=kf)[0]
  want = jax.nn.softplus(-r[:2]).mean() + jax.nn.softplus(f).mean()
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_frechet_distance_and_class_coverage_by_hand():
  from fedcomp.gan.quality import class_coverage, frechet_distance

  rng = np.random.default_rng(0)
  a = rng.normal(size=(20000, 3)) * np.array([1.0, 2.0, 0.5])
  b = rng.normal(size=(20000, 3)) * np.array([2.0, 2.0, 0.5]) + np.array([1.0, 0.0, 0.0])
  # Diagonal covariances: ‖Δμ‖² + Σ (σa + σb − 2√(σa σb)) with variances σ: 1 + (1 + 4 − 4) = 2.
  assert frechet_distance(a, b) == pytest.approx(2.0, abs=0.1)
  assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
  acc = np.array([1.0, 1.0, 0.5, 0.5])
  assert class_coverage(np.array([0, 1, 2, 3]), 4, acc) == pytest.approx(1.0)
  # All in class 0: a_0 · 1/4 / (3/4) = 1/3; half in 0 and half in 2: (1/4 + .5/4) / .75 = 0.5.
  assert class_coverage(np.zeros(8, int), 4, acc) == pytest.approx(1 / 3)
  assert class_coverage(np.array([0, 0, 2, 2]), 4, acc) == pytest.approx(0.5)
