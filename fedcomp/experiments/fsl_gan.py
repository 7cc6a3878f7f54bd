"""FSL-GAN: federated split GANs with capacity-aware placement, a server generator and a
simulated clock (experiment `fsl_gan`).

`run(config, workdir)`:
1. data scaled to [−1, 1] (optionally a random subset of `train_examples`); the training
   set split over `users` (`split`: 'iid' equal random shares, 'proportions' the
   notebook's random shares, or any fedcomp partition by name with `split_kwargs`, e.g.
   'shards' for label skew);
2. placement (`fedcomp.gan.placement`): each user's devices (`devices.capacities`,
   `devices.time_factors`, optionally jittered per user) host the discriminator's parts A→B→C
   greedily in `placement` order; users who cannot host every part are dropped and reported.
   `mode='unsplit'`: each user's whole discriminator on its first device in that order,
   capacity ignored (federated without splitting); `mode='central'`: one discriminator on
   all the data (the unconstrained "cloud");
3. every step: the server's generator makes `fakes` images; every kept user's
   discriminator takes a BCE step on its real rows of the step and the fakes, each part
   with its own Adam (`optax.multi_transform`); the generator's loss is summed over all
   discriminators and the server takes one Adam step. The users are vmapped and an epoch is
   a `lax.scan` over its steps: one compiled call per epoch. Each epoch cuts every user's
   shard into S = ceil(kept examples / real_per_step) steps (a user's step batch is
   proportional to its share, as the notebook's split of 2,560 images);
4. after each epoch each part is averaged across users (`averaging`: 'uniform' as the
   notebook, or 'examples'); optimizer states stay with their users;
5. the simulated clock (`fedcomp.gan.clock`): each part's forward+backward time measured on
   this machine at the step's batch (once per run, kept in clock.json), × the hosting
   device's time factor, + `link_ms` per hop; an epoch takes the slowest user;
   metrics.jsonl has simulated and wall time;
6. every `eval_every` epochs: a Fréchet distance in the penultimate features of a
   classifier trained by fedcomp on the same data (`classifier`, or `classifier_workdir`)
   and its accuracy-weighted class coverage (`fedcomp.gan.quality`); sample grids
   (samples_<epoch>.png) every `sample_every` epochs; checkpoints every epoch (a killed run
   resumes from its last epoch and ends where an uninterrupted one would).

References: Kortoçi et al. 2022, "Federated Split GANs" (arXiv 2207.01750) and its notebook;
Radford et al. 2016 (DCGAN); Heusel et al. 2017 (the Fréchet distance).
"""

import json
import math
import os
import time
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from fedcomp import data as fdata
from fedcomp.core.run_dir import RunDir
from fedcomp.core.saved_model import MODEL_JSON
from fedcomp.data.federated import as_float
from fedcomp.data.partitions import PARTITIONS
from fedcomp.data.subset import subsample
from fedcomp.experiments._teacher import load_or_train_teacher
from fedcomp.gan import clock, losses, quality
from fedcomp.gan.dcgan import PART_NAMES, Discriminator, Generator, part_sizes
from fedcomp.gan.placement import ORDERS, Device, Placement, place_users
from fedcomp.registry import ConfigError, check_known_keys, lookup
from fedcomp.utils.checkpoint import Checkpointer

KEYS = ('experiment', 'seed', 'data_name', 'data', 'train_examples', 'mode', 'users',
        'devices', 'placement', 'split', 'split_kwargs', 'fakes', 'real_per_step', 'epochs',
        'noise_dim', 'g_learning_rate', 'd_learning_rate', 'adam_b1', 'averaging', 'link_ms',
        'eval_every', 'eval_samples', 'sample_every', 'classifier',
        'classifier_workdir')  # fmt: skip
MODES = ('split', 'unsplit', 'central')
SPLITS = ('iid', 'proportions')
AVERAGING = ('uniform', 'examples')


