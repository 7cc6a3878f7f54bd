"""Pruning experiment: one-shot and gradual pruning of a trained model with each scorer.

1. The dense model: loaded from a run's workdir (`config.init_from`: a saved model, e.g.
   another prune run's W/dense, or a federated run's newest global model), or trained
   centrally (`config.dense`) and saved in workdir/dense/ (a rerun reuses it).
2. One-shot: for each scorer and each sparsity in `config.prune.sparsities`, prune the dense
   model in one step (FLS: Q pre-trained once on the dense model, then refined at each
   call; OBS/OBD: m gradients at each call), evaluate, fine-tune `finetune_steps` steps with
   the masks fixed, evaluate again.
3. Gradual: for each scorer and each target in `config.prune.gradual_targets`, train from
   the dense model for `gradual_steps` steps with the pruning wrapper on a cubic schedule
   (a mask update every `gradual_every` steps until `gradual_end_fraction` of the steps),
   the rest fine-tuning with fixed masks: every scorer gets the same training budget.

Writes in the workdir: config.json, dense/ (the dense model), results/<run>.json (one per
finished run; a rerun skips them), pruning.csv, pruning.md (tables), accuracy_vs_sparsity.png,
summary.json (dense accuracy, per scorer: curvature memory and seconds per pruning step),
and model/ + model.json: the gradual model of `config.prune.save` (scorer) at the highest
target, for later tools (fedcomp.core.saved_model.load_model).

Extras the scorers need: `grad_fn(params, key)`, the training loss's gradient on
`grad_batch_size` random training examples (OBS, OBD), and `nll_fn(params, key)`, the NLL
of model-sampled labels on `nll_batch_size` random training examples (FLS).

References: McGowan et al. 2024 (FishLeg Surgeon, arXiv 2412.02328); Kurtic et al. 2022
(oBERT); Zhu & Gupta 2017 (gradual pruning).
"""

import csv
import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fedcomp import data as fdata
from fedcomp import models, tasks
from fedcomp.compression import pruning
from fedcomp.compression.pruning.targets import check_sparsity, dense_masks, sparsity_report
from fedcomp.core.centralised import train_epochs
from fedcomp.core.evaluation import make_evaluator
from fedcomp.core.run_dir import RunDir, write_json_atomic
from fedcomp.core.saved_model import MODEL_JSON, describe, load_model, save_model
from fedcomp.data.federated import as_batch
from fedcomp.data.subset import subsample
from fedcomp.optim import make_tx
from fedcomp.registry import ConfigError, check_known_keys, lookup

KEYS = (
  'experiment', 'seed', 'data_name', 'data', 'train_examples', 'eval_examples', 'task_name',
  'task', 'model_name', 'model', 'init_from', 'dense', 'prune',
)  # fmt: skip
DENSE_KEYS = ('epochs', 'batch_size', 'tx_name', 'tx')
PRUNE_KEYS = (
  'scorers', 'sparsities', 'distribution', 'policy', 'scorer_kwargs', 'grad_batch_size',
  'nll_batch_size', 'batch_size', 'finetune_steps', 'tx_name', 'tx', 'gradual_targets',
  'gradual_steps', 'gradual_every', 'gradual_end_fraction', 'save', 'eval_batch_size',
)  # fmt: skip
RESUMABLE = ('prune.scorers', 'prune.sparsities', 'prune.gradual_targets', 'prune.save')


def _positive_int(value, key):
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f'config.{key}={value!r} must be a positive integer')


