"""The knowledge-distillation loss: a student matches a teacher's softened outputs.

For student logits s, teacher logits t, temperature T, labels y and mixing weight α, the
loss of one example is

    (1 − α) · T² · KL(softmax(t/T) ‖ softmax(s/T)) + α · CE(softmax(s), y).

The T² keeps the soft term's gradients at the scale of the hard term's as T grows (the
soft term's gradient with respect to s scales as 1/T²). α = 0 is pure distillation (no
labels needed); α = 1 is training on labels alone.

References: Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network"
(arXiv 1503.02531), Sec. 2.
"""

import jax
import jax.numpy as jnp
import optax


def kd_loss(student: jax.Array, teacher: jax.Array, temperature: float) -> jax.Array:
  """Per-example T²·KL(softmax(teacher/T) ‖ softmax(student/T)).

  Args:
    student: (..., C) student logits.
    teacher: (..., C) teacher logits (treated as constants by the caller).
    temperature: T > 0.

  Returns:
    (...,) the soft loss of each example.
  """
  t = jax.nn.log_softmax(teacher / temperature, -1)
  s = jax.nn.log_softmax(student / temperature, -1)
  return temperature**2 * (jnp.exp(t) * (t - s)).sum(-1)


def distillation_loss(
  student: jax.Array,
  teacher: jax.Array,
  labels: jax.Array | None,
  temperature: float,
  alpha: float,
) -> jax.Array:
  """Per-example (1 − α)·T²·KL + α·CE(student, labels).

  Args:
    student: (..., C) student logits.
    teacher: (..., C) teacher logits.
    labels: (...,) integer labels, or None when α = 0.
    temperature: T > 0.
    alpha: the labels' weight α in [0, 1] (a Python float: α = 0 skips the labels).

  Returns:
    (...,) the loss of each example.
  """
  loss = kd_loss(student, jax.lax.stop_gradient(teacher), temperature)
  if isinstance(alpha, (int, float)) and alpha == 0:
    return loss
  ce = optax.softmax_cross_entropy_with_integer_labels(student, labels)
  return (1.0 - alpha) * loss + alpha * ce