def validate(config) -> None:
  """Keys, names and numbers, before any data is read or anything compiled."""
  check_known_keys(config, KEYS, 'config')
  check_known_keys(config.devices, ('capacities', 'time_factors', 'jitter'), 'config.devices')
  lookup(fdata.SOURCES, config.data_name, 'data_name')
  lookup(dict.fromkeys(MODES), config.mode, 'mode')
  lookup(dict.fromkeys(ORDERS), config.placement, 'placement')
  lookup(dict.fromkeys(AVERAGING), config.averaging, 'averaging')
  if config.split not in SPLITS:
    lookup(PARTITIONS, config.split, 'split')
  for key in ('users', 'fakes', 'real_per_step', 'epochs', 'noise_dim', 'eval_every',
              'eval_samples', 'sample_every'):  # fmt: skip
    v = config[key]
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
      raise ConfigError(f'config.{key}={v!r} must be a positive integer')
  d = config.devices
  if len(d.capacities) != len(d.time_factors) or not len(d.capacities):
    raise ConfigError('config.devices.capacities and time_factors must be equally long lists')
  if any(t <= 0 for t in d.time_factors) or not 0 <= d.jitter < 1:
    raise ConfigError('config.devices: time factors must be > 0 and jitter in [0, 1)')
  if not config.g_learning_rate > 0 or not config.d_learning_rate > 0 or config.link_ms < 0:
    raise ConfigError('config: learning rates must be > 0 and link_ms >= 0')
  if not 0 <= config.adam_b1 < 1:
    raise ConfigError(f'config.adam_b1={config.adam_b1!r} must be in [0, 1)')


def user_shards(config, dataset) -> list[np.ndarray]:
  """Indices of each user's training examples (`split`), or one shard for 'central'."""
  n = dataset.num_train
  rng = np.random.default_rng([config.seed, 11])
  if config.mode == 'central':
    return [rng.permutation(n)]
  u = config.users
  if config.split == 'iid':
    return np.array_split(rng.permutation(n), u)
  if config.split == 'proportions':  # the notebook: random.sample(range(100), u), normalised
    weights = rng.choice(np.arange(1, 100), size=u, replace=False).astype(np.float64)
    cuts = np.round(np.cumsum(weights / weights.sum()) * n).astype(int)[:-1]
    return np.split(rng.permutation(n), cuts)
  return PARTITIONS[config.split](dataset, u, rng, **dict(config.split_kwargs))


def user_devices(config) -> list[list[Device]]:
  """Each user's devices: the configured ones, time factors jittered per user."""
  d = config.devices
  rng = np.random.default_rng([config.seed, 13])
  out = []
  for _ in range(config.users):
    jitter = rng.uniform(1 - d.jitter, 1 + d.jitter, len(d.time_factors))
    out.append([Device(int(c), float(t * j))
                for c, t, j in zip(d.capacities, d.time_factors, jitter)])  # fmt: skip
  return out


def placements(config, sizes) -> tuple[list[Placement], list[list[Device]]]:
  """Per user: where its parts run (see the module docstring's modes)."""
  users = user_devices(config)
  if config.mode == 'central':
    return [Placement((0,) * len(sizes), (0,))], [[Device(sum(sizes), 1.0)]]
  if config.mode == 'split':
    return place_users(sizes, users, config.placement, config.seed), users
  big = [[Device(sum(sizes), d.time_factor) for d in devs] for devs in users]
  first = place_users((sum(sizes),), big, config.placement, config.seed)
  return [Placement((p.order[0],) * len(sizes), p.order) for p in first], big


def _stack(trees):
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


