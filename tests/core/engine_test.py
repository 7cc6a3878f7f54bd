"""Round engine: hand-computed FedAvg, masks, padding, sharding, recompilation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fl_testing import linear_apply, random_clients, run_rounds

from fedcomp.algorithms import ALGORITHMS
from fedcomp.core import ClientOutput, FederatedAlgorithm, RoundEngine, local_batches
from fedcomp.core.losses import classification_loss


def make_engine(
  num_devices=1, *, server_lr=1.0, pad_to=2, batch_size=2, epochs=1, alg=None, **engine_kwargs
):
  alg = alg or ALGORITHMS['fed_avg'](
    loss_fn=classification_loss(linear_apply),
    client_tx=optax.sgd(1.0),
    server_tx=optax.sgd(server_lr),
  )
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:num_devices]), ('clients',))
  return RoundEngine(
    alg,
    num_clients=4,
    local_epochs=epochs,
    batch_size=batch_size,
    pad_to=pad_to,
    mesh=mesh,
    **engine_kwargs,
  )


# Client 0: x=[1,0], y=0.  Client 1: x=[0,1], y=1 and x=[1,1], y=0.
X = np.array([[[1, 0], [0, 0]], [[0, 1], [1, 1]]], np.float32)
Y = np.array([[0, 0], [1, 0]], np.int32)
MASK = np.array([[True, False], [True, True]])


def test_two_client_round_matches_hand_computation():
  # From w = 0 all logits are 0 and softmax = [.5, .5]; one full-batch SGD step
  # with lr 1 gives w0 = [[.5, -.5], [0, 0]] and w1 = [[.25, -.25], [0, 0]].
  # The example-weighted mean (1:2) is [[1/3, -1/3], [0, 0]]; server SGD with
  # lr 0.5 moves halfway there.
  for server_lr, scale in ((1.0, 1.0), (0.5, 0.5)):
    eng = make_engine(server_lr=server_lr)
    server, table = eng.init({'w': jnp.zeros((2, 2))})
    server, table, m = eng.round(
      server, table, *eng.put_cohort(np.array([0, 1]), X, Y, MASK), jax.random.key(0)
    )
    want = scale * np.array([[1 / 3, -1 / 3], [0, 0]])
    np.testing.assert_allclose(server.params['w'], want, atol=1e-6)
    assert float(m['train/loss']) == pytest.approx(np.log(2), abs=1e-6)
    assert float(m['train/examples']) == 3.0


def test_padding_changes_nothing():
  sizes = [5, 3, 6]
  x, y, mask = random_clients(3, 6, sizes)
  ids = np.array([0, 1, 2])
  ref, _, m_ref = run_rounds(make_engine(pad_to=6, batch_size=2, epochs=2), x, y, mask, ids)
  # More padded examples (hence padded steps) per client...
  x2, y2, mask2 = (np.pad(a, [(0, 0), (0, 4)] + [(0, 0)] * (a.ndim - 2)) for a in (x, y, mask))
  padded, _, m_pad = run_rounds(make_engine(pad_to=10, batch_size=2, epochs=2), x2, y2, mask2, ids)
  np.testing.assert_array_equal(ref.params['w'], padded.params['w'])
  # ...and an extra all-masked client in the cohort.
  x3, y3, mask3 = (np.concatenate([a, np.zeros_like(a[:1])]) for a in (x, y, mask))
  more, _, m_more = run_rounds(
    make_engine(pad_to=6, batch_size=2, epochs=2), x3, y3, mask3, np.array([0, 1, 2, 3])
  )
  np.testing.assert_allclose(ref.params['w'], more.params['w'], rtol=1e-6, atol=1e-7)
  for m in (m_pad, m_more):
    assert float(m['train/examples']) == float(m_ref['train/examples']) == 2 * sum(sizes)


@pytest.mark.parametrize('num_devices', [2, 8])
def test_sharded_equals_unsharded(num_devices):
  sizes = [5, 3, 6, 1, 4]
  x, y, mask = random_clients(5, 6, sizes, seed=1)
  ids = np.array([0, 1, 2, 3, 0])  # also pads the cohort to the device multiple
  ids[-1] = 3
  one, _, m1 = run_rounds(make_engine(1, pad_to=6), x, y, mask, ids, rounds=3)
  many, _, mn = run_rounds(make_engine(num_devices, pad_to=6), x, y, mask, ids, rounds=3)
  np.testing.assert_allclose(one.params['w'], many.params['w'], rtol=1e-5, atol=1e-6)
  assert float(m1['train/loss']) == pytest.approx(float(mn['train/loss']), rel=1e-5)


def test_second_round_does_not_recompile():
  x, y, mask = random_clients(3, 6, [6, 2, 4])
  eng = make_engine(2, pad_to=6)
  run_rounds(eng, x, y, mask, np.array([0, 1, 2]), rounds=3)
  assert eng.round._cache_size() == 1


@pytest.mark.parametrize(
  'strategy',
  [
    {'strategy': 'vmap'},
    {'strategy': 'map', 'chunk_size': 2},
    {'strategy': 'loop'},
    {'strategy': 'map', 'chunk_size': 2, 'dynamic_steps': True},
  ],
)
def test_client_table_rows_follow_their_clients(strategy):
  """A counting algorithm: each client's row counts its participations."""
  base = ALGORITHMS['fed_avg'](
    loss_fn=classification_loss(linear_apply), client_tx=optax.sgd(0.1), server_tx=optax.sgd(1.0)
  )

  def client_final(server, local, row, n):
    out = base.client_final(server, local, row, n)
    return ClientOutput(out.update, out.weight, {'visits': row['visits'] + 1})

  alg = FederatedAlgorithm(
    **{
      **base._asdict(),
      'client_state_init': lambda p: {'visits': jnp.zeros((), jnp.int32)},
      'client_final': client_final,
    }
  )
  eng = make_engine(1, pad_to=6, alg=alg, **strategy)
  x, y, mask = random_clients(3, 6, [6, 2, 4])
  server, table = eng.init({'w': jnp.zeros((5, 3))})
  for ids in ([0, 2, 3], [2, 3, 1], [3, 0, 2]):
    server, table, _ = eng.round(
      server, table, *eng.put_cohort(np.array(ids), x, y, mask), jax.random.key(0)
    )
  np.testing.assert_array_equal(table['visits'], [2, 1, 3, 3])


