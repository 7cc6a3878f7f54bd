"""Classification: softmax cross-entropy against integer labels, accuracy."""

import jax
import jax.numpy as jnp
import optax

from fedcomp.errors import ConfigError
from fedcomp.tasks.base import Task, masked_sums, mean_of


def _loss(apply, params, state, batch, key):
  logits, new_state = apply(params, state, batch['x'], train=True, key=key, mask=batch['mask'])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['y'])
  correct = jnp.argmax(logits, -1) == batch['y']
  sums = masked_sums({'loss': ce, 'accuracy': correct}, batch['mask'])
  return mean_of(sums), (sums, new_state)


def _per_example(apply, params, state, batch):
  logits = apply(params, state, batch['x'])[0]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['y'])
  return {'loss': ce, 'accuracy': (jnp.argmax(logits, -1) == batch['y']).astype(jnp.float32)}


def sampled_nll(apply, params, state, batch, key):
  """Mean cross-entropy of labels sampled from the model's softmax (masked rows excluded)."""
  k_model, k_label = jax.random.split(key)
  # The training-mode forward (dropout, and on CPU im2col convolutions, whose second
  # derivatives stay fast inside loops).
  logits = apply(params, state, batch['x'], train=True, key=k_model, mask=batch['mask'])[0]
  y = jax.lax.stop_gradient(jax.random.categorical(k_label, logits))
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  m = batch['mask'].astype(ce.dtype)
  return (ce * m).sum() / jnp.maximum(m.sum(), 1.0)


def check(output_shape, example_shapes) -> None:
  if len(output_shape) != 1:
    raise ConfigError(
      f"config.task_name='classification' needs one vector of logits per example; the model "
      f'outputs {tuple(output_shape)}'
    )


def make() -> Task:
  """Classification: batches hold 'x' and integer labels 'y'.

  Returns:
    The Task; its sums and metrics are 'loss' (cross-entropy) and 'accuracy'.
  """
  return Task('classification', ('x', 'y'), _loss, _per_example, sampled_nll, check)