class _Programs:
  """The jitted epoch, the per-part timings and the quality evaluation of one run."""

  def __init__(self, config, shape, users: int):
    self.config = config
    gen = Generator(config.noise_dim, shape, nnx.Rngs(config.seed))
    self.g_apply, self.g_params, self.g_state = losses.pure(gen)
    discs = [Discriminator(shape, nnx.Rngs(1000 * config.seed + 1 + u)) for u in range(users)]
    pures = [losses.pure(d) for d in discs]
    self.d_apply = pures[0][0]
    self.d_params = _stack([p[1] for p in pures])
    self.d_state = _stack([p[2] for p in pures])
    self.g_tx = optax.adam(config.g_learning_rate, b1=config.adam_b1)
    labels = {n: jax.tree.map(lambda _, n=n: n, pures[0][1][n]) for n in PART_NAMES}
    self.d_tx = optax.multi_transform(
      {n: optax.adam(config.d_learning_rate, b1=config.adam_b1) for n in PART_NAMES}, labels
    )
    self.epoch = jax.jit(self._epoch, donate_argnums=(0,))

  def init_state(self) -> dict:
    return {
      'g_params': self.g_params, 'g_state': self.g_state,
      'g_opt': self.g_tx.init(self.g_params),
      'd_params': self.d_params, 'd_state': self.d_state,
      'd_opt': jax.vmap(self.d_tx.init)(self.d_params),
    }  # fmt: skip

  def _epoch(self, state, real, mask, key):
    """real (S, U, B, ...), mask (S, U, B): one scan over the epoch's steps."""
    cfg, d_apply, g_apply = self.config, self.d_apply, self.g_apply

    def step(state, inputs):
      x, m, k = inputs
      kz, kd, kg = jax.random.split(k, 3)
      z = jax.random.normal(kz, (cfg.fakes, cfg.noise_dim))
      fakes, _ = g_apply(state['g_params'], state['g_state'], z, train=True)
      users = m.shape[0]
      keys = jax.random.split(kd, users)

      def d_step(p, s, opt, xu, mu, ku):
        loss, grads = jax.value_and_grad(losses.discriminator_loss, argnums=1)(
          d_apply, p, s, xu, mu, fakes, ku
        )
        updates, opt = self.d_tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, loss

      d_params, d_opt, d_loss = jax.vmap(d_step)(
        state['d_params'], state['d_state'], state['d_opt'], x, m, keys
      )

      def g_loss(gp):
        return losses.generator_loss(g_apply, gp, state['g_state'], d_apply, d_params,
                                     state['d_state'], z, kg)  # fmt: skip

      (g_value, g_state), g_grads = jax.value_and_grad(g_loss, has_aux=True)(state['g_params'])
      updates, g_opt = self.g_tx.update(g_grads, state['g_opt'], state['g_params'])
      new = dict(state, d_params=d_params, d_opt=d_opt, g_state=g_state, g_opt=g_opt,
                 g_params=optax.apply_updates(state['g_params'], updates))  # fmt: skip
      return new, (d_loss.mean(), g_value)

    keys = jax.random.split(key, real.shape[0])
    state, (d_loss, g_loss) = jax.lax.scan(step, state, (real, mask, keys))
    return state, d_loss.mean(), g_loss.mean()

  def part_ms(self, batch: int, shape, repeats: int = 3) -> list[float]:
    """Each part's training forward+backward time (ms) on this machine for `batch` images."""
    parts = Discriminator(shape, nnx.Rngs(0)).parts
    x = jnp.zeros((batch, *shape), jnp.float32)
    key = jax.random.key(0)
    out = []
    for part in parts:
      apply, p, s = losses.pure(part)

      def total(p, x, apply=apply, s=s):
        return apply(p, s, x, train=True, key=key)[0].sum()

      fn = jax.jit(jax.grad(total, (0, 1)))
      jax.block_until_ready(fn(p, x))
      times = []
      for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(p, x))
        times.append(1e3 * (time.perf_counter() - t))
      out.append(float(np.median(times)))
      x = apply(p, s, x)[0]
    return out


