"""Distillation experiment: students distilled from a trained teacher, with and without data.

1. The teacher: loaded from any run's workdir (`config.teacher_workdir`: a saved model, e.g.
   a prune or distill run, or a federated run's newest global model) or trained centrally
   (`config.teacher`) into workdir/teacher/ (a rerun reuses it). Its weights and BatchNorm
   statistics are never updated: the run checks them bit for bit at the end.
2. The deployment (`config.deployment.classes`, default all): students have one output per
   deployment class; data, labels and the teacher's logits are restricted to those classes
   (fedcomp.compression.distillation.subset).
3. Transfer sets, one per method (`config.methods`, built once, cached in workdir/transfer/):
   'labels' (real data, cross-entropy with the labels: the no-teacher baseline), 'kd' (real
   data, KD: the upper bound), 'noise' (Gaussian inputs with the real inputs' per-channel
   mean and std), 'deepinversion' (BatchNorm statistics + class loss), 'dream' (Dream
   Distillation from metadata computed centrally on `config.metadata.fraction` of the
   training data) and 'dream_federated' (the same examples split over clients by
   `config.federated`; each client computes its own metadata on the teacher (a lax.map
   over the clients in one program), the server merges them; no example leaves its client).
4. Students: for each width of `config.student.widths` (the model's `width` option) and each
   method, a student trained for `config.train.steps` minibatch steps on its transfer set
   (KD with temperature `config.kd.temperature`; real-data KD mixes the labels with weight
   `config.kd.alpha`), evaluated on the real test set of the deployment's classes.

Writes in the workdir: config.json, teacher/ (when trained here), metadata.npz and
metadata_federated.npz (what would ship with the teacher; sizes in summary.json),
transfer/<method>.npz, students/<method>_w<width>/ (saved models), results/<method>_w<width>
.json (a rerun skips finished students), distill.csv, distill.md (accuracy table and, per
method, the smallest width within `config.deployment.tolerance` of the teacher), dreams.png
(a grid of dreams per class), summary.json, and model/ + model.json: the student of
`config.save` at the smallest width within tolerance (else the widest), for later tools.

References: Hinton et al. 2015 (KD); Bhardwaj, Suda, Marculescu 2019 (Dream Distillation,
arXiv 1905.07072); Yin et al. 2020 (DeepInversion); Pahwa et al. 2019 (class-subset
deployments, arXiv 1911.12740).
"""

import csv
import functools
import hashlib
import json
import os
import time
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fedcomp import data as fdata
from fedcomp import models, tasks
from fedcomp.compression.distillation import deepinversion, dream, subset, synthesis
from fedcomp.compression.distillation import metadata as md
from fedcomp.core.centralised import make_step_chunk
from fedcomp.core.evaluation import make_evaluator
from fedcomp.core.optimizer_step import OptimizerStep
from fedcomp.core.run_dir import RunDir, write_json_atomic
from fedcomp.core.saved_model import MODEL_JSON, describe, load_model, save_model
from fedcomp.data.federated import as_batch, build_federated_data
from fedcomp.data.subset import subsample
from fedcomp.experiments._teacher import load_or_train_teacher
from fedcomp.optim import make_tx
from fedcomp.registry import ConfigError, check_known_keys, lookup

KEYS = (
  'experiment', 'seed', 'data_name', 'data', 'train_examples', 'eval_examples',
  'teacher_workdir', 'teacher', 'student', 'deployment', 'methods', 'kd', 'train',
  'transfer_size', 'metadata', 'dream', 'deepinversion', 'federated', 'save',
  'eval_batch_size',
)  # fmt: skip
SECTIONS = {
  'teacher': ('model_name', 'model', 'epochs', 'batch_size', 'tx_name', 'tx'),
  'student': ('model_name', 'model', 'widths'),
  'deployment': ('classes', 'tolerance'),
  'kd': ('temperature', 'alpha'),
  'train': ('steps', 'batch_size', 'tx_name', 'tx', 'log_every'),
  'metadata': ('layer', 'fraction', 'clusters', 'components', 'iters', 'batch_size'),
  'dream': (*synthesis.SynthesisOptions._fields, 'spread', 'class_weight'),
  'deepinversion': (*synthesis.SynthesisOptions._fields, 'bn_weight'),
  'federated': ('partition_name', 'partition'),
}
SYNTHETIC = ('noise', 'deepinversion', 'dream', 'dream_federated')
METHODS = ('labels', 'kd', *SYNTHETIC)
RESUMABLE = ('methods', 'student.widths', 'save')


