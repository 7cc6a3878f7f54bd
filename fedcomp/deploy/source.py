"""What an export starts from: a run's trained model and the data to check it on.

`load_source(workdir)` takes any run's workdir (a saved model: prune, distill; or a
federated run's newest checkpoint), and finds the run's config.json there or in a parent
directory (a distill run's students/<name>/), which names its data source: its full test
set (restricted and relabelled to the model's classes for a class-subset deployment) and
calibration examples from its training split.
"""

import dataclasses
import json
import os
from collections.abc import Callable

import ml_collections
import numpy as np

from fedcomp.core.saved_model import MODEL_JSON, SavedModel, load_model
from fedcomp.errors import ConfigError

PIXEL_MAX = {'digits': 16.0}  # the raw range of integer pixels; others are 0..255


@dataclasses.dataclass(frozen=True)
class ExportSource:
  """A trained model ready to export, with its data.

  Attributes:
    saved: the SavedModel (params, state, meta).
    forward: x (B, *input_shape) float32 -> outputs (B, ...), inference mode, parameters
      closed over.
    input_shape: one example's shape.
    test: {'x', 'y'} the run's whole test set (float32 x; 'y' absent for unlabelled data),
      or None when the run's config names no data source.
    calibration: (N, *input_shape) float32 training examples (int8 calibration).
    classes: the original class ids of the outputs (a class-subset deployment's), or None.
    pixel_max: the raw integer range of the inputs (x = pixels / pixel_max).
    run_config: the run's config.json, or None.
  """

  saved: SavedModel
  forward: Callable
  input_shape: tuple[int, ...]
  test: dict | None
  calibration: np.ndarray
  classes: list[int] | None
  pixel_max: float
  run_config: dict | None


def check_workdir(workdir: str) -> None:
  """One line when `workdir` holds neither a saved model nor a run."""
  if workdir is None or not os.path.isdir(workdir):
    raise ConfigError(f'source workdir {workdir!r} does not exist')
  if not any(os.path.exists(os.path.join(workdir, f)) for f in (MODEL_JSON, 'config.json')):
    raise ConfigError(f'{workdir} holds no saved model ({MODEL_JSON}) and no run (config.json)')


def _run_config(workdir: str) -> dict | None:
  path = os.path.abspath(workdir)
  for _ in range(3):  # the workdir, students/, the run
    candidate = os.path.join(path, 'config.json')
    if os.path.exists(candidate):
      with open(candidate) as f:
        return json.load(f)
    path = os.path.dirname(path)
  return None


def load_source(workdir: str, calibration_examples: int, seed: int = 0) -> ExportSource:
  """The model in `workdir` and its data (see the module docstring).

  Args:
    workdir: a run's workdir.
    calibration_examples: how many training examples to draw for calibration.
    seed: the draw's seed.

  Returns:
    The ExportSource.

  Raises:
    ConfigError: the workdir holds no model or checkpoint (one line, before any data).
  """
  from fedcomp import data as fdata
  from fedcomp.compression.distillation.subset import select
  from fedcomp.data.federated import as_float

  check_workdir(workdir)
  saved = load_model(workdir)
  model, params, state = saved.model, saved.params, saved.model_state
  forward = lambda x: model.apply(params, state, x)[0]  # noqa: E731
  config = _run_config(workdir)
  classes = saved.meta.get('classes')
  shape = tuple(saved.meta['input_shape'])
  test, calibration, pixel_max = None, None, 255.0
  if config is not None and config.get('data_name'):
    dataset = fdata.load_source(
      config['data_name'], ml_collections.ConfigDict(config.get('data') or {}), config['seed']
    )
    pixel_max = PIXEL_MAX.get(config['data_name'], 255.0)
    test, train = dict(dataset.test), dict(dataset.train)
    if classes is not None and 'y' in test:
      test, train = select(test, classes), select(train, classes)
    test = {k: as_float(v) if k == 'x' else v for k, v in test.items() if k in ('x', 'y')}
    rows = np.random.default_rng(seed).permutation(len(train['x']))[:calibration_examples]
    calibration = as_float(np.asarray(train['x'])[np.sort(rows)])
  if calibration is None:  # no data named: uniform inputs in the data's [0, 1] range
    rng = np.random.default_rng(seed)
    calibration = rng.random((calibration_examples, *shape), dtype=np.float32)
  if tuple(calibration.shape[1:]) != shape:
    raise ConfigError(f'the run data has examples of shape {calibration.shape[1:]}; the model '
                      f'takes {shape}')  # fmt: skip
  return ExportSource(
    saved=saved,
    forward=forward,
    input_shape=shape,
    test=test,
    calibration=calibration,
    classes=None if classes is None else [int(c) for c in classes],
    pixel_max=pixel_max,
    run_config=config,
  )