def test_local_batches_visit_each_example_once_per_epoch():
  mask = jnp.arange(7) < 5
  idx, valid = local_batches(jax.random.key(1), mask, epochs=3, batch_size=2)
  assert idx.shape == (12, 2)  # 3 epochs x ceil(7 / 2) steps
  per_epoch = np.asarray(idx).reshape(3, -1)
  ok = np.asarray(valid).reshape(3, -1)
  for e in range(3):
    assert sorted(per_epoch[e][ok[e]]) == [0, 1, 2, 3, 4]
  assert not np.array_equal(per_epoch[0][ok[0]], per_epoch[1][ok[1]])


@pytest.mark.parametrize(
  ('strategy', 'chunk', 'unroll'),
  [('map', None, 1), ('map', 2, 1), ('loop', None, 0), ('vmap', None, 0), ('map', 2, -1)],
)
def test_every_strategy_gives_the_vmap_result(strategy, chunk, unroll):
  """unroll=-1 here means dynamic_steps (a while_loop over each client's own steps)."""
  x, y, mask = random_clients(5, 6, [5, 3, 6, 1, 4], seed=2)
  ids = np.array([0, 1, 2, 3, 1])

  def run(**kw):
    alg = ALGORITHMS['fed_avg'](
      loss_fn=classification_loss(linear_apply), client_tx=optax.sgd(0.5), server_tx=optax.sgd(1.0)
    )
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ('clients',))
    eng = RoundEngine(alg, num_clients=4, local_epochs=2, batch_size=2, pad_to=6, mesh=mesh, **kw)
    return run_rounds(eng, x, y, mask, ids, rounds=2)

  ref, _, m_ref = run(strategy='vmap')
  kw = {'dynamic_steps': True} if unroll < 0 else {'unroll': unroll}
  got, _, m_got = run(strategy=strategy, chunk_size=chunk, **kw)
  np.testing.assert_allclose(got.params['w'], ref.params['w'], rtol=1e-5, atol=1e-6)
  assert float(m_got['train/loss']) == pytest.approx(float(m_ref['train/loss']), rel=1e-5)
