"""The federated round: hand-computed FedAvg, masks, padding, table rows, strategies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fl_testing import (
  context,
  dropout_apply,
  linear_params,
  random_clients,
  round_for,
  run_rounds,
  tree_equal,
)

from fedcomp.algorithms import ALGORITHMS
from fedcomp.core import ClientOutput, FederatedAlgorithm, local_batches
from fedcomp.core.local_steps import step_keys

# Client 0: x=[1,0], y=0.  Client 1: x=[0,1], y=1 and x=[1,1], y=0.
DATA = {
  'x': np.array([[[1, 0], [0, 0]], [[0, 1], [1, 1]]], np.float32),
  'y': np.array([[0, 0], [1, 0]], np.int32),
}
MASK = np.array([[True, False], [True, True]])


def fed_avg(**kw):
  return ALGORITHMS['fed_avg'](context(2, client_lr=1.0, **kw))


def test_two_client_round_matches_hand_computation():
  # From w = 0 all logits are 0 and softmax = [.5, .5, 0]... here 3 classes: softmax = 1/3.
  # Client 0, one full-batch SGD step with lr 1: w0 = [[2/3, -1/3, -1/3], [0, 0, 0]].
  # Client 1 (mean over its 2 examples): w1 = [[1/3, -1/6, -1/6], [1/6, 1/6, -1/3]].
  # The example-weighted mean (1:2) is [[4/9, -2/9, -2/9], [1/9, 1/9, -2/9]]; server SGD
  # with lr 0.5 moves halfway there.
  want = np.array([[4 / 9, -2 / 9, -2 / 9], [1 / 9, 1 / 9, -2 / 9]])
  for server_lr, scale in ((1.0, 1.0), (0.5, 0.5)):
    fr = round_for(fed_avg(server_lr=server_lr), pad_to=2)
    server, _, m = run_rounds(fr, DATA, MASK, [0, 1], rounds=1, params=linear_params(2, 0.0))
    np.testing.assert_allclose(server.params['w'], scale * want, atol=1e-6)
    assert float(m['train/loss']) == pytest.approx(np.log(3), abs=1e-6)
    assert float(m['train/accuracy']) == pytest.approx(2 / 3)  # argmax of ties is class 0
    assert float(m['train/examples']) == 3.0
    assert bool(m['finite'])


def test_padding_changes_nothing_also_for_a_stochastic_model():
  """More padded rows (so more padded steps), more epochs and dropout: the same result."""
  sizes = [5, 3, 6]
  data, mask = random_clients(3, 6, sizes)
  ids = np.array([0, 1, 2])
  alg = ALGORITHMS['fed_avg'](context(apply=dropout_apply))
  kw = dict(batch_size=2, epochs=3)
  ref, _, m_ref = run_rounds(round_for(alg, pad_to=6, **kw), data, mask, ids)
  wide = {k: np.pad(v, [(0, 0), (0, 4)] + [(0, 0)] * (v.ndim - 2)) for k, v in data.items()}
  padded, _, m_pad = run_rounds(
    round_for(alg, pad_to=10, **kw), wide, np.pad(mask, [(0, 0), (0, 4)]), ids
  )
  assert tree_equal(ref.params, padded.params)
  assert float(m_pad['train/loss']) == float(m_ref['train/loss'])
  # Dropout really is on: another round key gives another model.
  other = run_rounds(round_for(alg, pad_to=6, **kw), data, mask, ids, seed=7)[0]
  assert not tree_equal(ref.params, other.params)


def test_step_keys_do_not_depend_on_the_padded_length():
  key = jax.random.key(3)
  short, long = step_keys(key, 2, 3), step_keys(key, 2, 5)
  for e in range(2):
    for j in range(3):
      assert (
        jax.random.key_data(short[e * 3 + j]).tolist()
        == jax.random.key_data(long[e * 5 + j]).tolist()
      )


@pytest.mark.parametrize('devices', [2, 8])
def test_sharded_is_bit_identical_to_unsharded(devices):
  data, mask = random_clients(5, 6, [5, 3, 6, 1, 4], seed=1)
  ids = np.array([0, 1, 2, 3, 4])
  alg = ALGORITHMS['fed_avg'](context())
  one, t1, m1 = run_rounds(round_for(alg, 1, num_clients=5), data, mask, ids, rounds=3)
  many, tn, mn = run_rounds(round_for(alg, devices, num_clients=5), data, mask, ids, rounds=3)
  assert tree_equal(one, many) and tree_equal(m1, mn)


def test_second_round_does_not_recompile():
  data, mask = random_clients(3, 6, [6, 2, 4])
  fr = round_for(ALGORITHMS['fed_avg'](context()), 2)
  run_rounds(fr, data, mask, np.array([0, 1, 2]), rounds=3)
  assert fr.round._cache_size() == 1


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
  base = ALGORITHMS['fed_avg'](context(client_lr=0.1))

  def client_final(server, local, row, n):
    out = base.client_final(server, local, row, n)
    return ClientOutput(out.update, out.weight, {'visits': row['visits'] + 1})

  alg = base._replace(
    client_state_init=lambda p, s: {'visits': jnp.zeros((), jnp.int32)}, client_final=client_final
  )
  assert isinstance(alg, FederatedAlgorithm)
  fr = round_for(alg, pad_to=6, **strategy)
  data, mask = random_clients(3, 6, [6, 2, 4])
  server, table = fr.init(linear_params(5, 0.0))
  for ids in ([0, 2, 3], [2, 3, 1], [3, 0, 2]):
    server, table, _ = fr.round(
      server, table, *fr.put_cohort(np.array(ids), data, mask), jax.random.key(0)
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
  'kw',
  [
    {'strategy': 'map'},
    {'strategy': 'map', 'chunk_size': 2},
    {'strategy': 'loop', 'unroll': 0},
    {'strategy': 'vmap', 'unroll': 0},
    {'strategy': 'map', 'chunk_size': 2, 'dynamic_steps': True},
  ],
)
def test_every_strategy_gives_the_vmap_result(kw):
  """19 ragged clients: leaves of 3 slots (vmapped 3 at a time, or in chunks of 2 + 1)."""
  sizes = [5, 3, 6, 1, 4, 2, 6, 6, 5, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4]
  data, mask = random_clients(19, 6, sizes, seed=2)
  ids = np.arange(19)
  alg = ALGORITHMS['fed_avg'](context())
  ref, _, m_ref = run_rounds(round_for(alg, 2, num_clients=19, epochs=2), data, mask, ids)
  got, _, m_got = run_rounds(round_for(alg, 2, num_clients=19, epochs=2, **kw), data, mask, ids)
  np.testing.assert_allclose(got.params['w'], ref.params['w'], rtol=1e-5, atol=1e-6)
  assert float(m_got['train/loss']) == pytest.approx(float(m_ref['train/loss']), rel=1e-5)


def test_non_finite_update_is_flagged():
  data, mask = random_clients(2, 4, [4, 4])
  alg = ALGORITHMS['fed_avg'](context(server_lr=float('inf')))
  server, _, m = run_rounds(round_for(alg, num_clients=2, pad_to=4), data, mask, [0, 1], rounds=1)
  assert not bool(m['finite'])
  assert np.isfinite(float(m['train/loss']))  # the loss was computed before the update


def test_dynamic_steps_order_balances_devices_and_keeps_chunks_homogeneous():
  sizes = np.arange(1, 41) * 10  # 40 clients, sizes 10..400
  alg = ALGORITHMS['fed_avg'](context())
  fr = round_for(alg, num_clients=40, strategy='map', chunk_size=2, dynamic_steps=True)
  order = fr.cohort_order(sizes)
  assert sorted(order) == list(range(40))
  slots = fr.slot_ids(np.asarray(order))  # laid out: 8 leaves of 5 slots
  by_leaf = np.where(slots < 40, sizes[np.minimum(slots, 39)], 0).reshape(8, 5)
  # Chunks of 2 consecutive slots hold clients of neighbouring sizes (ranks apart by <= 1)...
  ranks = np.argsort(np.argsort(-sizes))
  leaf_ranks = np.where(slots < 40, ranks[np.minimum(slots, 39)], -1).reshape(8, 5)
  assert all(abs(r[0] - r[1]) == 1 and abs(r[2] - r[3]) == 1 for r in leaf_ranks)
  # ... and any number of devices gets about the same work (sum of sizes).
  for devices in (2, 4, 8):
    work = by_leaf.reshape(devices, -1).sum(1)
    assert work.max() < 1.25 * work.min()
  # 100 clients on leaves of 13 slots (4 spare) in chunks of 7 (+ 6 or 5): every chunk holds
  # clients of consecutive ranks, also where a leaf's last chunk is short.
  sizes100 = np.random.default_rng(0).permutation(100) + 1
  fr = round_for(alg, num_clients=100, strategy='map', chunk_size=7, dynamic_steps=True)
  slots = fr.slot_ids(fr.cohort_order(sizes100))
  rank_of = np.argsort(np.argsort(-sizes100))
  for leaf in slots.reshape(8, 13):
    for chunk in (leaf[:7], leaf[7:]):
      r = np.sort(rank_of[chunk[chunk < 100]])
      assert len(r) and (np.diff(r) == 1).all(), r
  # Without dynamic steps the order is the cohort's own.
  plain = round_for(alg, num_clients=40, strategy='map')
  np.testing.assert_array_equal(plain.cohort_order(sizes), np.arange(40))