def average_parts(d_params, weights: np.ndarray):
  """Every part averaged across users with `weights` (summing to 1), given back to all."""
  w = jnp.asarray(weights, jnp.float32)

  def avg(a):
    mean = jnp.tensordot(w, a, axes=1)
    return jnp.broadcast_to(mean, a.shape)

  return jax.tree.map(avg, d_params)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the GAN as the config says (see the module docstring); returns the summary."""
  validate(config)
  rd = RunDir(workdir, config.to_dict(), resumable=('epochs',))
  try:
    return _run(config, rd)
  finally:
    rd.close()


def _run(config, rd) -> dict:
  dataset = fdata.load_source(config.data_name, config.data, config.seed)
  if config.get('train_examples'):
    dataset = subsample(dataset, config.train_examples, config.seed)
  shape = tuple(dataset.train['x'].shape[1:])
  sizes = part_sizes(Discriminator(shape, nnx.Rngs(0)))
  where, devices = placements(config, sizes)
  kept = [u for u, p in enumerate(where) if not p.dropped]
  dropped = [u for u, p in enumerate(where) if p.dropped]
  if not kept:
    raise ConfigError(
      f'config.devices: every user is dropped: no user can host the parts {list(sizes)} '
      f'on devices of capacities {list(config.devices.capacities)}'
    )
  all_shards = user_shards(config, dataset)
  shards = [all_shards[u] for u in kept]
  shim = types.SimpleNamespace(teacher_workdir=_classifier_source(config.classifier_workdir),
                               teacher=config.classifier, seed=config.seed)  # fmt: skip
  clf_model, clf_params, clf_state, _ = load_or_train_teacher(
    shim, rd, dataset, lambda m: None, name='classifier'
  )
  x01 = as_float(dataset.train['x'])
  x_all = 2.0 * x01 - 1.0
  counts = np.array([len(s) for s in shards])
  steps = math.ceil(counts.sum() / config.real_per_step)
  per_user = -(-counts // steps)  # a user's rows per step, ∝ its share
  batch = int(per_user.max())
  programs = _Programs(config, shape, len(kept))
  # Measured once per run and kept, so a resumed run's clock continues the same way.
  clock_path = rd.path('clock.json')
  if os.path.exists(clock_path):
    with open(clock_path) as f:
      part_ms = json.load(f)['part_ms']
  else:
    part_ms = programs.part_ms(batch + config.fakes, shape)
    rd.write_json('clock.json', {'part_ms': part_ms, 'batch': batch + config.fakes})
  kept_where = [where[u] for u in kept]
  kept_devices = [devices[u] for u in kept]
  epoch_ms = clock.epoch_time_ms(kept_where, kept_devices, part_ms, steps, config.link_ms)
  logging.info('fsl_gan %s: %d users kept, dropped %s; %d steps/epoch of <= %d real rows; '
               'parts %s ms; simulated %.1f s/epoch', config.mode, len(kept), dropped, steps,
               batch, [round(t, 2) for t in part_ms], epoch_ms / 1e3)  # fmt: skip
  weights = counts / counts.sum() if config.averaging == 'examples' else np.full(
    len(kept), 1.0 / len(kept))  # fmt: skip

  evaluate = _quality_fn(config, clf_model, clf_params, clf_state, dataset, programs)
  ckpt = Checkpointer(rd.path('checkpoints'), max_to_keep=1)
  try:
    state = programs.init_state()
    start = ckpt.latest_round()
    if start is not None:
      state, _ = ckpt.restore(start, state)
    start = start or 0
    writer = rd.metrics(resume_after=start)
    t0 = time.time()
    last = {}
    for epoch in range(start, config.epochs):
      real, mask = _epoch_batches(config, x_all, shards, per_user, steps, epoch)
      key = jax.random.fold_in(jax.random.key(config.seed), epoch)
      state, d_loss, g_loss = programs.epoch(state, jnp.asarray(real), jnp.asarray(mask), key)
      state['d_params'] = average_parts(state['d_params'], weights)
      done = epoch + 1
      last = {'d_loss': float(d_loss), 'g_loss': float(g_loss),
              'simulated_s': done * epoch_ms / 1e3, 'wall_s': time.time() - t0}  # fmt: skip
      if done % config.eval_every == 0 or done == config.epochs:
        last.update(evaluate(state))
      if done % config.sample_every == 0 or done == config.epochs:
        _sample_grid(rd.path(f'samples_{done:04d}.png'), programs, state, config.seed)
      writer.write(done, last)
      ckpt.save(done, state, {'epoch': done})
      logging.info('epoch %d/%d: %s', done, config.epochs,
                   ' '.join(f'{k} {v:.4g}' for k, v in last.items()))  # fmt: skip
    writer.close()
  finally:
    ckpt.close()
  summary = dict(rd.last_logged(), mode=config.mode, users_kept=kept, users_dropped=dropped,
                 placement=[list(p.device_of_part) for p in kept_where],
                 part_ms=part_ms, simulated_s_per_epoch=epoch_ms / 1e3,
                 steps_per_epoch=steps, epochs=config.epochs)  # fmt: skip
  rd.write_json('summary.json', summary, indent=2, sort_keys=True)
  return summary


def _classifier_source(workdir):
  """`classifier_workdir` as given, or its `classifier/` when it is another fsl_gan run's."""
  if workdir is None:
    return None
  own = os.path.join(workdir, 'classifier')
  return own if os.path.exists(os.path.join(own, MODEL_JSON)) else workdir


