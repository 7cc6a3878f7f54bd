"""Reconstruction with a Bernoulli likelihood: the auto-encoder benchmark's loss.

The model outputs one logit per input value; the loss of an example is the sigmoid
cross-entropy of its logits against its own (flattened) inputs in [0, 1], summed over
the values (the negative log-likelihood in nats, as Hinton & Salakhutdinov's and the
second-order optimisation papers report it).

References: Hinton & Salakhutdinov 2006 (Science); Martens 2010 (deep auto-encoders);
Garcia et al. 2023 (FishLeg), the auto-encoder benchmarks.
"""

import math

import jax
import jax.numpy as jnp
import optax

from fedcomp.errors import ConfigError
from fedcomp.tasks.base import Task, masked_sums, mean_of


def _per_row(logits, x):
  target = x.reshape(x.shape[0], -1)
  return optax.sigmoid_binary_cross_entropy(logits, target).sum(-1)


def _loss(apply, params, state, batch, key):
  logits, new_state = apply(params, state, batch['x'], train=True, key=key, mask=batch['mask'])
  sums = masked_sums({'loss': _per_row(logits, batch['x'])}, batch['mask'])
  return mean_of(sums), (sums, new_state)


def _per_example(apply, params, state, batch):
  return {'loss': _per_row(apply(params, state, batch['x'])[0], batch['x'])}


def sampled_nll(apply, params, state, batch, key):
  """Bernoulli NLL of targets sampled from sigmoid(logits), summed over outputs, averaged."""
  k_model, k_target = jax.random.split(key)
  logits = apply(params, state, batch['x'], train=True, key=k_model, mask=batch['mask'])[0]
  y = jax.lax.stop_gradient(jax.random.bernoulli(k_target, jax.nn.sigmoid(logits)))
  nll = optax.sigmoid_binary_cross_entropy(logits, y.astype(logits.dtype)).sum(-1)
  m = batch['mask'].astype(nll.dtype)
  return (nll * m).sum() / jnp.maximum(m.sum(), 1.0)


def check(output_shape, example_shapes) -> None:
  size = math.prod(example_shapes['x'])
  if tuple(output_shape) != (size,):
    raise ConfigError(
      f"config.task_name='reconstruction' needs one output per input value ({size}); the "
      f'model outputs {tuple(output_shape)} (use e.g. model_name=autoencoder)'
    )


def make() -> Task:
  """Reconstruction: batches hold 'x' only; the sums and metrics are 'loss' (nats/example)."""
  return Task('reconstruction', ('x',), _loss, _per_example, sampled_nll, check)