def _positive_int(value, key):
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f'config.{key}={value!r} must be a positive integer')


def _synthesis_options(section, key) -> synthesis.SynthesisOptions:
  kw = {k: section[k] for k in synthesis.SynthesisOptions._fields}
  return synthesis.SynthesisOptions(**kw).check(key)


def validate(config) -> None:
  """Keys, names and numbers, checked before any data is read or anything compiled."""
  check_known_keys(config, KEYS, 'config')
  for name, keys in SECTIONS.items():
    check_known_keys(config[name], keys, f'config.{name}')
  if not config.methods:
    raise ConfigError('config.methods is empty')
  for m in config.methods:
    lookup(dict.fromkeys(METHODS), m, 'methods entry')
  if len(set(config.methods)) != len(config.methods):
    raise ConfigError(f'config.methods={list(config.methods)} repeats a method')
  if config.save is not None and config.save not in config.methods:
    raise ConfigError(f'config.save={config.save!r} is not among config.methods')
  lookup(fdata.SOURCES, config.data_name, 'data_name')
  lookup(models.MODELS, config.student.model_name, 'student.model_name')
  widths = tuple(config.student.widths)
  if not widths or any(not isinstance(w, (int, float)) or w <= 0 for w in widths):
    raise ConfigError(f'config.student.widths={widths!r} must be positive numbers')
  if config.deployment.classes is not None and not len(config.deployment.classes):
    raise ConfigError('config.deployment.classes is empty: a deployment needs at least one class')
  if not 0 <= config.deployment.tolerance < 1:
    raise ConfigError(f'config.deployment.tolerance={config.deployment.tolerance} not in [0, 1)')
  if not config.kd.temperature > 0:
    raise ConfigError(f'config.kd.temperature={config.kd.temperature} must be > 0')
  if not 0 <= config.kd.alpha <= 1:
    raise ConfigError(f'config.kd.alpha={config.kd.alpha} must be in [0, 1]')
  for key in ('steps', 'batch_size', 'log_every'):
    _positive_int(config.train[key], f'train.{key}')
  make_tx(config.train.tx_name, config.train.tx, 'train.tx')
  _positive_int(config.transfer_size, 'transfer_size')
  _positive_int(config.eval_batch_size, 'eval_batch_size')
  m = config.metadata
  if not 0 < m.fraction <= 1:
    raise ConfigError(f'config.metadata.fraction={m.fraction} must be in (0, 1]')
  for key in ('clusters', 'components', 'iters', 'batch_size'):
    _positive_int(m[key], f'metadata.{key}')
  _synthesis_options(config.dream, 'dream')
  _synthesis_options(config.deepinversion, 'deepinversion')
  if config.dream.spread < 0 or config.dream.class_weight < 0:
    raise ConfigError('config.dream.spread and config.dream.class_weight must be >= 0')
  if config.deepinversion.bn_weight < 0:
    raise ConfigError(f'config.deepinversion.bn_weight={config.deepinversion.bn_weight} < 0')
  if config.teacher_workdir is None:
    t = config.teacher
    lookup(models.MODELS, t.model_name, 'teacher.model_name')
    _positive_int(t.epochs, 'teacher.epochs')
    _positive_int(t.batch_size, 'teacher.batch_size')
    make_tx(t.tx_name, t.tx, 'teacher.tx')
  elif not any(
    os.path.exists(os.path.join(config.teacher_workdir, f)) for f in ('config.json', MODEL_JSON)
  ):
    raise ConfigError(f'config.teacher_workdir={config.teacher_workdir!r} holds no run or model')


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the experiment (see the module docstring); returns the summary."""
  validate(config)
  rd = RunDir(workdir, config.to_dict(), resumable=RESUMABLE)
  try:
    return _run(config, rd)
  finally:
    rd.close()


def _fingerprint(tree) -> str:
  """A hash of every leaf's bytes (the teacher must not change, bit for bit)."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return h.hexdigest()


