"""Centralised optimizer comparison: training loss against steps and wall time.

For each optimizer in `config.optimizers.grid` and each of its learning rates,
trains the model from the same initialisation on the same minibatch sequence for
`config.total_steps` steps (one jitted call per `config.log_every_steps` steps)
and records the mean training loss of each logged window and the wall time.
The best learning rate of each optimizer is the one with the lowest final loss
(mean of the last `final_window` logged windows); a diverged run (non-finite
loss) ranks last.

Tasks (`config.task_name`, fedcomp.tasks): 'reconstruction' (Bernoulli likelihood:
sigmoid cross-entropy of the logits against the input pixels, summed over pixels) and
'classification' (softmax cross-entropy). FishLeg gets the negative log-likelihood of
targets sampled from the model as its extra argument.

Writes in the workdir: runs/<optimizer>_<lr>.json (one per finished run, with
FishLeg's aux loss A(λ; u) at each log; a rerun skips those), optimizers.csv,
summary.json (best learning rates, final losses, the step at which each best run
first reached the best Adam run's final loss, and the median seconds per step of
each), loss_vs_steps.png and loss_vs_time.png.
"""

import csv
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fedcomp import data as fdata
from fedcomp import models, tasks
from fedcomp.core.optimizer_step import OptimizerStep, train_step
from fedcomp.core.run_dir import RunDir
from fedcomp.data.federated import as_batch
from fedcomp.data.subset import subsample
from fedcomp.optim import fishleg_transform, make_tx
from fedcomp.registry import ConfigError, check_known_keys

TASKS = ('classification', 'reconstruction')


def make_chunk_fn(task, apply, step: OptimizerStep, batch_size: int, steps: int):
  """jit: `steps` optimizer steps on random minibatches -> (params, state, opt_state, mean loss).

  Each step draws batch_size examples uniformly with replacement and takes one
  fedcomp.core.optimizer_step.train_step (FishLeg gets the NLL of model-sampled targets on
  the same minibatch as its extra argument).
  """
  loss_fn, nll_of = tasks.bind(task, apply)

  @jax.jit
  def chunk(params, model_state, opt_state, data, key):
    n = data['x'].shape[0]

    def one(carry, k):
      k_batch, k_loss, k_fisher = jax.random.split(k, 3)
      idx = jax.random.randint(k_batch, (batch_size,), 0, n)
      batch = {name: a[idx] for name, a in data.items()}
      batch['mask'] = jnp.ones(batch_size, bool)
      params, model_state, opt_state, sums, _ = train_step(
        loss_fn, step, *carry, batch, k_loss, nll_of=nll_of, optimizer_key=k_fisher
      )
      return (params, model_state, opt_state), tasks.mean_of(sums)

    (params, model_state, opt_state), losses = jax.lax.scan(
      one, (params, model_state, opt_state), jax.random.split(key, steps)
    )
    return params, model_state, opt_state, losses.mean()

  return chunk


def fishleg_aux_loss(opt_state) -> float | None:
  """A(λ; u) at the last aux step of the first FishLeg transform in `opt_state`, if any."""
  state = fishleg_transform.find_state(opt_state, fishleg_transform.ScaleByFishLegState)
  return None if state is None else float(state.aux_loss)


KEYS = (
  'experiment',
  'seed',
  'data_name',
  'data',
  'train_examples',
  'task_name',
  'task',
  'model_name',
  'model',
  'batch_size',
  'total_steps',
  'log_every_steps',
  'final_window',
  'optimizers',
)


def _check(config):
  check_known_keys(config, KEYS, 'config')
  check_known_keys(config.optimizers, ('grid', 'kwargs'), 'config.optimizers')
  for key in ('total_steps', 'log_every_steps', 'batch_size', 'final_window'):
    v = config[key]
    if not isinstance(v, int) or v <= 0:
      raise ConfigError(f'config.{key}={v!r} must be a positive integer')
  if config.total_steps % config.log_every_steps:
    raise ConfigError(
      f'config.total_steps={config.total_steps} must be a multiple of '
      f'config.log_every_steps={config.log_every_steps}'
    )
  if config.task_name not in TASKS:
    raise ConfigError(
      f'config.task_name={config.task_name!r} is unknown; known: {", ".join(TASKS)}'
    )
  grid = config.optimizers.grid
  if not grid:
    raise ConfigError('config.optimizers.grid is empty')
  for name, lrs in grid.items():
    kwargs = dict(config.optimizers.kwargs.get(name, {}))
    for lr in lrs:
      make_tx(name, {**kwargs, 'learning_rate': lr}, f'optimizers.grid.{name}')


