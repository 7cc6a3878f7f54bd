"""Knowledge distillation: a student matches a teacher's softened outputs.

The loss of an example is (1 − w)·T²·KL(softmax(t/T) ‖ softmax(s/T)) + w·CE(s, y) for
student logits s, teacher logits t, temperature T and hard-label weight w (α of
`fedcomp.compression.distillation.kd`, where the loss lives).
The teacher's logits come from the batch ('teacher_logits', precomputed or streamed)
or from a teacher function of the inputs given to `make` (not settable from a config:
experiments that distil build it from a trained run).

References: Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network"
(arXiv 1503.02531).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from fedcomp.compression.distillation.kd import distillation_loss
from fedcomp.errors import ConfigError
from fedcomp.tasks import classification
from fedcomp.tasks.base import Task, masked_sums, mean_of


def make(
  *,
  temperature: float = 4.0,
  hard_label_weight: float = 0.0,
  teacher: Callable[[jax.Array], jax.Array] | None = None,
) -> Task:
  """Distillation.

  Args:
    temperature: T > 0 (config.task.temperature).
    hard_label_weight: w in [0, 1]: the share of cross-entropy with the labels 'y'
      (config.task.hard_label_weight); 0 needs no labels.
    teacher: x -> teacher logits (inference); None: batches carry 'teacher_logits'.

  Returns:
    The Task; sums and metrics: 'loss', 'agreement' (student and teacher argmax agree)
    and, with labels in the batch, 'accuracy'.
  """
  if not temperature > 0:
    raise ConfigError(f'config.task.temperature={temperature} must be > 0')
  if not 0.0 <= hard_label_weight <= 1.0:
    raise ConfigError(f'config.task.hard_label_weight={hard_label_weight} must be in [0, 1]')
  keys = ('x',) if teacher is not None else ('x', 'teacher_logits')
  if hard_label_weight > 0:
    keys += ('y',)

  def teacher_logits(batch):
    t = teacher(batch['x']) if teacher is not None else batch['teacher_logits']
    return jax.lax.stop_gradient(t.astype(jnp.float32))

  def per_row(student, batch):
    t = teacher_logits(batch)
    loss = distillation_loss(student, t, batch.get('y'), temperature, hard_label_weight)
    values = {'loss': loss, 'agreement': jnp.argmax(student, -1) == jnp.argmax(t, -1)}
    if 'y' in batch:
      values['accuracy'] = jnp.argmax(student, -1) == batch['y']
    return values

  def loss_fn(apply, params, state, batch, key):
    student, new_state = apply(params, state, batch['x'], train=True, key=key, mask=batch['mask'])
    sums = masked_sums(per_row(student, batch), batch['mask'])
    return mean_of(sums), (sums, new_state)

  def per_example(apply, params, state, batch):
    values = per_row(apply(params, state, batch['x'])[0], batch)
    return {k: v.astype(jnp.float32) for k, v in values.items()}

  def check(output_shape, example_shapes):
    teacher_shape = example_shapes.get('teacher_logits')
    if teacher_shape is not None and tuple(teacher_shape) != tuple(output_shape):
      raise ConfigError(
        f"config.task_name='distillation': the teacher's logits are {tuple(teacher_shape)} "
        f'per example but the student outputs {tuple(output_shape)}'
      )

  return Task('distillation', keys, loss_fn, per_example, classification.sampled_nll, check)