def validate(config) -> None:
  """Keys, names and numbers, checked before any data is read or anything compiled."""
  check_known_keys(config, KEYS, 'config')
  check_known_keys(config.dense, DENSE_KEYS, 'config.dense')
  check_known_keys(config.prune, PRUNE_KEYS, 'config.prune')
  p = config.prune
  lookup(fdata.SOURCES, config.data_name, 'data_name')
  lookup(models.MODELS, config.model_name, 'model_name')
  if config.task_name != 'classification':
    raise ConfigError(f"config.task_name={config.task_name!r}: pruning supports 'classification'")
  if not p.scorers:
    raise ConfigError('config.prune.scorers is empty')
  for s in (*p.sparsities, *p.gradual_targets):
    check_sparsity(s, 'config.prune.sparsities/gradual_targets entry')
  for name in p.scorers:
    kwargs = dict(p.scorer_kwargs.get(name, {}))
    for s in p.sparsities or (0.5,):
      pruning.make_pruner(name, s, distribution=p.distribution, policy=_policy(p),
                          scorer_kwargs=kwargs)  # fmt: skip
  if p.save is not None and p.save not in p.scorers:
    raise ConfigError(f'config.prune.save={p.save!r} is not among config.prune.scorers')
  for key in ('grad_batch_size', 'nll_batch_size', 'batch_size', 'gradual_steps',
              'gradual_every', 'eval_batch_size'):  # fmt: skip
    _positive_int(p[key], f'prune.{key}')
  if not isinstance(p.finetune_steps, int) or p.finetune_steps < 0:
    raise ConfigError(f'config.prune.finetune_steps={p.finetune_steps!r} must be an int >= 0')
  if not 0.0 < p.gradual_end_fraction <= 1.0:
    raise ConfigError(f'config.prune.gradual_end_fraction={p.gradual_end_fraction} not in (0, 1]')
  make_tx(p.tx_name, p.tx, 'prune.tx')
  if config.init_from is None:
    _positive_int(config.dense.epochs, 'dense.epochs')
    _positive_int(config.dense.batch_size, 'dense.batch_size')
    make_tx(config.dense.tx_name, config.dense.tx, 'dense.tx')
  elif not any(
    os.path.exists(os.path.join(config.init_from, f)) for f in ('config.json', MODEL_JSON)
  ):
    raise ConfigError(f'config.init_from={config.init_from!r} holds no run or saved model')


def _policy(p):
  try:
    return tuple((str(rx), float(v)) for rx, v in p.policy)
  except (TypeError, ValueError):
    raise ConfigError(f'config.prune.policy={p.policy!r} must be (regex, sparsity) pairs') from None


def _achieved(targets, masks) -> dict:
  """The sparsity reached (overall and per leaf), apart from the target's 'sparsity' key."""
  report = sparsity_report(targets, masks)
  report['achieved_sparsity'] = report.pop('sparsity')
  return report


def _tree_bytes(tree) -> int:
  return int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


class _Data:
  """The training arrays on device, the test arrays and the extras' minibatch samplers."""

  def __init__(self, config, task, apply):
    dataset = fdata.load_source(config.data_name, config.data, config.seed)
    if config.get('train_examples'):
      dataset = subsample(dataset, config.train_examples, config.seed)
    self.dataset = dataset
    self.train = {k: jnp.asarray(v) for k, v in as_batch(dataset.train).items() if k in ('x', 'y')}
    test = as_batch(dataset.test)
    n = config.get('eval_examples')
    self.test = {k: v[:n] for k, v in test.items() if k in ('x', 'y')}
    self.loss_fn, self.nll_of = tasks.bind(task, apply)

  @staticmethod
  def minibatch(arrays, key, size):
    """`size` examples drawn uniformly with replacement (arrays are jit arguments: never
    constants of the program)."""
    idx = jax.random.randint(key, (size,), 0, arrays['x'].shape[0])
    batch = {k: v[idx] for k, v in arrays.items()}
    batch['mask'] = jnp.ones(size, bool)
    return batch

  def extras(self, arrays, model_state, grad_batch, nll_batch):
    """{'grad_fn', 'nll_fn'} on random minibatches of `arrays` (inside a jitted function)."""

    def grad_fn(params, key):
      k_b, k_l = jax.random.split(key)
      batch = self.minibatch(arrays, k_b, grad_batch)
      return jax.grad(lambda p: self.loss_fn(p, model_state, batch, k_l)[0])(params)

    def nll_fn(params, key):
      k_b, k_l = jax.random.split(key)
      return self.nll_of(model_state, self.minibatch(arrays, k_b, nll_batch))(params, k_l)

    return {'grad_fn': grad_fn, 'nll_fn': nll_fn}


def make_train_chunk(data: _Data, tx, batch_size: int, extras_of):
  """jit: `steps` wrapped-optimizer steps on random minibatches (steps static)."""

  def chunk(params, model_state, opt_state, arrays, key, steps):
    def one(carry, k):
      params, model_state, opt_state = carry
      k_b, k_l, k_o = jax.random.split(k, 3)
      batch = data.minibatch(arrays, k_b, batch_size)
      grads, (_, model_state) = jax.grad(
        lambda p: data.loss_fn(p, model_state, batch, k_l), has_aux=True
      )(params)
      extra = extras_of(arrays, model_state)
      nll_fn = data.nll_of(model_state, batch)
      updates, opt_state = tx.update(
        grads, opt_state, params, key=k_o, grad_fn=extra['grad_fn'],
        nll_fn=extra['nll_fn'] if extra['nll_fn'] is not None else nll_fn,
      )  # fmt: skip
      params = jax.tree.map(jnp.add, params, updates)
      return (params, model_state, opt_state), None

    (params, model_state, opt_state), _ = jax.lax.scan(
      one, (params, model_state, opt_state), jax.random.split(key, steps)
    )
    return params, model_state, opt_state

  return jax.jit(chunk, static_argnums=5)