def run_one(config, setup, name: str, lr: float) -> dict:
  """Trains with one optimizer and learning rate; returns its logged curve."""
  model, data, task = setup
  kwargs = dict(config.optimizers.kwargs.get(name, {}))
  step = OptimizerStep(make_tx(name, {**kwargs, 'learning_rate': lr}, f'optimizers.grid.{name}'))
  chunk = make_chunk_fn(task, model.apply, step, config.batch_size, config.log_every_steps)
  params, model_state = model.params, model.state
  opt_state = step.init(params)
  key = jax.random.key(config.seed)
  t = time.perf_counter()
  params, model_state, opt_state, loss = chunk(
    params, model_state, opt_state, data, jax.random.fold_in(key, 0)
  )
  jax.block_until_ready(loss)
  compile_and_first = time.perf_counter() - t
  steps, losses, walls, chunk_secs = [config.log_every_steps], [float(loss)], [0.0], []
  aux_losses = [fishleg_aux_loss(opt_state)]
  wall = 0.0
  for i in range(1, config.total_steps // config.log_every_steps):
    t = time.perf_counter()
    params, model_state, opt_state, loss = chunk(
      params, model_state, opt_state, data, jax.random.fold_in(key, i)
    )
    loss = float(loss)  # blocks
    dt = time.perf_counter() - t
    wall += dt
    chunk_secs.append(dt)
    steps.append((i + 1) * config.log_every_steps)
    losses.append(loss)
    walls.append(wall)
    aux_losses.append(fishleg_aux_loss(opt_state))
    if not np.isfinite(loss):
      break
  return {
    'optimizer': name,
    'learning_rate': lr,
    'steps': steps,
    'loss': losses,
    'wall_sec': walls,
    'aux_loss': aux_losses,  # FishLeg's A(λ; u) at its last aux step (None for others)
    'sec_per_step': float(np.median(chunk_secs)) / config.log_every_steps if chunk_secs else None,
    'first_chunk_sec': compile_and_first,
  }


def _final(run, window):
  tail = run['loss'][-window:]
  if len(run['steps']) < 2 or not all(np.isfinite(tail)):
    return float('inf')
  return float(np.mean(tail))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the comparison (see the module docstring); returns the summary."""
  _check(config)
  rd = RunDir(workdir, config.to_dict(), resumable=('optimizers.grid',))
  os.makedirs(os.path.join(workdir, 'runs'), exist_ok=True)
  dataset = fdata.load_source(config.data_name, config.data, config.seed)
  if config.get('train_examples'):
    dataset = subsample(dataset, config.train_examples, config.seed)
  task = tasks.make_task(config.task_name, config.get('task'))
  model = models.build_model(
    config.model_name, config.model, dataset.feature_shape, dataset.num_classes, config.seed
  )
  rd.record_config()
  data = {k: jnp.asarray(v) for k, v in as_batch(dataset.train).items() if k in task.batch_keys}
  setup = (model, data, task)

  runs = []
  for name, lrs in config.optimizers.grid.items():
    for lr in lrs:
      path = os.path.join(workdir, 'runs', f'{name}_{lr:g}.json')
      if os.path.exists(path):
        with open(path) as f:
          runs.append(json.load(f))
        continue
      result = run_one(config, setup, name, float(lr))
      result['final_loss'] = _final(result, config.final_window)
      tmp = path + '.tmp'
      with open(tmp, 'w') as f:
        json.dump(result, f)
      os.replace(tmp, path)
      logging.info(
        '%s lr %g: final loss %.4f, %.2f ms/step',
        name,
        lr,
        result['final_loss'],
        1e3 * (result['sec_per_step'] or float('nan')),
      )
      runs.append(result)

  with open(os.path.join(workdir, 'optimizers.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['optimizer', 'learning_rate', 'step', 'train_loss', 'wall_sec'])
    for r in runs:
      for s, loss, t in zip(r['steps'], r['loss'], r['wall_sec']):
        w.writerow([r['optimizer'], r['learning_rate'], s, loss, t])

  best = {}
  for r in runs:
    if r['optimizer'] not in best or r['final_loss'] < best[r['optimizer']]['final_loss']:
      best[r['optimizer']] = r
  summary = {'task': config.task_name, 'model': config.model_name, 'best': {}}
  target = best['adam']['final_loss'] if 'adam' in best else None
  for name, r in best.items():
    reach = None
    if target is not None and np.isfinite(target):
      hit = [s for s, loss in zip(r['steps'], r['loss']) if loss <= target]
      reach = hit[0] if hit else None
    summary['best'][name] = {
      'learning_rate': r['learning_rate'],
      'final_loss': r['final_loss'],
      'sec_per_step': r['sec_per_step'],
      'steps_to_adam_final_loss': reach,
    }
  if 'adam' in best and 'fishleg' in best and best['adam']['sec_per_step']:
    summary['fishleg_time_per_step_over_adam'] = (
      best['fishleg']['sec_per_step'] / best['adam']['sec_per_step']
    )
  rd.write_json('summary.json', summary, indent=2, sort_keys=True)
  _plot(workdir, best)
  return summary


def _plot(workdir: str, best: dict) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  for x_key, name, label in (
    ('steps', 'loss_vs_steps.png', 'step'),
    ('wall_sec', 'loss_vs_time.png', 'wall time (s, compile excluded)'),
  ):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for opt, r in best.items():
      ax.plot(r[x_key], r['loss'], label=f'{opt} (lr {r["learning_rate"]:g})')
    ax.set(xlabel=label, ylabel='training loss')
    # Leave out the first tenth of each curve, where the losses are far above the rest.
    tails = [np.asarray(r['loss'][len(r['loss']) // 10 :]) for r in best.values()]
    finite = np.concatenate([t[np.isfinite(t)] for t in tails])
    if finite.size:
      low, high = finite.min(), max(t[0] for t in tails if np.isfinite(t[0]))
      ax.set_ylim(low - 0.02 * (high - low), high)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, name), dpi=120)
    plt.close(fig)
