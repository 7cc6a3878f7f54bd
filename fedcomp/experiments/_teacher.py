"""The teacher of a compression experiment (distill, autocompress): loaded from a run's
workdir or trained here.

The config provides `teacher_workdir` (None: train here), `teacher` (model_name, model,
epochs, batch_size, tx_name, tx), `data_name` and `seed`.
"""

import os

import jax
import jax.numpy as jnp

from fedcomp import models, tasks
from fedcomp.core.centralised import train_epochs
from fedcomp.core.saved_model import MODEL_JSON, describe, load_model, read_meta, save_model
from fedcomp.data.federated import as_batch
from fedcomp.optim import make_tx
from fedcomp.registry import ConfigError


def load_or_train_teacher(config, rd, dataset, check, name: str = 'teacher'):
  """(BuiltModel, params, state, meta) of the teacher: workdir/<name> if there (a rerun),
  else loaded from teacher_workdir, else trained here and saved in workdir/<name>.
  `check(model)` runs on the built teacher before anything is trained or written; then the
  config is recorded. (FSL-GAN's quality classifier is loaded the same way, as 'classifier'.)"""
  workdir = rd.workdir
  shape = dataset.train['x'].shape[1:]
  own = os.path.join(workdir, name)
  source = config.teacher_workdir
  if source is None and os.path.exists(os.path.join(own, MODEL_JSON)):
    source = own
  if source is not None:
    meta = read_meta(source)  # checked before anything is built (a federated run: after)
    if meta is not None:
      check_fit(config, meta, shape, dataset.num_classes)
    saved = load_model(source)
    check_fit(config, saved.meta, shape, dataset.num_classes)
    check(saved.model)
    rd.record_config()
    return saved.model, saved.params, saved.model_state, saved.meta
  t = config.teacher
  model = models.build_model(t.model_name, t.model, shape, dataset.num_classes, config.seed)
  check(model)
  rd.record_config()
  train = {k: jnp.asarray(v) for k, v in as_batch(dataset.train).items() if k in ('x', 'y')}
  params, state = train_epochs(
    tasks.make_task('classification'), model.apply, model.params, model.state, train,
    epochs=t.epochs, batch_size=t.batch_size, tx=make_tx(t.tx_name, t.tx, 'teacher.tx'),
    key=jax.random.key(config.seed), name=name,
  )  # fmt: skip
  meta = describe(t.model_name, t.model, shape, dataset.num_classes, config.seed)
  meta['epochs'] = t.epochs
  save_model(own, params, state, meta)
  return model, params, state, meta


def check_fit(config, meta, shape, num_classes) -> None:
  """One line when the teacher's input shape or class count does not fit the data."""
  if tuple(meta['input_shape']) != tuple(shape) or meta['num_classes'] != num_classes:
    raise ConfigError(
      f'the teacher ({meta["model_name"]!r}) takes inputs {tuple(meta["input_shape"])} with '
      f'{meta["num_classes"]} classes, but config.data_name={config.data_name!r} has inputs '
      f'{tuple(shape)} with {num_classes} classes: a student must fit its teacher'
    )
