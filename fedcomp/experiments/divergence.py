"""Weight divergence of FedAvg from centralised SGD against the clients' label skew (EMD).

For each partition in `config.divergence.partitions`, FedAvg trains with every
client in every round; centralised SGD trains once on the union of the clients'
data from the same initialisation, seeing the same number of examples per round
(local_epochs passes over the whole train set, same batch size and optimizer).
Each FedAvg round logs, per top-level layer and over all layers,
‖w_FedAvg − w_SGD‖ / ‖w_SGD‖ against the SGD model after the same round.

Writes in the workdir: one federated run per partition in <label>/ (resumable as
any run), sgd_reference.npz (the SGD models per round, reused on resume),
divergence.csv (one row per partition and round), summary.json (final accuracy,
divergence, mean EMD per partition, and their Spearman correlation), and the
plots accuracy_vs_emd.png and divergence_vs_emd.png.

References: Zhao, Li, Lai, Suda, Civin, Chandra 2018, "Federated Learning with
Non-IID Data" (arXiv 1806.00582), Section 3.
"""

import csv
import json
import os
from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fedcomp.core.centralised import make_epoch_fn
from fedcomp.data.federated import as_batch
from fedcomp.experiments import federated
from fedcomp.registry import ConfigError, check_known_keys
from fedcomp.utils.config_overrides import with_overrides


