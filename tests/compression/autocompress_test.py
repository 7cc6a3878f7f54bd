"""Automatic compression: N2N's reward and the weighted form by hand; the two-stage
policy's probabilities and sampling; REINFORCE solving bandits with known answers."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedcomp.compression.autocompress import (
  Episode,
  RewardWeights,
  TwoStagePolicy,
  n2n_reward,
  reinforce,
  weighted_reward,
)
from fedcomp.errors import ConfigError

TEACHER = {'accuracy': 0.9, 'latency_ms': 2.0, 'memory_bytes': 100.0}


def test_n2n_reward_by_hand():
  # C = 1 - 25/100 = 0.75; R_c = 0.75 * 1.25 = 0.9375; R_a = 0.8 / 0.9.
  assert n2n_reward(25, 100, 0.8, 0.9) == pytest.approx(0.9375 * 0.8 / 0.9)
  assert n2n_reward(100, 100, 0.9, 0.9) == 0.0  # no compression, no reward


def test_weighted_reward_by_hand_and_its_n2n_special_case():
  student = {'accuracy': 0.8, 'latency_ms': 0.5, 'memory_bytes': 25.0}
  # Memory only, weight 1: N2N's reward with memory as the cost.
  n2n = weighted_reward(RewardWeights(), student, TEACHER)
  assert n2n == pytest.approx(n2n_reward(25, 100, 0.8, 0.9))
  # Latency weight 2, memory weight 0, accuracy weight 1: R_a * (C(2-C))^2 with C = 0.75.
  w = RewardWeights(latency_weight=2.0, memory_weight=0.0)
  assert weighted_reward(w, student, TEACHER) == pytest.approx((0.8 / 0.9) * 0.9375**2)
  # A student slower than its teacher earns nothing from the latency term.
  slow = dict(student, latency_ms=3.0)
  assert weighted_reward(w, slow, TEACHER) == 0.0
  assert weighted_reward(w, dict(student, accuracy=None), TEACHER) == -1.0


def test_budget_penalty_anneals_to_minus_one():
  student = {'accuracy': 0.8, 'latency_ms': 0.5, 'memory_bytes': 25.0}
  w = RewardWeights(memory_budget_bytes=20.0, anneal_episodes=15)
  r = n2n_reward(25, 100, 0.8, 0.9)
  eps = (1 - 5 / 15) ** 4
  assert weighted_reward(w, student, TEACHER, episode=5) == pytest.approx(eps - 1 + eps * r)
  assert weighted_reward(w, student, TEACHER, episode=0) == pytest.approx(r)
  assert weighted_reward(w, student, TEACHER, episode=40) == -1.0
  within = dict(student, memory_bytes=20.0)
  assert weighted_reward(w, within, TEACHER, episode=40) == pytest.approx(
    n2n_reward(20, 100, 0.8, 0.9)
  )


@pytest.mark.parametrize(
  ('change', 'match'),
  [
    ({'latency_weight': -1.0}, 'latency_weight=-1.0 must be >= 0'),
    ({'accuracy_weight': 0.0, 'memory_weight': 0.0}, 'every weight is 0'),
    ({'latency_budget_ms': 0.0}, 'latency_budget_ms=0.0 must be positive'),
  ],
)
def test_bad_weights_fail_in_one_line(change, match):
  with pytest.raises(ConfigError, match=match):
    RewardWeights(**change).check()


def test_episode_probabilities_sum_to_one_and_match_sampling_frequencies():
  policy = TwoStagePolicy(features=3, num_ratios=2, hidden=8, seed=3)
  emb = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3)), jnp.float32)
  removable = jnp.array([True, False])
  log_prob = jax.jit(lambda e: policy.log_prob(policy.params, emb, removable, e))
  probs = {}
  # Layer 1 is always kept; layer 0's ratio only counts when it is kept.
  for keep0, r0, r1 in itertools.product([True, False], range(2), range(2)):
    if not keep0 and r0:
      continue
    ep = Episode(jnp.array([keep0, True]), jnp.array([r0, r1], jnp.int32))
    probs[(keep0, r0 if keep0 else 0, r1)] = float(jnp.exp(log_prob(ep)))
  assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
  n = 4000
  keys = jax.random.split(jax.random.key(0), n)
  eps = jax.jit(jax.vmap(lambda k: policy.sample(policy.params, emb, removable, k)))(keys)
  keep, ratio = np.asarray(eps.keep), np.asarray(eps.ratio)
  assert keep[:, 1].all()
  for (keep0, r0, r1), p in probs.items():
    hit = (keep[:, 0] == keep0) & (ratio[:, 1] == r1) & ((ratio[:, 0] == r0) | ~keep[:, 0])
    assert abs(hit.mean() - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-3


def train(policy, emb, removable, reward_fn, steps=150, lr=3e-2):
  init, update = reinforce(policy, learning_rate=lr)

  @jax.jit
  def step(state, key):
    keys = jax.random.split(key, 16)
    episodes = jax.vmap(lambda k: policy.sample(state.params, emb, removable, k))(keys)
    return update(state, emb, removable, episodes, reward_fn(episodes, key))[0]

  state = init(policy.params)
  for i in range(steps):
    state = step(state, jax.random.key(i))
  return policy.probabilities(state.params, emb, removable)


def test_reinforce_finds_the_best_arm_of_a_noisy_bandit():
  policy = TwoStagePolicy(features=3, num_ratios=4, hidden=16, seed=0)
  table = jnp.array([0.1, 0.5, 0.9, 0.3])

  def reward(eps, key):
    return table[eps.ratio[:, 0]] + 0.1 * jax.random.normal(key, eps.ratio[:, 0].shape)

  _, ratio = train(policy, jnp.ones((1, 3)), jnp.array([False]), reward)
  assert int(jnp.argmax(ratio[0])) == 2 and ratio[0, 2] > 0.9


def test_reinforce_learns_which_layers_to_remove():
  # Removing layer 0 pays, removing layer 1 costs; layer 2 cannot be removed.
  policy = TwoStagePolicy(features=2, num_ratios=2, hidden=16, seed=1)

  def reward(eps, key):
    del key
    return (1.0 - eps.keep[:, 0]) + eps.keep[:, 1]

  keep, _ = train(policy, jnp.eye(3, 2) + 0.1, jnp.array([True, True, False]), reward)
  assert keep[0] < 0.1 and keep[1] > 0.9 and keep[2] == 1.0
