"""N2N's two-stage recurrent policy over layer embeddings, and its REINFORCE update.

Stage 1 (removal): a bidirectional LSTM reads the teacher's layer embeddings and gives each
layer a keep probability (layers that cannot be removed are always kept). Stage 2
(shrinkage): an LSTM walks the layers in order and, given each layer's embedding, whether
it is kept and the previous layer's choice, picks a width ratio from a fixed set. N2N runs
the two stages as two searches; here one episode samples both (shrinkage conditioned on
the removal), so one search and one saved policy cover the whole space; removed layers'
ratio choices are masked out of the log-probability.

The policy is an nnx module split once into a graph and a pure pytree of parameters, so
`sample` and `log_prob` are pure, jittable and vmappable over episodes, and a saved policy
(the pytree) initialises another search on the same teacher (policy reuse).

Training: REINFORCE with a moving-average baseline b, loss −mean_e (R_e − b) log π(a_e),
Adam (N2N: learning rate 3e-3).

References: Ashok et al. 2018, "N2N Learning" (ICLR), Sec. 3.1–3.4; Williams 1992,
"Simple statistical gradient-following algorithms for connectionist reinforcement
learning" (REINFORCE with a baseline).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx


class Episode(NamedTuple):
  """One sampled architecture: keep (L,) bool and ratio (L,) int32 indices."""

  keep: jax.Array
  ratio: jax.Array


class _Policy(nnx.Module):
  def __init__(self, features: int, num_ratios: int, hidden: int, rngs: nnx.Rngs):
    self.num_ratios, self.hidden = num_ratios, hidden
    self.forward = nnx.OptimizedLSTMCell(features, hidden, rngs=rngs)
    self.backward = nnx.OptimizedLSTMCell(features, hidden, rngs=rngs)
    self.keep_head = nnx.Linear(2 * hidden, 1, rngs=rngs)
    self.shrink = nnx.OptimizedLSTMCell(features + 1 + num_ratios, hidden, rngs=rngs)
    self.ratio_head = nnx.Linear(hidden, num_ratios, rngs=rngs)

  def zero_carry(self):
    return (jnp.zeros(self.hidden), jnp.zeros(self.hidden))  # the LSTM's (c, h)

  def _run(self, cell, xs):
    carry = self.zero_carry()

    def step(carry, x):
      return cell(carry, x)

    return jax.lax.scan(step, carry, xs)[1]

  def keep_logits(self, emb):
    h = jnp.concatenate(
      [self._run(self.forward, emb), self._run(self.backward, emb[::-1])[::-1]], -1
    )
    return self.keep_head(h)[:, 0]

  def ratio_step(self, carry, x):
    carry, h = self.shrink(carry, x)
    return carry, self.ratio_head(h)


class TwoStagePolicy:
  """The policy as pure functions of a parameter pytree.

  Attributes:
    params: the initial parameters (a pytree of arrays).
    sample: sample(params, emb, removable, key) -> Episode.
    log_prob: log_prob(params, emb, removable, episode) -> log π(episode), a scalar.
    probabilities: probabilities(params, emb, removable) -> (keep (L,), ratio (L, K)) of the
      greedy path (each layer's ratio distribution given the most likely earlier choices).
  """

  def __init__(self, features: int, num_ratios: int, hidden: int = 64, seed: int = 0):
    """Args: features: layer-embedding size; num_ratios: size of the ratio set; hidden:
    LSTM width; seed: initialisation."""
    graph, params = nnx.split(_Policy(features, num_ratios, hidden, nnx.Rngs(seed)), nnx.Param)
    self.params = nnx.to_pure_dict(params)
    self._graph = graph
    self._like = params
    self.num_ratios = num_ratios

  def _module(self, params):
    state = jax.tree.unflatten(jax.tree.structure(self._like), jax.tree.leaves(params))
    return nnx.merge(self._graph, state)

  def _walk(self, params, emb, keep, choose: Callable, key):
    """Stage 2 along the layers; choose(logits, key, index) -> ratio index."""
    module = self._module(params)
    k = self.num_ratios
    carry = module.zero_carry()

    def step(state, inputs):
      carry, prev = state
      e, kept, index = inputs
      x = jnp.concatenate([e, kept[None].astype(e.dtype), jax.nn.one_hot(prev, k, dtype=e.dtype)])
      carry, logits = module.ratio_step(carry, x)
      r = choose(logits, jax.random.fold_in(key, index), index)
      return (carry, r), (logits, r)

    index = jnp.arange(emb.shape[0])
    _, (logits, ratios) = jax.lax.scan(step, (carry, jnp.int32(k - 1)), (emb, keep, index))
    return logits, ratios

  def _keep_logits(self, params, emb, removable):
    logits = self._module(params).keep_logits(emb)
    return jnp.where(removable, logits, jnp.inf)  # fixed layers: keep with probability 1

  def sample(self, params, emb, removable, key) -> Episode:
    k_keep, k_ratio = jax.random.split(key)
    logits = self._keep_logits(params, emb, removable)
    keep = jax.random.uniform(k_keep, logits.shape) < jax.nn.sigmoid(logits)
    choose = lambda lg, k, i: jax.random.categorical(k, lg).astype(jnp.int32)  # noqa: E731
    _, ratios = self._walk(params, emb, keep, choose, k_ratio)
    return Episode(keep, ratios)

  def log_prob(self, params, emb, removable, episode: Episode):
    logits = self._keep_logits(params, emb, removable)
    lp_keep = jnp.where(
      removable,
      jnp.where(episode.keep, jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)),
      0.0,
    )
    given = lambda lg, k, i: episode.ratio[i]  # noqa: E731
    ratio_logits, _ = self._walk(params, emb, episode.keep, given, jax.random.key(0))
    lp = jnp.take_along_axis(jax.nn.log_softmax(ratio_logits), episode.ratio[:, None], 1)[:, 0]
    return lp_keep.sum() + jnp.where(episode.keep, lp, 0.0).sum()

  def probabilities(self, params, emb, removable):
    keep = jax.nn.sigmoid(self._keep_logits(params, emb, removable))
    greedy = lambda lg, k, i: jnp.argmax(lg).astype(jnp.int32)  # noqa: E731
    logits, _ = self._walk(params, emb, keep > 0.5, greedy, jax.random.key(0))
    return keep, jax.nn.softmax(logits)


class Reinforce(NamedTuple):
  """REINFORCE state: the policy parameters, the optimizer state and the baseline."""

  params: dict
  opt_state: optax.OptState
  baseline: jax.Array
  updates: jax.Array


def reinforce(policy: TwoStagePolicy, learning_rate: float = 3e-3, baseline_decay: float = 0.9):
  """(init, update) of REINFORCE with a moving-average baseline.

  init(params) -> Reinforce. update(state, emb, removable, episodes, rewards) -> (state,
  metrics): one Adam step on −mean_e (R_e − b) log π(a_e) over a batch of episodes (leading
  axis), then b ← decay·b + (1 − decay)·mean R (b starts at the first batch's mean).
  """
  tx = optax.adam(learning_rate)

  def init(params) -> Reinforce:
    return Reinforce(params, tx.init(params), jnp.float32(0.0), jnp.int32(0))

  def update(state: Reinforce, emb, removable, episodes: Episode, rewards):
    rewards = rewards.astype(jnp.float32)
    baseline = jnp.where(state.updates == 0, rewards.mean(), state.baseline)
    advantage = rewards - baseline

    def loss_fn(params):
      lp = jax.vmap(lambda e: policy.log_prob(params, emb, removable, e))(episodes)
      return -jnp.mean(advantage * lp)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    step, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, step)
    new_baseline = baseline_decay * baseline + (1 - baseline_decay) * rewards.mean()
    metrics = {'loss': loss, 'reward_mean': rewards.mean(), 'baseline': baseline}
    return Reinforce(params, opt_state, new_baseline, state.updates + 1), metrics

  return init, update
