"""Automatic compression: an RL search over students of a VGG teacher, each distilled from
it, rewarded for accuracy, measured latency and memory.

`run(config, workdir)`:
1. the teacher (`teacher_workdir`, or a `vgg` trained here) and the data: a transfer set
   and a held-out reward set from the training split, the test set for the final student;
   with `deployment.classes` all three hold only those classes and every head has their
   size (the teacher's logits restricted to them);
2. the search space (`fedcomp.compression.autocompress.space`): remove convs whose widths
   match, keep `search.ratios[r]` of each kept conv's channels;
3. per episode, the policy (N2N's two-stage LSTM, REINFORCE with a moving baseline) samples
   `search.candidates` students; they are distilled for `distill.steps` in one program as
   masks over the teacher, scored on the held-out set, their latency predicted from the
   per-layer onnxruntime table (one thread, built once and cached in `latency.table`) and
   their memory counted (float32 bytes of their parameters); the reward is
   `reward.*`'s weighted form; the policy takes one step; the episode's rows go to
   search.csv and the search state to checkpoints/ (a killed search resumes from its last
   episode);
4. baselines with the same budget: uniform width ratios `baselines` (every conv kept), and
   the teacher pruned by global weight magnitude to each one's parameter count (equal
   bytes of values; its latency stays the teacher's, as runtimes execute zeros densely);
5. the best candidate by reward is distilled again (bit-identical: candidates do not
   interact), materialised as a real `vgg`, fine-tuned `final.steps` more, and saved in
   model/ (exportable by `launch.export`); its latency is measured whole and compared with
   the table's prediction.

Writes search.csv, baselines.csv, pareto.png (held-out accuracy vs predicted latency),
policy/ (the policy's parameters; `policy.init_from` of another search reuses them),
checkpoints/, latency_table.json (unless `latency.table` names a shared one), model/ and
summary.json.

References: Pahwa et al. 2019 (arXiv 1911.12740); Ashok et al. 2018, "N2N Learning" (ICLR);
He et al. 2018, "AMC" (ECCV).
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
from fedcomp import models
from fedcomp.compression.autocompress import candidates, latency
from fedcomp.compression.autocompress import space as sp
from fedcomp.compression.autocompress.policy import TwoStagePolicy, reinforce
from fedcomp.compression.autocompress.reward import RewardWeights, weighted_reward
from fedcomp.compression.distillation import subset
from fedcomp.core.run_dir import RunDir
from fedcomp.core.saved_model import describe, save_model
from fedcomp.data.federated import as_float
from fedcomp.experiments._teacher import load_or_train_teacher
from fedcomp.registry import ConfigError, check_known_keys, lookup
from fedcomp.utils.checkpoint import Checkpointer

KEYS = ('experiment', 'seed', 'data_name', 'data', 'teacher_workdir', 'teacher', 'deployment',
        'search', 'distill', 'reward', 'policy', 'baselines', 'final', 'latency',
        'eval_batch_size')  # fmt: skip
SECTIONS = {
  'teacher': ('model_name', 'model', 'epochs', 'batch_size', 'tx_name', 'tx'),
  'deployment': ('classes',),
  'search': ('ratios', 'episodes', 'candidates', 'transfer_examples', 'heldout_examples', 'mode'),
  'distill': ('steps', 'batch_size', 'learning_rate', 'temperature'),
  'reward': (
    'accuracy_weight',
    'latency_weight',
    'memory_weight',
    'latency_budget_ms',
    'memory_budget_bytes',
    'anneal_episodes',
  ),  # fmt: skip
  'policy': ('hidden', 'learning_rate', 'baseline_decay', 'init_from'),
  'final': ('steps',),
  'latency': ('table', 'threads', 'repeats', 'calibration_models'),
}
MODES = ('masked', 'materialized')
FIELDS = ('episode', 'candidate', 'plan', 'keep', 'ratio', 'params', 'bytes', 'latency_ms',
          'accuracy', 'reward')  # fmt: skip


def _positive_int(value, key):
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f'config.{key}={value!r} must be a positive integer')


def validate(config) -> None:
  """Keys, names and numbers, before any data is read or anything compiled."""
  check_known_keys(config, KEYS, 'config')
  for name, keys in SECTIONS.items():
    check_known_keys(config[name], keys, f'config.{name}')
  lookup(fdata.SOURCES, config.data_name, 'data_name')
  if config.teacher_workdir is None and config.teacher.model_name != 'vgg':
    raise ConfigError(f'config.teacher.model_name={config.teacher.model_name!r}: the search '
                      'space is defined for vgg teachers')  # fmt: skip
  s = config.search
  lookup(dict.fromkeys(MODES), s.mode, 'search.mode')
  for key in ('episodes', 'candidates', 'transfer_examples', 'heldout_examples'):
    _positive_int(s[key], f'search.{key}')
  for key in ('steps', 'batch_size'):
    _positive_int(config.distill[key], f'distill.{key}')
  if config.final.steps < 0:
    raise ConfigError(f'config.final.steps={config.final.steps} must be >= 0')
  if not config.distill.temperature > 0 or not config.distill.learning_rate > 0:
    raise ConfigError('config.distill.temperature and learning_rate must be > 0')
  if any(not 0 < r <= 1 for r in s.ratios) or not len(s.ratios):
    raise ConfigError(f'config.search.ratios={list(s.ratios)} must be in (0, 1]')
  if any(b not in tuple(s.ratios) for b in config.baselines):
    raise ConfigError(
      f'config.baselines={list(config.baselines)} must be among config.search.ratios'
    )
  RewardWeights(**config.reward).check('reward')
  _positive_int(config.latency.threads, 'latency.threads')
  _positive_int(config.latency.repeats, 'latency.repeats')
  _positive_int(config.latency.calibration_models, 'latency.calibration_models')
  if config.deployment.classes is not None and not len(config.deployment.classes):
    raise ConfigError('config.deployment.classes is empty: a deployment needs at least one class')
  init = config.policy.init_from
  if init is not None and not os.path.isdir(os.path.join(init, 'policy')):
    raise ConfigError(f'config.policy.init_from={init!r} holds no saved policy (policy/)')


class _Search:
  """The data, teacher, space, table and jitted programs of one search."""

  def __init__(self, config, rd):
    self.config, self.rd = config, rd
    dataset = fdata.load_source(config.data_name, config.data, config.seed)
    self.classes = subset.check_classes(
      config.deployment.classes, dataset.num_classes, 'deployment.classes'
    )
    model, params, state, meta = load_or_train_teacher(config, rd, dataset, self._check)
    self.model, self.teacher_meta = model, meta
    self.params, self.state = params, state
    self.shape = tuple(meta['input_shape'])
    train = subset.select(dict(dataset.train), self.classes)
    test = subset.select(dict(dataset.test), self.classes)
    rows = np.random.default_rng(config.seed).permutation(len(train['x']))
    s = config.search
    if s.transfer_examples + s.heldout_examples > len(rows):
      raise ConfigError(
        f'config.search.transfer_examples + heldout_examples = '
        f'{s.transfer_examples + s.heldout_examples} exceed the {len(rows)} training examples '
        f'of the deployment'
      )
    take = lambda r: (as_float(train['x'][r]), train['y'][r].astype(np.int32))  # noqa: E731
    self.transfer_x, _ = take(rows[: s.transfer_examples])
    self.heldout_x, self.heldout_y = take(rows[s.transfer_examples :][: s.heldout_examples])
    self.test_x, self.test_y = as_float(test['x']), test['y'].astype(np.int32)
    cls = jnp.asarray(self.classes)
    apply = jax.jit(lambda p, s, x: model.apply(p, s, x)[0][:, cls])
    teacher_fn = lambda x: apply(params, state, x)  # noqa: E731
    self.transfer_logits = np.concatenate([
      np.asarray(teacher_fn(self.transfer_x[i : i + 500]))
      for i in range(0, len(self.transfer_x), 500)
    ])  # fmt: skip
    self.space = sp.vgg_space(meta['model'], params, s.ratios)
    self.emb = jnp.asarray(self.space.embeddings())
    self.removable = jnp.asarray(self.space.removable)
    table_path = config.latency.table or rd.path('latency_table.json')
    self.table = latency.LatencyTable(table_path, config.latency.threads, config.latency.repeats)
    if self.table.calibration is None:
      self._calibrate(config.latency.calibration_models)
    self.policy = TwoStagePolicy(self.emb.shape[1], len(s.ratios), config.policy.hidden,
                                 config.seed)  # fmt: skip
    self.init, self.update = reinforce(
      self.policy, config.policy.learning_rate, config.policy.baseline_decay
    )
    self.update = jax.jit(self.update)
    d = config.distill
    head = None if len(self.classes) == meta['num_classes'] else tuple(self.classes)
    self.head_classes = head
    # Data and weights are arguments of the program, not constants closed over: XLA would
    # embed (and try to fold) a 25 MB transfer set, which took minutes to compile.
    distill = jax.jit(
      lambda keep, ratio, key, p, s, x, t: candidates.distill_masked(
        self.space, p, s, keep, ratio, x, t, steps=d.steps, batch_size=d.batch_size,
        learning_rate=d.learning_rate, temperature=d.temperature, key=key, classes=head,
      )
    )  # fmt: skip
    arrays = (params, state, jnp.asarray(self.transfer_x), jnp.asarray(self.transfer_logits))
    self.distill = lambda keep, ratio, key: distill(keep, ratio, key, *arrays)
    self.sample = jax.jit(
      jax.vmap(lambda p, k: self.policy.sample(p, self.emb, self.removable, k), (None, 0))
    )
    self.teacher_stats = self._teacher_stats(teacher_fn)

  def _check(self, model) -> None:
    del model

  def measure_plan(self, plan) -> float:
    """Whole-model batch-1 latency (ms) of a vgg with this plan, timed like the table's
    layers (weights do not matter)."""
    cfg = self.config
    model = models.build_model('vgg', {'plan': list(plan)}, self.shape, len(self.classes), 0)
    fn = lambda x: model.apply(model.params, model.state, x)[0]  # noqa: E731
    return latency.time_onnx(fn, self.shape, cfg.latency.threads, cfg.latency.repeats)

  def _calibrate(self, count: int) -> None:
    """Fits the table's calibration on the teacher and `count` random candidates."""
    rng = np.random.default_rng([self.config.seed, 7])
    n, plans = self.space.num_layers, [self.space.plan]
    for _ in range(count):
      keep = np.where(self.space.removable, rng.random(n) < 0.7, True)
      plans.append(self.space.candidate_plan(keep, rng.integers(0, len(self.space.ratios), n)))
    num = len(self.classes)
    sums = [self.table.layer_sum(latency.vgg_signatures(p, self.shape, num), self.shape)
            for p in plans]  # fmt: skip
    measured = [self.measure_plan(p) for p in plans]
    scale, offset = self.table.calibrate(sums, measured)
    logging.info('latency table calibrated on %d whole models: measured = %.3f x layer sum '
                 '+ %.4f ms', len(plans), scale, offset)  # fmt: skip

  def _teacher_stats(self, teacher_fn) -> dict:
    logits = np.asarray(teacher_fn(self.heldout_x))
    plan = self.space.plan
    n = sum(a.size for a in jax.tree.leaves(self.params))
    return {
      'accuracy': float((logits.argmax(1) == self.heldout_y).mean()),
      'latency_ms': self.table.predict(
        latency.vgg_signatures(plan, self.shape, len(self.classes)), self.shape
      ),
      'memory_bytes': 4.0 * n,
      'params': int(n),
      'plan': list(plan),
    }

  def describe_candidate(self, keep, ratio) -> dict:
    """Plan, parameter count, bytes and predicted latency of a candidate."""
    plan = self.space.candidate_plan(keep, ratio)
    num = len(self.classes)
    cin, n = self.shape[-1], 0
    for item in plan:
      if item != sp.POOL:
        n += 9 * cin * item + 3 * item  # kernel, bias, BatchNorm scale and shift
        cin = item
    n += cin * num + num
    sigs = latency.vgg_signatures(plan, self.shape, num)
    return {
      'plan': ' '.join(map(str, plan)),
      'params': int(n),
      'bytes': 4 * int(n),
      'latency_ms': self.table.predict(sigs, self.shape),
    }

  def evaluate(self, trained, keep, ratio) -> np.ndarray:
    return np.asarray(
      candidates.evaluate_masked(
        self.space, trained, self.state, keep, ratio, self.heldout_x, self.heldout_y,
        batch_size=self.config.eval_batch_size, classes=self.head_classes,
      )
    )  # fmt: skip


