"""DeepInversion: inputs that reproduce the teacher's BatchNorm statistics and its classes.

A batch x̂ with sampled classes y is optimised (teacher fixed, in inference mode) for

    CE(teacher(x̂), y) + α_f Σ_l (‖μ_l(x̂) − μ_l‖₂ + ‖σ²_l(x̂) − σ²_l‖₂) + prior(x̂),

where μ_l(x̂), σ²_l(x̂) are the batch mean and variance of BatchNorm layer l's input and
μ_l, σ²_l its running statistics (the teacher's memory of the training data). The
BatchNorm term couples the examples of a batch, so the loss is a batch loss. Needs a
teacher with BatchNorm layers. The Adaptive DeepInversion term (student–teacher
disagreement) is not included.

References: Yin et al. 2020, "Dreaming to Distill: Data-free Knowledge Transfer via
DeepInversion" (CVPR), Eq. 4–6; NVlabs/DeepInversion (recipe: r_feature weight 10 for
CIFAR-10, Adam lr 0.05–0.1, TV prior, jitter and flips).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from fedcomp.errors import ConfigError


def bn_statistics_loss(bn_taps) -> jnp.ndarray:
  """Σ_l ‖μ_l(x̂) − running μ_l‖₂ + ‖σ²_l(x̂) − running σ²_l‖₂ over the BatchNorm taps."""

  def norm(d):  # ‖d‖₂ with a finite gradient at d = 0
    return jnp.sqrt(jnp.sum(jnp.square(d)) + 1e-12)

  total = 0.0
  for t in bn_taps:
    total += norm(t['mean'] - t['running_mean']) + norm(t['var'] - t['running_var'])
  return total


def check_teacher(model, input_shape, key: str = 'methods') -> None:
  """Raises ConfigError if the teacher has no BatchNorm layer (an abstract evaluation: no
  compilation)."""
  x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
  taps = jax.eval_shape(lambda x: model.taps(model.params, model.state, x)[2], x)
  if not taps['bn']:
    raise ConfigError(
      f"config.{key} has 'deepinversion', which needs a teacher with BatchNorm layers "
      '(e.g. resnet or vgg)'
    )


def deepinversion_loss(model, params, state, bn_weight: float) -> Callable:
  """The teacher terms of a batch: loss_fn(x, labels) -> (loss, metrics).

  Args:
    model: the teacher's BuiltModel (its `taps`).
    params, state: the teacher's fixed values.
    bn_weight: α_f, the weight of the BatchNorm-statistics term.

  Returns:
    loss_fn(x (B, ...), labels (B,) original class ids).
  """

  def loss_fn(x, labels):
    out, _, taps = model.taps(params, state, x)
    ce = optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()
    bn = bn_statistics_loss(taps['bn'])
    return ce + bn_weight * bn, {'ce': ce, 'bn': bn}

  return loss_fn