def _dense_model(config, workdir, model, data, task):
  """(params, model_state) of the dense model: workdir/dense if there (a rerun), else loaded
  from `init_from` or trained, then saved in workdir/dense, so every run of the experiment
  prunes the same model even if `init_from`'s run goes on."""
  dense_dir = os.path.join(workdir, 'dense')
  if os.path.exists(os.path.join(dense_dir, MODEL_JSON)):
    saved = load_model(dense_dir)
    return saved.params, saved.model_state
  if config.init_from is not None:
    saved = load_model(config.init_from)
    got = [jnp.shape(x) for x in jax.tree.leaves((saved.params, saved.model_state))]
    want = [jnp.shape(x) for x in jax.tree.leaves((model.params, model.state))]
    same = jax.tree.structure(saved.params) == jax.tree.structure(model.params) and got == want
    if not same:
      raise ConfigError(
        f'config.init_from={config.init_from!r} holds a {saved.meta["model_name"]!r} model whose '
        f'params do not match config.model_name={config.model_name!r} with config.model on '
        'this data'
      )
    if saved.meta.get('sparsity'):
      logging.warning('init_from holds a pruned model (sparsity %s)', saved.meta['sparsity'])
    save_model(dense_dir, saved.params, saved.model_state, saved.meta)
    return saved.params, saved.model_state
  d = config.dense
  params, model_state = train_epochs(
    task, model.apply, model.params, model.state, data.train, epochs=d.epochs,
    batch_size=d.batch_size, tx=make_tx(d.tx_name, d.tx, 'dense.tx'),
    key=jax.random.key(config.seed), name='dense',
  )  # fmt: skip
  meta = describe(config.model_name, config.model, data.dataset.train['x'].shape[1:],
                  data.dataset.num_classes, config.seed)  # fmt: skip
  meta['epochs'] = d.epochs
  save_model(dense_dir, params, model_state, meta)
  return params, model_state


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the experiment (see the module docstring); returns the summary."""
  validate(config)
  rd = RunDir(workdir, config.to_dict(), resumable=RESUMABLE)
  try:
    return _run(config, rd)
  finally:
    rd.close()


def _run(config, rd: RunDir) -> dict:
  p = config.prune
  task = tasks.make_task(config.task_name, config.get('task'))
  probe = fdata.load_source(config.data_name, config.data, config.seed)
  model = models.build_model(
    config.model_name, config.model, probe.train['x'].shape[1:], probe.num_classes, config.seed
  )
  del probe
  data = _Data(config, task, model.apply)
  rd.record_config()
  os.makedirs(rd.path('results'), exist_ok=True)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('clients',))
  evaluate = make_evaluator(task, model.apply, p.eval_batch_size, mesh)
  params, model_state = _dense_model(config, rd.workdir, model, data, task)
  dense_eval = evaluate(params, model_state, data.test)
  logging.info('dense model: eval accuracy %.4f', dense_eval['accuracy'])
  rows, memory = [], {}

  def result(name, fn):
    path = rd.path(os.path.join('results', f'{name}.json'))
    if os.path.exists(path):
      with open(path) as f:
        return json.load(f)
    out = fn()
    write_json_atomic(path, out)
    return out

  for scorer in p.scorers:
    scorer_rows, memory[scorer] = _scorer_runs(
      config, rd, scorer, data, params, model_state, evaluate, result
    )
    rows += scorer_rows

  summary = {
    'model': config.model_name,
    'dense': dense_eval,
    'memory': memory,
    'params': int(sum(x.size for x in jax.tree.leaves(params))),
  }
  _write_tables(rd, rows, summary)
  rd.write_json('summary.json', summary, indent=2, sort_keys=True)
  _plot(rd.path('accuracy_vs_sparsity.png'), rows, dense_eval['accuracy'], config.model_name)
  return summary


def _scorer_runs(config, rd, scorer, data, params, model_state, evaluate, result):
  """One scorer's one-shot and gradual runs: (rows, memory and timing record)."""
  p = config.prune
  policy = _policy(p)
  kwargs = dict(p.scorer_kwargs.get(scorer, {}))
  base = pruning.make_pruner(scorer, max(p.sparsities or [0.5]), distribution=p.distribution,
                             policy=policy, scorer_kwargs=kwargs)  # fmt: skip
  targets = base.targets(params)
  sc = base.scorer(targets)
  masks0 = dense_masks(targets)
  key = jax.random.fold_in(jax.random.key(config.seed), 7)

  # Pre-training of the curvature on the dense model (FLS's Q; nothing for the others).
  # Everything a jitted function reads is an argument: closed-over arrays would become
  # constants that XLA folds (a 1M-element sort at compile time).
  def curvature(state, params, model_state, arrays):
    extras = data.extras(arrays, model_state, p.grad_batch_size, p.nll_batch_size)
    return sc.curvature(state, params, masks0, extras, key)

  t = time.perf_counter()
  scorer_state = jax.block_until_ready(
    jax.jit(curvature)(sc.init(params), params, model_state, data.train)[0]
  )
  state_shape = jax.eval_shape(sc.init, params)
  curv_shape = jax.eval_shape(curvature, state_shape, params, model_state, data.train)[1]
  record = {
    'state_bytes': _tree_bytes(state_shape),
    'curvature_bytes': _tree_bytes(curv_shape),
    'pretrain_sec': time.perf_counter() - t,
  }

  @jax.jit
  def prune_fn(state, params, model_state, arrays, sparsity, k):
    extras = data.extras(arrays, model_state, p.grad_batch_size, p.nll_batch_size)
    return pruning.prune(base, params, masks0, state, sparsity, extras, k)

  wrapped_ft = pruning.wrap_optax(
    make_tx(p.tx_name, p.tx, 'prune.tx'),
    # Masks fixed: the schedule never fires (and a scorer that needs no extras).
    base._replace(
      scorer_name='magnitude', scorer_kwargs={}, schedule=pruning.schedules.fixed()
    ),  # fmt: skip
  )
  ft_chunk = make_train_chunk(
    data, wrapped_ft, p.batch_size, lambda arrays, s: {'grad_fn': None, 'nll_fn': None}
  )

  def one_shot(sparsity):
    t = time.perf_counter()
    new_params, masks, _ = jax.block_until_ready(
      prune_fn(
        scorer_state,
        params,
        model_state,
        data.train,
        jnp.float32(sparsity),
        jax.random.fold_in(key, 1),
      )  # fmt: skip
    )
    sec = time.perf_counter() - t
    before = evaluate(new_params, model_state, data.test)
    out = {'scorer': scorer, 'sparsity': sparsity, 'prune_sec': sec, 'one_shot': before,
           **_achieved(targets, masks)}  # fmt: skip
    if p.finetune_steps:
      opt_state = wrapped_ft.init(new_params)._replace(masks=masks)
      ft_params, ft_state, _ = ft_chunk(new_params, model_state, opt_state, data.train,
                                        jax.random.fold_in(key, 2), p.finetune_steps)  # fmt: skip
      out['finetuned'] = evaluate(ft_params, ft_state, data.test)
      out['masks_respected'] = all(
        bool(jnp.all(jnp.where(m, True, w == 0)))
        for w, m in zip(jax.tree.leaves(ft_params), jax.tree.leaves(masks))
      )
    logging.info('%s one-shot %.2f: accuracy %.4f -> fine-tuned %s (%.2f s to prune)',
                 scorer, sparsity, before['accuracy'],
                 out.get('finetuned', {}).get('accuracy'), sec)  # fmt: skip
    return out

  def gradual(target):
    end = max(1, int(p.gradual_end_fraction * p.gradual_steps))
    pr = pruning.make_pruner(
      scorer, target, 'cubic', dict(start=0, end=end, every=p.gradual_every),
      distribution=p.distribution, policy=policy, scorer_kwargs=kwargs,
    )  # fmt: skip
    tx = pruning.wrap_optax(make_tx(p.tx_name, p.tx, 'prune.tx'), pr)
    chunk = make_train_chunk(
      data,
      tx,
      p.batch_size,
      lambda arrays, ms: data.extras(arrays, ms, p.grad_batch_size, p.nll_batch_size),
    )
    opt_state = tx.init(params)
    t = time.perf_counter()
    g_params, g_state, opt_state = jax.block_until_ready(
      chunk(
        params, model_state, opt_state, data.train, jax.random.fold_in(key, 3), p.gradual_steps
      )  # fmt: skip
    )
    out = {'scorer': scorer, 'sparsity': target, 'train_sec': time.perf_counter() - t,
           'steps': p.gradual_steps, 'gradual': evaluate(g_params, g_state, data.test),
           **_achieved(pr.targets(params), opt_state.masks)}  # fmt: skip
    logging.info('%s gradual %.2f: accuracy %.4f (%.0f s)', scorer, target,
                 out['gradual']['accuracy'], out['train_sec'])  # fmt: skip
    if scorer == p.save and target == max(p.gradual_targets):
      meta = describe(config.model_name, config.model, data.dataset.train['x'].shape[1:],
                      data.dataset.num_classes, config.seed)  # fmt: skip
      meta.update(scorer=scorer, sparsity=out['sparsity'], accuracy=out['gradual']['accuracy'])
      save_model(rd.workdir, g_params, g_state, meta)
    return out

  rows, secs = [], []
  for sparsity in p.sparsities:
    r = result(f'oneshot_{scorer}_{sparsity:g}', functools.partial(one_shot, sparsity))
    secs.append(r['prune_sec'])
    rows.append(('one_shot', r))
  record['prune_sec_first'] = secs[0] if secs else None
  record['prune_sec_median'] = float(np.median(secs[1:])) if len(secs) > 1 else None
  for target in p.gradual_targets:
    rows.append(
      ('gradual', result(f'gradual_{scorer}_{target:g}', functools.partial(gradual, target)))
    )
  return rows, record


