"""A trained model kept in a run's workdir, and loading one from any run's workdir.

Experiments that produce a model for later tools (pruning, distillation, export) save it
with `save_model(workdir, ...)` as an orbax checkpoint under `workdir/model/` with its
description (model name and options, input shape, classes, seed) in `workdir/model.json`.
`load_model(workdir)` reads such a model, or, for a federated run's workdir, rebuilds the
run from its config.json and returns the global model of its newest checkpoint.
"""

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from fedcomp import models
from fedcomp.errors import ConfigError
from fedcomp.utils.checkpoint import Checkpointer

MODEL_DIR = 'model'
MODEL_JSON = 'model.json'
PyTree = Any


@dataclasses.dataclass(frozen=True)
class SavedModel:
  """A model with its trained values.

  Attributes:
    model: the BuiltModel (apply; its params/state are the initial ones).
    params: the trained params.
    model_state: the trained model state (BatchNorm statistics; {} for none).
    meta: model_name, model (options), input_shape, num_classes, seed, plus what the saving
      run added (e.g. sparsity, accuracy).
  """

  model: Any
  params: PyTree
  model_state: PyTree
  meta: dict


def describe(model_name: str, model_kwargs: Mapping, input_shape, num_classes, seed: int) -> dict:
  """The metadata that rebuilds a model: name, options, input shape, classes, seed."""
  return {
    'model_name': model_name,
    'model': json.loads(json.dumps(dict(model_kwargs), default=list)),
    'input_shape': [int(d) for d in input_shape],
    'num_classes': None if num_classes is None else int(num_classes),
    'seed': int(seed),
  }


def save_model(workdir: str, params: PyTree, model_state: PyTree, meta: Mapping) -> str:
  """Writes the model under workdir/model and its metadata to workdir/model.json (replacing
  a model there; the JSON is written last, so a model.json always describes a complete
  checkpoint); returns the checkpoint directory."""
  from fedcomp.core.run_dir import write_json_atomic

  final = os.path.join(os.path.abspath(workdir), MODEL_DIR)
  tmp = final + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)  # a save a kill interrupted
  ckpt = Checkpointer(tmp, max_to_keep=1)
  try:
    ckpt.save(0, {'params': params, 'model_state': model_state}, dict(meta))
  finally:
    ckpt.close()
  shutil.rmtree(final, ignore_errors=True)
  os.replace(tmp, final)
  write_json_atomic(os.path.join(workdir, MODEL_JSON), dict(meta), indent=2)
  return final


def read_meta(workdir: str) -> dict | None:
  """The saved model's metadata (model.json) without building or restoring anything; None
  if the workdir holds no saved model."""
  path = os.path.join(os.path.abspath(workdir), MODEL_JSON)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _build(meta: Mapping):
  return models.build_model(
    meta['model_name'],
    ml_collections.ConfigDict(meta['model']),
    tuple(meta['input_shape']),
    meta['num_classes'],
    meta['seed'],
  )


def load_model(workdir: str) -> SavedModel:
  """The model a run left in `workdir` (see the module docstring).

  Raises:
    ConfigError: the workdir holds neither a saved model nor a federated run's checkpoint.
  """
  path = os.path.join(os.path.abspath(workdir), MODEL_DIR)
  meta_path = os.path.join(os.path.abspath(workdir), MODEL_JSON)
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
    model = _build(meta)
    ckpt = Checkpointer(path, max_to_keep=1)
    try:
      step = ckpt.latest_round()
      if step is None:
        raise ConfigError(f'{path} holds no saved model')
      like = {'params': model.params, 'model_state': model.state}
      state, meta = ckpt.restore(step, like)
    finally:
      ckpt.close()
    return SavedModel(model, state['params'], state['model_state'], meta)
  return _load_federated(workdir)


def _load_federated(workdir: str) -> SavedModel:
  from fedcomp.core import trainer
  from fedcomp.core.run_dir import RunDir
  from fedcomp.experiments import federated

  rd = RunDir.existing(workdir)
  config = ml_collections.ConfigDict(rd.config)
  if config.get('experiment') != 'federated':
    raise ConfigError(
      f'{workdir} holds a {config.get("experiment")!r} run without a saved model ({MODEL_DIR}/)'
    )
  step = rd.latest_round()
  if step is None:
    raise ConfigError(f'{workdir} holds no checkpoint yet')
  try:
    setup = federated.build(config)
    state = trainer.TrainState(*rd.restore(step, tuple(trainer.initial_state(setup))))
    # On the host: the run's arrays live on its mesh (replicated over its devices), and a
    # program of a later tool over them would run on all of those devices (on CPU, fake
    # devices sharing two cores deadlocked in k-means' loops).
    params, model_state = jax.device_get(trainer.global_model(setup, state))
  finally:
    rd.close()
  meta = describe(
    config.model_name, config.model, setup.data.feature_shape, setup.data.num_classes, config.seed
  )
  meta['round'] = int(step)
  return SavedModel(setup.model, params, model_state, meta)
