"""Taps: intermediate activations and BatchNorm input statistics for distillation.

Models name activations with `feature(name, x)` and build their BatchNorm layers from
`BatchNorm`. Both do nothing unless a `recording()` is active, so a plain forward pass
(`BuiltModel.apply`) traces exactly as without them; inside `recording()` (what
`BuiltModel.taps` does) they append to the recorder in forward-execution order. Recording
happens while the forward pass is traced, so it works under jit, vmap and grad.

Why not `Module.sow`: sown values live in the module graph, which lists layers by sorted
attribute name rather than execution order, and they would join the model state.
"""

import contextlib
import contextvars
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

_ACTIVE = contextvars.ContextVar('fedcomp_taps', default=None)


@dataclasses.dataclass
class Recorder:
  """What one forward pass recorded.

  Attributes:
    features: name -> (B, D) float32 activations, in the order they were recorded.
    bn: one dict per BatchNorm call, in forward-execution order (see `input_stats`).
  """

  features: dict = dataclasses.field(default_factory=dict)
  bn: list = dataclasses.field(default_factory=list)


@contextlib.contextmanager
def recording():
  """Records the taps of the forward passes run (traced) inside the block.

  Returns:
    A context manager yielding the Recorder.
  """
  recorder = Recorder()
  token = _ACTIVE.set(recorder)
  try:
    yield recorder
  finally:
    _ACTIVE.reset(token)


def feature(name: str, x: jax.Array) -> None:
  """Records activations `x` (B, ...) as feature `name`, flattened to (B, D) float32.

  Args:
    name: the feature's name; one name per forward pass.
    x: the activations, batch first.
  """
  recorder = _ACTIVE.get()
  if recorder is None:
    return
  if name in recorder.features:
    raise ValueError(f'feature {name!r} recorded twice in one forward pass')
  recorder.features[name] = x.reshape(x.shape[0], -1).astype(jnp.float32)


def input_stats(x: jax.Array, feature_axis: int, mask=None) -> tuple[jax.Array, jax.Array]:
  """Per-feature mean and biased variance of `x` over every other axis (float32).

  Args:
    x: the activations.
    feature_axis: the axis kept.
    mask: None (every position counts) or booleans broadcastable to x.

  Returns:
    (mean, var), each of shape (x.shape[feature_axis],).
  """
  x = x.astype(jnp.float32)
  axes = tuple(i for i in range(x.ndim) if i != feature_axis % x.ndim)
  if mask is None:
    mean = x.mean(axes)
    var = jnp.square(x - jnp.expand_dims(mean, axes)).mean(axes)
    return mean, var
  w = jnp.broadcast_to(mask, x.shape).astype(jnp.float32)
  count = jnp.maximum(w.sum(axes), 1.0)  # all rows masked: zeros, not NaNs
  mean = (w * x).sum(axes) / count
  var = (w * jnp.square(x - jnp.expand_dims(mean, axes))).sum(axes) / count
  return mean, var


class BatchNorm(nnx.BatchNorm):
  """nnx.BatchNorm that, while recording, records the statistics of its input.

  Same attributes, parameters and state as nnx.BatchNorm. Each call records
  {'mean', 'var'}: the mean and biased variance of its input over the rows (and spatial
  positions) where `mask` is True, in training and in evaluation alike, and
  {'running_mean', 'running_var'}: the stored statistics before this call's update (those
  evaluation normalises with). These are the inputs of DeepInversion's BatchNorm loss.
  """

  def __call__(self, x, use_running_average=None, *, mask=None):
    recorder = _ACTIVE.get()
    if recorder is not None:
      mean, var = input_stats(x, self.axis, mask)
      recorder.bn.append(
        {'mean': mean, 'var': var, 'running_mean': self.mean[...], 'running_var': self.var[...]}
      )
    return super().__call__(x, use_running_average, mask=mask)