def _write_tables(rd, rows, summary) -> None:
  with open(rd.path('pruning.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['model', 'scorer', 'mode', 'target', 'sparsity', 'accuracy', 'loss', 'seconds'])
    for _, r in rows:
      evals = (('one_shot', r.get('one_shot')), ('finetuned', r.get('finetuned')),
               ('gradual', r.get('gradual')))  # fmt: skip
      for name, ev in evals:
        if ev is None:
          continue
        sec = r.get('prune_sec') if name == 'one_shot' else r.get('train_sec')
        w.writerow([summary['model'], r['scorer'], name, r['sparsity'], r['sparsity_all'],
                    ev['accuracy'], ev['loss'], sec])  # fmt: skip
  scorers = list(dict.fromkeys(r['scorer'] for _, r in rows))
  lines = [f'dense accuracy {summary["dense"]["accuracy"]:.4f}', '']
  for mode, key in (('one_shot', 'one_shot'), ('one_shot', 'finetuned'), ('gradual', 'gradual')):
    sel = [r for m, r in rows if m == mode and key in r]
    if not sel:
      continue
    sparsities = sorted({r['sparsity'] for r in sel})
    lines.append(f'{key} accuracy | ' + ' | '.join(f'{s:g}' for s in sparsities))
    lines.append('|'.join(['---'] * (len(sparsities) + 1)))
    for s in scorers:
      acc = {r['sparsity']: r[key]['accuracy'] for r in sel if r['scorer'] == s}
      lines.append(f'{s} | ' + ' | '.join(f'{acc[x]:.4f}' if x in acc else '' for x in sparsities))
    lines.append('')
  lines.append('scorer | curvature state (MB) | at a pruning step (MB) | s per pruning step')
  lines.append('---|---|---|---')
  for s, m in summary['memory'].items():
    sec = m['prune_sec_median'] or m['prune_sec_first']
    sec_text = '' if sec is None else f'{sec:.2f}'
    lines.append(f'{s} | {m["state_bytes"] / 2**20:.2f} | {m["curvature_bytes"] / 2**20:.2f} | '
                 f'{sec_text}')  # fmt: skip
  with open(rd.path('pruning.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def _plot(path, rows, dense_acc, model_name) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  colors = {}
  for key, style in (('one_shot', '-o'), ('finetuned', '--s'), ('gradual', ':^')):
    by_scorer = {}
    for _, r in rows:
      if key in r:
        by_scorer.setdefault(r['scorer'], []).append((r['sparsity'], r[key]['accuracy']))
    for s, pts in by_scorer.items():
      pts.sort()
      line = ax.plot([x for x, _ in pts], [y for _, y in pts], style, color=colors.get(s),
                     label=f'{s} ({key.replace("_", "-")})', markersize=4)  # fmt: skip
      colors.setdefault(s, line[0].get_color())
  ax.axhline(dense_acc, color='gray', lw=0.8, label='dense')
  ax.set(xlabel='sparsity of the prunable weights', ylabel='test accuracy', title=model_name)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