def _epoch_batches(config, x_all, shards, per_user, steps, epoch):
  """(S, U, B, ...) real rows and (S, U, B) masks: each user's shard shuffled (seeded by the
  epoch, so a resumed run draws the same) and cut into the epoch's steps."""
  rng = np.random.default_rng([config.seed, 17, epoch])
  batch = int(per_user.max())
  real = np.zeros((steps, len(shards), batch, *x_all.shape[1:]), np.float32)
  mask = np.zeros((steps, len(shards), batch), bool)
  for u, shard in enumerate(shards):
    order = rng.permutation(shard)
    for s in range(steps):
      rows = order[s * per_user[u] : (s + 1) * per_user[u]]
      real[s, u, : len(rows)] = x_all[rows]
      mask[s, u, : len(rows)] = True
  return real, mask


def _quality_fn(config, model, params, state, dataset, programs):
  """train state -> {'fid', 'coverage'} of `eval_samples` generated images vs as many test ones."""
  apply = jax.jit(lambda x: model.taps(params, state, x))
  test = as_float(dataset.test['x'][: config.eval_samples])
  test_y = dataset.test['y']

  def features(x01):
    feats, preds = [], []
    for i in range(0, len(x01), 500):
      logits, _, taps = apply(jnp.asarray(x01[i : i + 500]))
      feats.append(np.asarray(taps['features']['penultimate']))
      preds.append(np.asarray(logits).argmax(1))
    return np.concatenate(feats), np.concatenate(preds)

  real_feats, _ = features(test)
  _, test_pred = features(as_float(dataset.test['x']))
  classes = dataset.num_classes
  class_acc = np.array([(test_pred[test_y == c] == c).mean() if (test_y == c).any() else 0.0
                        for c in range(classes)])  # fmt: skip
  gen = jax.jit(lambda p, s, z: programs.g_apply(p, s, z)[0])

  def evaluate(train_state):
    z = jax.random.normal(jax.random.key(config.seed + 99), (config.eval_samples, config.noise_dim))
    fakes = (np.asarray(gen(train_state['g_params'], train_state['g_state'], z)) + 1.0) / 2.0
    fake_feats, fake_pred = features(fakes)
    return {'fid': quality.frechet_distance(real_feats, fake_feats),
            'coverage': quality.class_coverage(fake_pred, classes, class_acc)}  # fmt: skip

  return evaluate


def _sample_grid(path, programs, state, seed, rows: int = 8) -> None:
  """An 8×8 grid of generated images (fixed noise, so grids of epochs compare)."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  z = jax.random.normal(jax.random.key(seed + 7), (rows * rows, programs.config.noise_dim))
  images = np.asarray(programs.g_apply(state['g_params'], state['g_state'], z)[0])
  fig, axes = plt.subplots(rows, rows, figsize=(rows, rows))
  for ax, img in zip(axes.ravel(), images):
    ax.imshow((img[..., 0] + 1) / 2, cmap='gray', vmin=0, vmax=1)
    ax.axis('off')
  fig.tight_layout(pad=0.1)
  fig.savefig(path, dpi=60)
  plt.close(fig)