def case_configs(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """label -> the federated config of each partition; checks everything first."""
  check_known_keys(config, (*federated.KEYS, 'divergence'), 'config')
  cases = list(config.divergence.partitions)
  if len(cases) < 2:
    raise ConfigError('config.divergence.partitions needs at least two partitions')
  out = {}
  for case in cases:
    case = dict(case)
    label = case.pop('label', None)
    if not isinstance(label, str) or not label or '/' in label or label in out:
      raise ConfigError(f'config.divergence.partitions: each needs a unique label, got {label!r}')
    c = with_overrides(config, case)
    c.experiment = 'federated'
    del c['divergence']
    federated.validate(c)
    if c.cohort_size != c.partition.num_clients:
      raise ConfigError(
        f'config.cohort_size={c.cohort_size} must equal config.partition.num_clients='
        f'{c.partition.num_clients}: SGD sees the data of every client each round'
      )
    if c.partition.get('local_test_fraction') or c.shared_data.beta:
      raise ConfigError(
        'config.partition.local_test_fraction and config.shared_data.beta must be 0: '
        'FedAvg and SGD must train on the same examples'
      )
    out[label] = c
  return out


def layer_divergence(params, reference) -> dict[str, float]:
  """‖w − w_ref‖ / ‖w_ref‖ per top-level layer and over all layers ('all').

  Args:
    params: a dict of layers.
    reference: the same structure.

  Returns:
    {'divergence/<layer>': value, ..., 'divergence/all': value}.
  """
  out, num, den = {}, 0.0, 0.0
  for layer in params:
    d = sum(
      float(jnp.sum((a - b) ** 2))
      for a, b in zip(*map(jax.tree.leaves, (params[layer], reference[layer])))
    )
    n = sum(float(jnp.sum(b**2)) for b in jax.tree.leaves(reference[layer]))
    out[f'divergence/{layer}'] = (d / max(n, 1e-30)) ** 0.5
    num, den = num + d, den + n
  out['divergence/all'] = (num / max(den, 1e-30)) ** 0.5
  return out


def sgd_reference(config, setup, path: str) -> tuple[list, list[float]]:
  """SGD models after each round and their test accuracies (cached in `path` for this config).

  Centralised training runs the clients' step code on one "client" holding every
  client's training data (fedcomp.core.centralised), with the client optimizer.
  """
  rounds = config.total_rounds
  config_id = json.dumps(config.to_dict(), sort_keys=True, default=str)  # what the models depend on
  leaves, treedef = jax.tree.flatten(setup.model.params)
  if os.path.exists(path):
    with np.load(path) as f:
      if 'config' in f and str(f['config']) == config_id:
        per_round = [
          jax.tree.unflatten(treedef, [f[f'r{r}_{i}'] for i in range(len(leaves))])
          for r in range(rounds)
        ]
        return per_round, list(f['accuracy'])
  step = setup.client_optimizer
  epoch = make_epoch_fn(setup.task, setup.model.apply, step, config.batch_size)
  arrays = {k: jnp.asarray(v) for k, v in as_batch(setup.data.train).items()}
  params, model_state = setup.model.params, setup.model.state
  opt_state = step.init(params)
  key = jax.random.fold_in(jax.random.key(config.seed), 2**31 - 2)  # apart from round keys
  per_round, accuracy = [], []
  for r in range(rounds):  # one jitted call per epoch
    for e in range(config.local_epochs):
      k = jax.random.fold_in(key, r * config.local_epochs + e)
      params, model_state, opt_state, _ = epoch(params, model_state, opt_state, arrays, k)
    per_round.append(jax.device_get(params))
    accuracy.append(setup.evaluate(params, model_state, setup.data.global_test)['accuracy'])
    logging.info('SGD reference: round %d, test accuracy %.4f', r + 1, accuracy[-1])
  arrays = {
    f'r{r}_{i}': leaf for r, p in enumerate(per_round) for i, leaf in enumerate(jax.tree.leaves(p))
  }
  tmp = path + '.tmp.npz'
  np.savez(tmp, config=np.asarray(config_id), accuracy=np.asarray(accuracy), **arrays)
  os.replace(tmp, path)
  return per_round, accuracy


def spearman(a, b) -> float:
  """Spearman's rank correlation (average ranks for ties)."""

  def ranks(v):
    v = np.asarray(v, float)
    order = np.argsort(v, kind='stable')
    r = np.empty(len(v))
    r[order] = np.arange(len(v))
    for value in np.unique(v):  # ties share their mean rank
      r[v == value] = r[v == value].mean()
    return r

  ra, rb = ranks(a), ranks(b)
  ra, rb = ra - ra.mean(), rb - rb.mean()
  return float((ra * rb).sum() / np.sqrt((ra**2).sum() * (rb**2).sum()))


def per_round(reference: list, round_: int, params) -> dict[str, float]:
  """The divergence of `params` from the SGD model after the same round."""
  return layer_divergence(params, reference[round_ - 1])


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the divergence experiment (see the module docstring); returns the summary."""
  cases = case_configs(config)
  os.makedirs(workdir, exist_ok=True)
  reference = sgd_accuracy = None
  rows, final = [], {}
  for label, c in cases.items():
    setup = federated.build(c)
    if reference is None:  # the first partition's data (every partition has the same examples)
      path = os.path.join(workdir, 'sgd_reference.npz')
      reference, sgd_accuracy = sgd_reference(c, setup, path)
    sub = os.path.join(workdir, label)
    done = federated.run(c, sub, setup=setup, round_metrics=partial(per_round, reference))
    with open(os.path.join(sub, 'data_stats.json')) as f:
      emd = json.load(f)['emd_mean']
    for m in _read_jsonl(os.path.join(sub, 'metrics.jsonl')):
      rows.append({'partition': label, 'emd_mean': emd, **m})
    final[label] = {
      'emd_mean': emd,
      'accuracy': done['eval/accuracy'],
      'divergence_all': done['divergence/all'],
      **{k: v for k, v in done.items() if k.startswith('divergence/')},
    }
    logging.info(
      '%s: EMD %.3f, accuracy %.4f, divergence %.4f',
      label,
      emd,
      done['eval/accuracy'],
      done['divergence/all'],
    )

  keys = sorted({k for r in rows for k in r} - {'partition', 'emd_mean', 'round'})
  with open(os.path.join(workdir, 'divergence.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, ['partition', 'emd_mean', 'round', *keys])
    w.writeheader()
    w.writerows(rows)
  labels = list(final)
  emds = [final[k]['emd_mean'] for k in labels]
  summary = {
    'partitions': final,
    'sgd_accuracy': float(sgd_accuracy[-1]),
    'spearman_emd_divergence': spearman(emds, [final[k]['divergence_all'] for k in labels]),
    'spearman_emd_accuracy': spearman(emds, [final[k]['accuracy'] for k in labels]),
  }
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  _plot(workdir, final, summary['sgd_accuracy'])
  logging.info('Spearman(EMD, divergence) = %.3f', summary['spearman_emd_divergence'])
  return summary


def _plot(workdir: str, final: dict, sgd_accuracy: float) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  labels = sorted(final, key=lambda k: final[k]['emd_mean'])
  emd = [final[k]['emd_mean'] for k in labels]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(emd, [final[k]['accuracy'] for k in labels], 'o')
  ax.axhline(sgd_accuracy, ls='--', c='gray', label='centralised SGD')
  for k, e in zip(labels, emd):
    ax.annotate(k, (e, final[k]['accuracy']), fontsize=8)
  ax.set(xlabel='mean client EMD', ylabel='FedAvg test accuracy', title='Accuracy vs EMD')
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'accuracy_vs_emd.png'), dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(5, 3.5))
  layers = sorted(k for k in final[labels[0]] if k.startswith('divergence/'))
  for layer in layers:
    ax.plot(
      emd,
      [final[k][layer] for k in labels],
      'o-' if layer.endswith('/all') else '.:',
      label=layer.split('/')[1],
    )
  ax.set(
    xlabel='mean client EMD',
    ylabel='‖w_FedAvg − w_SGD‖ / ‖w_SGD‖',
    title='Weight divergence vs EMD (final round)',
  )
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'divergence_vs_emd.png'), dpi=120)
  plt.close(fig)
