"""Inputs optimised against a fixed teacher: the shared machinery of data-free distillation.

Dream Distillation and DeepInversion both start a batch of inputs from noise and run Adam
on the inputs (the teacher's weights and BatchNorm statistics never change) to lower a
loss made of a teacher term and an image prior. `optimise_inputs` is that loop as one
jitted program: `steps` Adam steps in a `lax.scan`, each step a random jitter of the batch
(circular shifts of up to `jitter` pixels and, optionally, horizontal flips, as
DeepInversion), the gradient of the loss, the Adam update and a clip to the data's range.

The image prior (`image_prior`) is the squared total variation (mean squared difference of
neighbouring pixels, both axes) plus the mean squared input: the R_TV and R_ℓ2 terms of
DeepInversion, which keep dreams smooth and bounded.

References: Yin et al. 2020, "Dreaming to Distill: Data-free Knowledge Transfer via
DeepInversion" (CVPR), Eq. 3–4; Bhardwaj, Suda, Marculescu 2019, "Dream Distillation"
(arXiv 1905.07072); Mordvintsev et al. 2015 (DeepDream's jitter).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedcomp.errors import ConfigError


class InputStats(NamedTuple):
  """Per-channel statistics of the real inputs, released with the teacher (a few floats).

  Attributes:
    low, high: (C,) the range of the inputs (synthetic inputs are clipped to it).
    mean, std: (C,) mean and standard deviation (noise inputs are drawn from them).
  """

  low: np.ndarray
  high: np.ndarray
  mean: np.ndarray
  std: np.ndarray

  @classmethod
  def of(cls, x: np.ndarray) -> 'InputStats':
    """The statistics of (N, ..., C) inputs over all but the channel axis."""
    flat = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
    return cls(flat.min(0), flat.max(0), flat.mean(0), flat.std(0))

  def to_json(self) -> dict:
    return {k: [float(v) for v in np.ravel(getattr(self, k))] for k in self._fields}

  @classmethod
  def from_json(cls, d: dict) -> 'InputStats':
    return cls(*(np.asarray(d[k], np.float32) for k in cls._fields))


class SynthesisOptions(NamedTuple):
  """How inputs are optimised (config.<method>.*).

  Attributes:
    steps: Adam steps per batch.
    learning_rate: Adam's step size on the inputs.
    tv_weight: weight of the squared total variation.
    l2_weight: weight of the mean squared input.
    jitter: largest random circular shift in pixels per step (0: none).
    flip: random horizontal flips per step.
    batch_size: inputs optimised together.
  """

  steps: int = 200
  learning_rate: float = 0.05
  tv_weight: float = 1e-3
  l2_weight: float = 0.0
  jitter: int = 2
  flip: bool = False
  batch_size: int = 256

  def check(self, key: str) -> 'SynthesisOptions':
    """Raises ConfigError for a bad option (named config.<key>.<option>)."""
    for name in ('steps', 'batch_size'):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f'config.{key}.{name}={v!r} must be a positive integer')
    if not isinstance(self.jitter, int) or self.jitter < 0:
      raise ConfigError(f'config.{key}.jitter={self.jitter!r} must be an integer >= 0')
    for name in ('learning_rate', 'tv_weight', 'l2_weight'):
      v = getattr(self, name)
      if not isinstance(v, (int, float)) or v < 0 or (name == 'learning_rate' and v == 0):
        raise ConfigError(f'config.{key}.{name}={v!r} must be a number >= 0 (lr > 0)')
    return self


def image_prior(x: jax.Array, tv_weight: float, l2_weight: float) -> jax.Array:
  """Per-example tv_weight·TV²(x) + l2_weight·mean(x²) of (B, H, W, C) images.

  TV²(x) is the mean over both axes of the squared differences of neighbouring pixels.
  """
  dh = jnp.square(x[:, 1:] - x[:, :-1]).mean(axis=(1, 2, 3))
  dw = jnp.square(x[:, :, 1:] - x[:, :, :-1]).mean(axis=(1, 2, 3))
  return tv_weight * (dh + dw) + l2_weight * jnp.square(x).mean(axis=(1, 2, 3))


def noise_inputs(key, n: int, shape, stats: InputStats) -> jax.Array:
  """(n, *shape) Gaussian inputs with the real inputs' per-channel mean and std, clipped to
  their range."""
  z = jax.random.normal(key, (n, *shape))
  x = jnp.asarray(stats.mean) + jnp.asarray(stats.std) * z
  return jnp.clip(x, jnp.asarray(stats.low), jnp.asarray(stats.high))


def _jitter(x, key, max_shift: int, flip: bool):
  """The batch shifted circularly by one random (dy, dx) and, optionally, flipped."""
  k_y, k_x, k_f = jax.random.split(key, 3)
  if max_shift:
    dy = jax.random.randint(k_y, (), -max_shift, max_shift + 1)
    dx = jax.random.randint(k_x, (), -max_shift, max_shift + 1)
    x = jnp.roll(x, (dy, dx), axis=(1, 2))
  if flip:
    x = jnp.where(jax.random.bernoulli(k_f), x[:, :, ::-1], x)
  return x


def optimise_inputs(
  loss_fn: Callable[[jax.Array, jax.Array], tuple[jax.Array, dict]],
  x0: jax.Array,
  targets,
  key: jax.Array,
  options: SynthesisOptions,
  stats: InputStats,
) -> tuple[jax.Array, dict]:
  """Adam on the inputs (call inside jit; the loop is a `lax.scan`).

  Args:
    loss_fn: (x, targets) -> (scalar loss of the batch, metrics dict); the image prior is
      added here, so loss_fn holds the teacher terms only.
    x0: (B, H, W, C) starting inputs.
    targets: what loss_fn compares with (per-example activations, labels, ...).
    key: randomness of the jitter.
    options: SynthesisOptions.
    stats: the input range (x is clipped to [low, high] after every step).

  Returns:
    (x, metrics): the optimised inputs and loss_fn's metrics of the first and last step
    ('<name>_first', '<name>_last'), plus the prior's.
  """
  tx = optax.adam(options.learning_rate)
  low, high = jnp.asarray(stats.low), jnp.asarray(stats.high)

  def total(x, k):
    xj = _jitter(x, k, options.jitter, options.flip)
    loss, metrics = loss_fn(xj, targets)
    prior = image_prior(x, options.tv_weight, options.l2_weight).mean()
    return loss + prior, {**metrics, 'prior': prior}

  def step(carry, k):
    x, opt_state = carry
    (_, metrics), g = jax.value_and_grad(total, has_aux=True)(x, k)
    updates, opt_state = tx.update(g, opt_state, x)
    x = jnp.clip(x + updates, low, high)
    return (x, opt_state), metrics

  keys = jax.random.split(key, options.steps)
  (x, _), trace = jax.lax.scan(step, (x0, tx.init(x0)), keys)
  metrics = {}
  for name, values in trace.items():
    metrics[f'{name}_first'], metrics[f'{name}_last'] = values[0], values[-1]
  return x, metrics