class _Context:
  """What every method needs: data, teacher, deployment classes, keys, the workdir."""

  def __init__(self, config, rd, dataset, teacher, classes):
    self.config, self.rd, self.dataset, self.classes = config, rd, dataset, classes
    self.model, self.params, self.state, self.meta = teacher
    self.shape = tuple(dataset.train['x'].shape[1:])
    self.key = jax.random.key(config.seed)
    self.train = subset.select(dict(as_batch(dataset.train)), classes)
    test = subset.select(dict(as_batch(dataset.test)), classes)
    n = config.get('eval_examples')
    self.test = {k: v[:n] for k, v in test.items() if k in ('x', 'y')}
    self.released = self._released_examples()
    self.stats = synthesis.InputStats.of(dataset.train['x'][self.released])
    self.synthesis_seconds = {}

  def _released_examples(self) -> np.ndarray:
    """Indices of the training examples the metadata is computed on (all classes: the
    metadata ships with the teacher, whatever the deployment)."""
    n = len(self.dataset.train['x'])
    size = max(1, int(round(self.config.metadata.fraction * n)))
    return np.sort(np.random.default_rng([self.config.seed, 13]).choice(n, size, replace=False))

  @functools.cached_property
  def teacher_logits_fn(self):
    """jit: (N, ...) inputs (N a multiple of 256) -> the teacher's logits, restricted."""
    classes = self.classes

    @jax.jit
    def logits(params, state, x):
      batches = x.reshape(-1, 256, *x.shape[1:])
      out = jax.lax.map(lambda b: self.model.apply(params, state, b)[0], batches)
      return subset.restrict_logits(out.reshape(x.shape[0], -1), classes)

    return logits

  def teacher_logits(self, x: np.ndarray) -> np.ndarray:
    n = len(x)
    pad = -n % 256
    xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    return np.asarray(self.teacher_logits_fn(self.params, self.state, jnp.asarray(xp)))[:n]


def _relabel(labels: np.ndarray, classes) -> np.ndarray:
  """Original class ids -> positions in the deployment's classes."""
  lookup_ = {c: i for i, c in enumerate(classes)}
  return np.asarray([lookup_[int(c)] for c in labels], np.int32)


def _metadata_arrays(ctx, rows, batch_size):
  """{'x', 'y', 'mask'} of the given training rows, padded to a multiple of batch_size."""
  x = ctx.dataset.train['x'][rows].astype(np.float32)
  y = ctx.dataset.train['y'][rows].astype(np.int32)
  pad = -len(rows) % batch_size
  mask = np.concatenate([np.ones(len(rows), bool), np.zeros(pad, bool)])
  x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), np.float32)])
  y = np.concatenate([y, np.zeros(pad, np.int32)])
  return {'x': x, 'y': y, 'mask': mask}


def _meta_kwargs(ctx):
  m = ctx.config.metadata
  return dict(layer=m.layer, num_classes=ctx.dataset.num_classes, clusters=m.clusters,
              components=m.components, iters=m.iters, batch_size=m.batch_size)  # fmt: skip


def central_metadata(ctx) -> md.Metadata:
  """Metadata of the released examples pooled in one place (workdir/metadata.npz)."""
  path = ctx.rd.path('metadata.npz')
  if os.path.exists(path):
    return md.load(path)[0]
  arrays = _metadata_arrays(ctx, ctx.released, ctx.config.metadata.batch_size)
  fn = jax.jit(functools.partial(dream.central_metadata, ctx.model, **_meta_kwargs(ctx)))
  meta = fn(ctx.params, ctx.state, arrays, key=jax.random.fold_in(ctx.key, 21))
  md.save(path, jax.device_get(meta), _released_extra(ctx, 'central'))
  return md.load(path)[0]


def _released_extra(ctx, how):
  return {'layer': ctx.config.metadata.layer, 'input_stats': ctx.stats.to_json(), 'merged': how,
          'examples': int(len(ctx.released))}  # fmt: skip