def _write_csv(path: str, rows: list[dict]) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=FIELDS)
    w.writeheader()
    w.writerows(rows)
  os.replace(tmp, path)


def _read_csv(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    for k in ('episode', 'candidate', 'params', 'bytes'):
      r[k] = int(r[k])
    for k in ('latency_ms', 'accuracy', 'reward'):
      r[k] = float(r[k]) if r[k] != '' else None
  return rows


def _episode_key(config, episode: int):
  return jax.random.fold_in(jax.random.key(config.seed), episode)


def _score(search, episode, keep, ratio, key) -> list[dict]:
  """Distils, evaluates and describes a batch of candidates (rows without rewards):
  as masks in one program, or each materialised in its own (config.search.mode)."""
  if search.config.search.mode == 'masked':
    trained, losses = search.distill(keep, ratio, key)
    acc = search.evaluate(trained, keep, ratio)
    acc = np.where(np.isfinite(np.asarray(losses)).all(1), acc, np.nan)
  else:
    d = search.config.distill
    acc = candidates.distill_materialized(
      search.space, search.params, search.state, keep, ratio, search.transfer_x,
      search.transfer_logits, search.heldout_x, search.heldout_y, steps=d.steps,
      batch_size=d.batch_size, learning_rate=d.learning_rate, temperature=d.temperature,
      key=key, classes=search.head_classes, eval_batch_size=search.config.eval_batch_size,
      seed=search.config.seed,
    )  # fmt: skip
  rows = []
  for k in range(keep.shape[0]):
    # A candidate whose distillation diverged is invalid: no accuracy, reward −1.
    accuracy = float(acc[k]) if np.isfinite(acc[k]) else None
    row = {'episode': episode, 'candidate': k, 'accuracy': accuracy,
           'keep': ' '.join(str(int(v)) for v in np.asarray(keep[k])),
           'ratio': ' '.join(str(int(v)) for v in np.asarray(ratio[k]))}  # fmt: skip
    row.update(search.describe_candidate(np.asarray(keep[k]), np.asarray(ratio[k])))
    rows.append(row)
  return rows


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the search (see the module docstring); returns the summary."""
  validate(config)
  rd = RunDir(workdir, config.to_dict(), resumable=('search.episodes', 'final.steps'))
  try:
    return _run(config, rd)
  finally:
    rd.close()


def _run(config, rd) -> dict:
  search = _Search(config, rd)
  weights = RewardWeights(**config.reward)
  teacher = search.teacher_stats
  logging.info('autocompress: teacher %s, held-out accuracy %.4f, predicted latency %.3f ms',
               teacher['plan'], teacher['accuracy'], teacher['latency_ms'])  # fmt: skip
  ckpt = Checkpointer(rd.path('checkpoints'), max_to_keep=1)
  try:
    state = search.init(search.policy.params)
    if config.policy.init_from is not None:
      state = state._replace(params=_load_policy(config.policy.init_from, state.params))
    rows = _read_csv(rd.path('search.csv'))
    start = ckpt.latest_round()
    if start is not None:
      state, _ = ckpt.restore(start, state)
      rows = [r for r in rows if r['episode'] < start]
    start = start or 0
    baselines = _baselines(config, search, weights, teacher)
    t0, scored_here = time.time(), 0
    for episode in range(start, config.search.episodes):
      key = _episode_key(config, episode)
      eps = search.sample(state.params, jax.random.split(key, config.search.candidates))
      scored = _score(search, episode, eps.keep, eps.ratio, jax.random.fold_in(key, 1))
      rewards = []
      for r in scored:
        student = {'accuracy': r['accuracy'], 'latency_ms': r['latency_ms'],
                   'memory_bytes': r['bytes']}  # fmt: skip
        r['reward'] = weighted_reward(weights, student, teacher, episode)
        rewards.append(r['reward'])
      state, metrics = search.update(state, search.emb, search.removable, eps,
                                     jnp.asarray(rewards))  # fmt: skip
      rows += scored
      scored_here += len(scored)
      _write_csv(rd.path('search.csv'), rows)
      ckpt.save(episode + 1, state, {'episode': episode + 1})
      logging.info('episode %d: reward mean %.4f max %.4f (baseline %.4f), %.1f s',
                   episode, np.mean(rewards), np.max(rewards), float(metrics['baseline']),
                   time.time() - t0)  # fmt: skip
    _save_policy(rd, state.params, config.search.episodes)
    elapsed = time.time() - t0
  finally:
    ckpt.close()
  valid = [r for r in rows if r['accuracy'] is not None]
  best = max(valid, key=lambda r: r['reward']) if valid else None
  final = _final_student(config, search, best) if best is not None else None
  summary = {
    'teacher': teacher,
    'classes': list(search.classes),
    'episodes': config.search.episodes,
    'candidates_evaluated': len(rows),
    'mode': config.search.mode,
    # Of this process's episodes (a resumed search times only the rest), compile included.
    'candidates_per_hour': 3600 * scored_here / elapsed if scored_here else None,
    'best': best,
    'final': final,
    'baselines': baselines,
    'latency_check': _latency_check(baselines, final, search.table.calibration),
  }
  _plot(rd, rows, baselines, teacher)
  rd.write_json('summary.json', summary, indent=2, sort_keys=True)
  return summary


def _latency_check(baselines, final, calibration) -> dict:
  """Predicted vs measured whole-model latency of the uniform baselines and the final
  student (models the calibration did not see): relative errors and their maximum."""
  models = [{'plan': b['plan'], 'predicted_ms': b['latency_ms'],
             'measured_ms': b['latency_ms_measured']}
            for b in baselines if 'latency_ms_measured' in b]  # fmt: skip
  if final is not None:
    models.append({'plan': ' '.join(map(str, final['plan'])),
                   'predicted_ms': final['latency_ms_predicted'],
                   'measured_ms': final['latency_ms_measured']})  # fmt: skip
  for m in models:
    m['relative_error'] = m['predicted_ms'] / m['measured_ms'] - 1
  worst = max((abs(m['relative_error']) for m in models), default=None)
  return {'calibration': calibration, 'models': models, 'max_abs_relative_error': worst}


def _baselines(config, search, weights, teacher) -> list[dict]:
  """Uniform width ratios (every conv kept), distilled with the search's budget once."""
  path = search.rd.path('baselines.json')
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  out = []
  if config.baselines:
    idx = [list(config.search.ratios).index(b) for b in config.baselines]
    n = search.space.num_layers
    keep = jnp.ones((len(idx), n), bool)
    ratio = jnp.asarray(np.repeat(np.asarray(idx)[:, None], n, 1), jnp.int32)
    key = jax.random.fold_in(jax.random.key(config.seed), 2**31)  # apart from the episodes'
    out = _score(search, -1, keep, ratio, key)
    for r, b in zip(out, config.baselines):
      r['width'], r['kind'] = b, 'uniform'
    for r in out:  # the table's check on whole models it was not fitted on
      r['latency_ms_measured'] = search.measure_plan(sp.parse_plan(r['plan']))
    out += [_pruned_baseline(config, search, r, key) for r in list(out)]
    for r in out:
      student = {'accuracy': r['accuracy'], 'latency_ms': r['latency_ms'],
                 'memory_bytes': r['bytes']}  # fmt: skip
      r['reward'] = weighted_reward(weights, student, teacher)
  search.rd.write_json('baselines.json', out, indent=2)
  return out


def _pruned_baseline(config, search, uniform: dict, key) -> dict:
  """The teacher pruned by global weight magnitude to as many non-zero parameters as a
  uniform student has, KD fine-tuned with the same budget: the same bytes (values only,
  sparse storage), the teacher's dense latency."""
  d = config.distill
  dense = sum(  # biases and BatchNorm parameters stay dense
    np.size(a) for path, a in jax.tree_util.tree_leaves_with_path(search.params)
    if path[-1].key != 'kernel'
  )  # fmt: skip
  masks = candidates.magnitude_masks(search.params, uniform['params'] - dense)
  trained = jax.jit(
    lambda p, s, m, x, t: candidates.distill_pruned(
      search.model.apply, p, s, m, x, t, steps=d.steps, batch_size=d.batch_size,
      learning_rate=d.learning_rate, temperature=d.temperature, key=key,
      classes=search.head_classes,
    )
  )(search.params, search.state, masks, search.transfer_x, search.transfer_logits)  # fmt: skip
  apply = jax.jit(lambda p, x: search.model.apply(p, search.state, x)[0])
  forward = lambda x: apply(trained, x)  # noqa: E731
  cls = np.asarray(search.classes)
  pred = np.concatenate([
    np.asarray(forward(search.heldout_x[i : i + 500]))[:, cls].argmax(1)
    for i in range(0, len(search.heldout_x), 500)
  ])  # fmt: skip
  ok = all(bool(np.isfinite(np.asarray(a)).all()) for a in jax.tree.leaves(trained))
  nonzeros = int(sum(np.count_nonzero(np.asarray(a)) for a in jax.tree.leaves(trained)))
  return {
    'episode': -1, 'candidate': -1, 'kind': 'magnitude', 'width': uniform['width'],
    'plan': ' '.join(map(str, search.space.plan)), 'keep': '', 'ratio': '',
    'params': nonzeros, 'bytes': 4 * nonzeros,
    'latency_ms': search.teacher_stats['latency_ms'],
    'accuracy': float(np.mean(pred == search.heldout_y)) if ok else None,
  }  # fmt: skip


def _save_policy(rd, params, episodes: int) -> None:
  """policy/: the policy after `episodes` episodes (the newest only)."""
  ckpt = Checkpointer(rd.path('policy'), max_to_keep=1)
  try:
    if ckpt.latest_round() != episodes:  # a rerun of a finished search saved it already
      ckpt.save(episodes, params, {'kind': 'two_stage_policy', 'episodes': episodes})
  finally:
    ckpt.close()


def _load_policy(workdir: str, like):
  ckpt = Checkpointer(os.path.join(workdir, 'policy'), max_to_keep=1)
  try:
    step = ckpt.latest_round()
    if step is None:
      raise ConfigError(f'{workdir}/policy holds no saved policy')
    try:
      params, _ = ckpt.restore(step, like)
    except (ValueError, KeyError) as e:
      raise ConfigError(
        f'the policy in {workdir} does not fit this search (another teacher or ratio set): '
        f'{str(e).splitlines()[0]}'
      ) from None
    return params
  finally:
    ckpt.close()


def _final_student(config, search, best) -> dict:
  """The best candidate distilled again (as in its batch: the same minibatches, and
  candidates do not interact), materialised, fine-tuned and saved in model/."""
  keep = np.asarray([int(v) for v in best['keep'].split()], bool)
  ratio = np.asarray([int(v) for v in best['ratio'].split()], np.int32)
  key = jax.random.fold_in(_episode_key(config, best['episode']), 1)
  trained, _ = search.distill(jnp.asarray(keep)[None], jnp.asarray(ratio)[None], key)
  trained = jax.tree.map(lambda a: a[0], trained)
  plan, params, state = sp.materialize(search.space, trained, search.state, keep, ratio,
                                       search.head_classes)  # fmt: skip
  num = len(search.classes)
  model = models.build_model('vgg', {'plan': list(plan)}, search.shape, num, config.seed)
  if config.final.steps:
    params = _fine_tune(config, search, model, params, state)
  apply = jax.jit(lambda p, x: model.apply(p, state, x)[0])
  forward = lambda x: apply(params, x)  # noqa: E731
  pred = np.concatenate([np.asarray(forward(search.test_x[i : i + 500])).argmax(1)
                         for i in range(0, len(search.test_x), 500)])  # fmt: skip
  acc = float(np.mean(pred == search.test_y))
  measured = search.measure_plan(plan)  # latency does not depend on the weights' values
  meta = describe('vgg', {'plan': list(plan)}, search.shape, num, config.seed)
  meta.update({'classes': list(search.classes), 'test_accuracy': acc, 'method': 'autocompress'})
  save_model(search.rd.workdir, params, state, meta)
  return {'plan': list(plan), 'test_accuracy': acc, 'latency_ms_measured': measured,
          'latency_ms_predicted': best['latency_ms'], 'params': best['params'],
          'heldout_accuracy_in_search': best['accuracy']}  # fmt: skip


def _fine_tune(config, search, model, params, state):
  """final.steps more KD steps of the materialised student (BatchNorm in inference mode,
  as during the search)."""
  import optax

  from fedcomp.compression.distillation.kd import distillation_loss

  d = config.distill
  tx = optax.adam(d.learning_rate)
  x, t = jnp.asarray(search.transfer_x), jnp.asarray(search.transfer_logits)
  n = x.shape[0]

  def train(p, x, t):  # data as arguments, not constants
    def step(carry, i):
      p, opt = carry
      key = jax.random.fold_in(jax.random.key(config.seed + 1), i)
      rows = jax.random.randint(key, (d.batch_size,), 0, n)

      def loss_fn(p):
        logits = model.apply(p, state, x[rows])[0]
        return distillation_loss(logits, t[rows], None, d.temperature, 0.0).mean()

      updates, opt = tx.update(jax.grad(loss_fn)(p), opt, p)
      return (optax.apply_updates(p, updates), opt), None

    return jax.lax.scan(step, (p, tx.init(p)), jnp.arange(config.final.steps))

  (params, _), _ = jax.jit(train)(params, x, t)
  return params


def _plot(rd, rows, baselines, teacher) -> None:
  """pareto.png: held-out accuracy vs predicted latency of every candidate, the Pareto
  front, the uniform-width baselines and the teacher."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4.5))
  valid = [r for r in rows if r['accuracy'] is not None]
  if valid:
    lat = np.array([r['latency_ms'] for r in valid])
    acc = np.array([r['accuracy'] for r in valid])
    ax.scatter(lat, acc, s=10, alpha=0.5, label='searched candidates')
    front = pareto_front(lat, acc)
    ax.plot(lat[front], acc[front], 'k-', lw=1, label='Pareto front')
  for kind, marker, color, label in (('uniform', 's', 'tab:red', 'uniform width'),
                                     ('magnitude', '^', 'tab:green',
                                      'magnitude-pruned teacher, same bytes')):  # fmt: skip
    points = [b for b in baselines if b.get('kind') == kind and b['accuracy'] is not None]
    if points:
      ax.scatter([b['latency_ms'] for b in points], [b['accuracy'] for b in points],
                 marker=marker, c=color, label=label)  # fmt: skip
      for b in points:
        ax.annotate(f'{b["width"]:g}', (b['latency_ms'], b['accuracy']), fontsize=8)
  ax.axhline(teacher['accuracy'], color='gray', ls='--', lw=1, label='teacher')
  ax.set_xlabel('predicted latency, batch 1, onnxruntime 1 thread (ms)')
  ax.set_ylabel('held-out accuracy')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(rd.path('pareto.png'), dpi=120)
  plt.close(fig)


def pareto_front(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
  """Indices of the points no other point beats (lower or equal cost and higher value, or
  lower cost and equal value), ordered by cost."""
  order = np.lexsort((-value, cost))
  front, best = [], -np.inf
  for i in order:
    if value[i] > best:
      front.append(i)
      best = value[i]
  return np.asarray(front, int)