def federated_partition(ctx):
  """The released examples split over clients: config.federated, or, with a federated
  teacher run, that run's partition."""
  f = ctx.config.federated
  name, kwargs = f.partition_name, dict(f.partition or {})
  if name is None and ctx.config.teacher_workdir is not None:
    path = os.path.join(ctx.config.teacher_workdir, 'config.json')
    if os.path.exists(path):
      with open(path) as fh:
        teacher_config = json.load(fh)
      if teacher_config.get('experiment') == 'federated':
        name, kwargs = teacher_config['partition_name'], dict(teacher_config['partition'])
  if name is None:
    raise ConfigError(
      "config.methods has 'dream_federated': set config.federated.partition_name (and "
      'config.federated.partition) or use a federated run as teacher_workdir'
    )
  kwargs['local_test_fraction'] = 0.0
  released = fdata.Dataset(
    {k: v[ctx.released] for k, v in ctx.dataset.train.items()}, ctx.dataset.test,
    ctx.dataset.num_classes,
  )  # fmt: skip
  return build_federated_data(released, name, kwargs, ctx.config.seed)


def federated_metadata(ctx) -> md.Metadata:
  """Each client's metadata on its own examples, merged by the server
  (workdir/metadata_federated.npz)."""
  path = ctx.rd.path('metadata_federated.npz')
  if os.path.exists(path):
    return md.load(path)[0]
  fed = federated_partition(ctx)
  bs = ctx.config.metadata.batch_size
  n_max = int(-(-max(1, fed.client_sizes.max()) // bs) * bs)
  k = fed.num_clients
  clients = {
    'x': np.zeros((k, n_max, *ctx.shape), np.float32),
    'y': np.zeros((k, n_max), np.int32),
    'mask': np.zeros((k, n_max), bool),
    'index': np.arange(k, dtype=np.int32),
  }
  for c in range(k):  # host-side packing of numpy arrays, not per-client compute
    lo, hi = fed.offsets[c], fed.offsets[c + 1]
    clients['x'][c, : hi - lo] = fed.train['x'][lo:hi]
    clients['y'][c, : hi - lo] = fed.train['y'][lo:hi]
    clients['mask'][c, : hi - lo] = True
  kw = _meta_kwargs(ctx)
  key = jax.random.fold_in(ctx.key, 22)

  @jax.jit
  def fn(params, state, clients):
    stacked = dream.client_metadata(ctx.model, params, state, clients, key=key, **kw)
    return md.merge(stacked, kw['clusters'], kw['components'], jax.random.fold_in(key, 1),
                    kw['iters'])  # fmt: skip

  meta = fn(ctx.params, ctx.state, clients)
  extra = _released_extra(ctx, f'{k} clients')
  extra['client_sizes'] = [int(s) for s in fed.client_sizes]
  md.save(path, jax.device_get(meta), extra)
  return md.load(path)[0]


def _synthesise(ctx, name, batch_fn, labels_of):
  """Runs batch_fn(key, labels) -> x over the transfer set, batch by batch (one compiled
  program); returns (x, labels) and records seconds per 1,000 inputs (compile excluded)."""
  n = ctx.config.transfer_size
  section = ctx.config.dream if name.startswith('dream') else ctx.config.deepinversion
  bs = min(section.batch_size, n)
  batches = -(-n // bs)
  key = jax.random.fold_in(ctx.key, zlib.crc32(name.encode()))  # stable across processes
  xs, ys, t_run, t_first = [], [], 0.0, 0.0
  for b in range(batches):
    k_l, k_x = jax.random.split(jax.random.fold_in(key, b))
    labels = labels_of(k_l, bs)
    t = time.perf_counter()
    x, metrics = batch_fn(k_x, labels)
    x = np.asarray(x)
    dt = time.perf_counter() - t
    if b == 0:
      t_first = dt
      logging.info('%s batch 1/%d: %s', name, batches,
                   {k: round(float(v), 4) for k, v in metrics.items()})  # fmt: skip
    else:
      t_run += dt
    xs.append(x)
    ys.append(np.asarray(labels))
  timed = (batches - 1) * bs
  ctx.synthesis_seconds[name] = {
    'per_1000': 1000 * t_run / timed if timed else 1000 * t_first / bs,
    'first_batch_with_compile': t_first,
    'steps': section.steps,
    'batch_size': bs,
  }
  return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


def _uniform_labels(classes):
  cls = jnp.asarray(classes, jnp.int32)
  return lambda key, n: cls[jax.random.randint(key, (n,), 0, len(classes))]


def dream_transfer(ctx, meta: md.Metadata, name: str):
  """Dreams of the deployment's classes from `meta`."""
  d = ctx.config.dream
  opts = _synthesis_options(d, 'dream')
  loss_fn = dream.dream_loss(ctx.model, ctx.params, ctx.state, ctx.config.metadata.layer,
                             d.class_weight)  # fmt: skip

  @jax.jit
  def batch(meta, key, labels):
    k_t, k_x, k_o = jax.random.split(key, 3)
    targets = md.targets_for_labels(meta, k_t, labels, d.spread)
    x0 = synthesis.noise_inputs(k_x, labels.shape[0], ctx.shape, ctx.stats)
    return synthesis.optimise_inputs(loss_fn, x0, (targets, labels), k_o, opts, ctx.stats)

  return _synthesise(ctx, name, lambda k, y: batch(meta, k, y), _uniform_labels(ctx.classes))


def deepinversion_transfer(ctx):
  d = ctx.config.deepinversion
  opts = _synthesis_options(d, 'deepinversion')
  loss_fn = deepinversion.deepinversion_loss(ctx.model, ctx.params, ctx.state, d.bn_weight)

  @jax.jit
  def batch(key, labels):
    k_x, k_o = jax.random.split(key)
    x0 = synthesis.noise_inputs(k_x, labels.shape[0], ctx.shape, ctx.stats)
    return synthesis.optimise_inputs(loss_fn, x0, labels, k_o, opts, ctx.stats)

  return _synthesise(ctx, 'deepinversion', batch, _uniform_labels(ctx.classes))


def noise_transfer(ctx):
  key = jax.random.fold_in(ctx.key, 31)
  n = ctx.config.transfer_size
  x = np.asarray(synthesis.noise_inputs(key, n, ctx.shape, ctx.stats))
  return x, None


def transfer_set(ctx, method: str) -> dict:
  """The method's training arrays: 'x', 'y' (deployment positions) and, for KD,
  'teacher_logits' (restricted); cached in workdir/transfer/<method>.npz."""
  path = ctx.rd.path(os.path.join('transfer', f'{method}.npz'))
  if os.path.exists(path):
    with np.load(path) as f:
      return dict(f)
  if method in ('labels', 'kd'):
    x, y = ctx.train['x'].astype(np.float32), ctx.train['y']
  elif method == 'noise':
    x, y = noise_transfer(ctx)
  elif method == 'deepinversion':
    x, labels = deepinversion_transfer(ctx)
    y = _relabel(labels, ctx.classes)
  else:
    meta = central_metadata(ctx) if method == 'dream' else federated_metadata(ctx)
    x, labels = dream_transfer(ctx, meta, method)
    y = _relabel(labels, ctx.classes)
  out = {'x': x}
  if method == 'labels':
    out['y'] = y
  else:
    out['teacher_logits'] = ctx.teacher_logits(x)
    if method == 'kd':
      out['y'] = y
    elif y is not None:
      out['dream_class'] = y
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp.npz'
  np.savez(tmp, **out)
  os.replace(tmp, path)
  return out


def _student_task(config, method):
  if method == 'labels':
    return tasks.make_task('classification')
  alpha = config.kd.alpha if method == 'kd' else 0.0
  return tasks.make_task(
    'distillation', {'temperature': config.kd.temperature, 'hard_label_weight': alpha}
  )


def train_student(ctx, method: str, width: float, arrays: dict, evaluate) -> dict:
  """Trains and evaluates one student; saves it in students/<method>_w<width>/."""
  config = ctx.config
  s = config.student
  kwargs = dict(s.model)
  kwargs['width'] = float(width)
  model = models.build_model(s.model_name, kwargs, ctx.shape, len(ctx.classes), config.seed)
  task = _student_task(config, method)
  keys = set(task.batch_keys) - {'mask'}
  on_device = {k: jnp.asarray(arrays[k]) for k in keys}
  step = OptimizerStep(make_tx(config.train.tx_name, config.train.tx, 'train.tx'))
  chunk = make_step_chunk(task, model.apply, step, config.train.batch_size)
  params, state, opt_state = model.params, model.state, step.init(model.params)
  key = jax.random.fold_in(ctx.key, 41)
  t = time.perf_counter()
  done = 0
  while done < config.train.steps:
    n = min(config.train.log_every, config.train.steps - done)
    params, state, opt_state, loss = chunk(
      params, state, opt_state, on_device, jax.random.fold_in(key, done), n
    )
    done += n
    logging.info('%s w=%g: step %d/%d loss %.4f', method, width, done, config.train.steps,
                 float(loss))  # fmt: skip
  seconds = time.perf_counter() - t
  result = evaluate(model, params, state)
  out = {
    'method': method,
    'width': float(width),
    'params': int(sum(x.size for x in jax.tree.leaves(params))),
    'flops': int(model.flops_per_example),
    'train_sec': seconds,
    'transfer_examples': int(len(arrays['x'])),
    'accuracy': result['accuracy'],
    'loss': result['loss'],
  }
  meta = describe(s.model_name, kwargs, ctx.shape, len(ctx.classes), config.seed)
  meta.update(method=method, classes=list(ctx.classes), accuracy=out['accuracy'])
  save_model(ctx.rd.path(os.path.join('students', _run_name(method, width))), params, state, meta)
  logging.info('%s w=%g: test accuracy %.4f (%d params)', method, width, out['accuracy'],
               out['params'])  # fmt: skip
  return out


def _run_name(method, width):
  return f'{method}_w{float(width):g}'


def _run(config, rd: RunDir) -> dict:
  dataset = fdata.load_source(config.data_name, config.data, config.seed)
  if config.get('train_examples'):
    dataset = subsample(dataset, config.train_examples, config.seed)
  if dataset.num_classes is None:
    raise ConfigError(f'config.data_name={config.data_name!r} has no labels to distil')
  classes = subset.check_classes(config.deployment.classes, dataset.num_classes,
                                 'deployment.classes')  # fmt: skip
  shape = tuple(dataset.train['x'].shape[1:])
  _check_student(config, shape, len(classes))

  def check(model):
    if any(m.startswith('dream') for m in config.methods):
      layers = model.feature_names
      if config.metadata.layer not in layers:
        raise ConfigError(
          f'config.metadata.layer={config.metadata.layer!r} is not a layer of the teacher; '
          f'known: {", ".join(layers)}'
        )
    if 'deepinversion' in config.methods:
      deepinversion.check_teacher(model, shape)

  teacher = load_or_train_teacher(config, rd, dataset, check)
  ctx = _Context(config, rd, dataset, teacher, classes)
  before = _fingerprint((ctx.params, ctx.state))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('clients',))
  classify = tasks.make_task('classification')

  def evaluate(student, params, state):
    return make_evaluator(classify, student.apply, config.eval_batch_size, mesh)(
      params, state, ctx.test
    )

  logits = ctx.teacher_logits(ctx.test['x'].astype(np.float32))
  teacher_acc = float((logits.argmax(-1) == ctx.test['y']).mean())
  logging.info('teacher on classes %s: test accuracy %.4f', list(classes), teacher_acc)
  os.makedirs(rd.path('results'), exist_ok=True)
  rows = []
  for method in config.methods:
    arrays = None
    for width in config.student.widths:
      path = rd.path(os.path.join('results', f'{_run_name(method, width)}.json'))
      if os.path.exists(path):
        with open(path) as f:
          rows.append(json.load(f))
        continue
      if arrays is None:
        arrays = transfer_set(ctx, method)
      row = train_student(ctx, method, width, arrays, evaluate)
      write_json_atomic(path, row)
      rows.append(row)
  after = _fingerprint((ctx.params, ctx.state))
  if after != before:
    raise RuntimeError('the teacher changed during distillation (a bug): its hash differs')
  summary = _summary(config, ctx, rows, teacher_acc)
  summary['teacher']['fingerprint'] = after
  _write_tables(rd, rows, summary)
  if any(m.startswith('dream') or m == 'deepinversion' for m in config.methods):
    _plot_dreams(rd, ctx)
  _save_best(config, rd, summary)
  rd.write_json('summary.json', summary, indent=2, sort_keys=True)
  return summary


def _check_student(config, shape, num_classes):
  """Builds the student abstractly at every width: its options and its fit to the data's
  input shape fail here, in one line, before anything compiles."""
  s = config.student
  for width in s.widths:
    kwargs = dict(s.model)
    kwargs['width'] = float(width)
    models.check_model(s.model_name, kwargs, shape, num_classes, 'student.model')


def _summary(config, ctx, rows, teacher_acc) -> dict:
  tol = config.deployment.tolerance
  smallest = {}
  for method in config.methods:
    ok = sorted(
      (r for r in rows if r['method'] == method and r['accuracy'] >= teacher_acc - tol),
      key=lambda r: (r['params'], r['width']),
    )
    smallest[method] = ok[0]['width'] if ok else None
  sizes = {}
  for name in ('metadata.npz', 'metadata_federated.npz'):
    if os.path.exists(ctx.rd.path(name)):
      sizes[name] = os.path.getsize(ctx.rd.path(name))
  return {
    'teacher': {
      'accuracy': teacher_acc,
      'model_name': ctx.meta['model_name'],
      'params': int(sum(x.size for x in jax.tree.leaves(ctx.params))),
      'unchanged': True,
    },  # fmt: skip
    'classes': list(ctx.classes),
    'tolerance': tol,
    'smallest_within_tolerance': smallest,
    'metadata_bytes': sizes,
    'synthesis': ctx.synthesis_seconds,
    'rows': rows,
  }


def _write_tables(rd, rows, summary) -> None:
  fields = ['method', 'width', 'params', 'flops', 'accuracy', 'loss', 'train_sec',
            'transfer_examples']  # fmt: skip
  with open(rd.path('distill.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
    w.writeheader()
    w.writerows(rows)
  widths = sorted({r['width'] for r in rows})
  t = summary['teacher']
  lines = [
    f'teacher {t["model_name"]} ({t["params"]:,} params): accuracy {t["accuracy"]:.4f} on '
    f'classes {summary["classes"]}',
    '',
    'method | ' + ' | '.join(f'width {w:g}' for w in widths) + ' | smallest within '
    f'{summary["tolerance"]:g}',
    '|'.join(['---'] * (len(widths) + 2)),
  ]
  for method, best in summary['smallest_within_tolerance'].items():
    acc = {r['width']: r for r in rows if r['method'] == method}
    cells = [f'{acc[w]["accuracy"]:.4f}' if w in acc else '' for w in widths]
    lines.append(f'{method} | ' + ' | '.join(cells) + f' | {"" if best is None else f"{best:g}"}')
  params = {r['width']: r['params'] for r in rows}
  lines.append('params | ' + ' | '.join(f'{params[w]:,}' for w in widths) + ' |')
  if summary['metadata_bytes']:
    lines += ['', 'released metadata: ' + ', '.join(
      f'{k} {v:,} bytes' for k, v in summary['metadata_bytes'].items())]  # fmt: skip
  for name, s in summary['synthesis'].items():
    lines.append(f'{name}: {s["per_1000"]:.1f} s per 1,000 inputs ({s["steps"]} steps)')
  with open(rd.path('distill.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def _plot_dreams(rd, ctx, per_class: int = 8) -> None:
  """dreams.png: `per_class` synthetic inputs of each deployment class, one row per method
  and class (the first channel, or RGB)."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  sets = []
  for method in ('dream', 'dream_federated', 'deepinversion'):
    path = rd.path(os.path.join('transfer', f'{method}.npz'))
    if os.path.exists(path):
      with np.load(path) as f:
        sets.append((method, f['x'], f['dream_class']))
  classes = range(len(ctx.classes))
  rows = [(m, c) for m, _, _ in sets for c in classes]
  fig, axes = plt.subplots(len(rows), per_class, figsize=(per_class, len(rows)), squeeze=False)
  for r, (method, c) in enumerate(rows):
    x, y = next((x, y) for m, x, y in sets if m == method)
    picks = np.flatnonzero(y == c)[:per_class]
    for j in range(per_class):
      ax = axes[r, j]
      ax.axis('off')
      if j < len(picks):
        img = x[picks[j]]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else np.clip(img, 0, 1), cmap='gray')
    axes[r, 0].set_title(f'{method} class {ctx.classes[c]}', fontsize=6, loc='left')
  fig.tight_layout()
  fig.savefig(rd.path('dreams.png'), dpi=100)
  plt.close(fig)


def _save_best(config, rd, summary) -> None:
  """model/: the student of config.save at the smallest width within tolerance (else the
  widest)."""
  if config.save is None:
    return
  best = summary['smallest_within_tolerance'].get(config.save)
  width = best if best is not None else max(config.student.widths)
  saved = load_model(rd.path(os.path.join('students', _run_name(config.save, width))))
  save_model(rd.workdir, saved.params, saved.model_state, saved.meta)
