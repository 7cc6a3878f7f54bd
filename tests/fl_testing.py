"""Small models, data and builders shared by the core and algorithm tests."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedcomp import tasks
from fedcomp.core import AlgorithmContext, ClientMap, FederatedRound, OptimizerStep
from fedcomp.core.reducers import weighted_mean


def linear_apply(params, state, x, *, train=False, key=None, mask=None):
  """Logits = flattened x @ w (+ b if present): gradients easy to check by hand."""
  del train, key, mask
  return x.reshape(x.shape[0], -1) @ params['w'] + params.get('b', 0.0), state


def dropout_apply(params, state, x, *, train=False, key=None, mask=None):
  """linear_apply with inverted dropout (rate 0.5) on the inputs when training."""
  del mask
  x = x.reshape(x.shape[0], -1)
  if train:
    keep = jax.random.bernoulli(key, 0.5, x.shape)
    x = jnp.where(keep, x / 0.5, 0.0)
  return x @ params['w'] + params.get('b', 0.0), state


@dataclasses.dataclass(frozen=True)
class TinyModel:
  """The parts of a BuiltModel the algorithms use."""

  apply: object = linear_apply
  params: dict = None
  state: dict = dataclasses.field(default_factory=dict)
  norm_paths: tuple = ()


def random_clients(num, pad, sizes, seed=0, features=5, classes=3):
  """(data {'x', 'y'}, mask) for `num` clients padded to `pad`, with the given sizes."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num, pad, features)).astype(np.float32)
  y = rng.integers(0, classes, (num, pad)).astype(np.int32)
  mask = np.arange(pad)[None] < np.asarray(sizes)[:, None]
  return {'x': x * mask[..., None], 'y': y * mask}, mask


def linear_params(features, init_scale=0.1, bias=False):
  """Params of linear_apply for 3 classes: w filled with init_scale, b = 0 if asked."""
  params = {'w': jnp.full((features, 3), init_scale, jnp.float32)}
  if bias:
    params['b'] = jnp.zeros((3,), jnp.float32)
  return params


def context(
  features=5,
  *,
  client_lr=0.5,
  server_lr=1.0,
  client_tx=None,
  apply=linear_apply,
  aggregator=None,
  cohort_fraction=1.0,
  bias=False,
):
  """An AlgorithmContext for a linear classifier."""
  model = TinyModel(apply=apply, params=linear_params(features, bias=bias))
  return AlgorithmContext(
    model=model,
    task=tasks.make_task('classification'),
    client_optimizer=OptimizerStep(client_tx or optax.sgd(client_lr)),
    server_tx=optax.sgd(server_lr),
    aggregator=aggregator or weighted_mean(),
    cohort_fraction=cohort_fraction,
  )


def mesh(num_devices=1):
  devices = jax.devices()[:num_devices]
  assert len(devices) == num_devices, f'{num_devices} devices asked for, {len(devices)} present'
  return jax.sharding.Mesh(np.array(devices), ('clients',))


def round_for(
  algorithm,
  num_devices=1,
  *,
  num_clients=4,
  pad_to=6,
  batch_size=2,
  epochs=1,
  strategy='vmap',
  chunk_size=None,
  dynamic_steps=False,
  unroll=1,
  reduction_width=8,
):
  """A FederatedRound over the first `num_devices` devices."""
  cm = ClientMap(mesh(num_devices), strategy, chunk_size, reduction_width)
  return FederatedRound(
    algorithm,
    cm,
    num_clients=num_clients,
    local_epochs=epochs,
    batch_size=batch_size,
    pad_to=pad_to,
    unroll=unroll,
    dynamic_steps=dynamic_steps,
  )


def run_rounds(fr, data, mask, ids, rounds=2, seed=0, params=None, model_state=None):
  """Runs `rounds` rounds of the same cohort; returns (server, table, last metrics)."""
  if params is None:
    params = linear_params(data['x'][0, 0].size)
  server, table = fr.init(params, model_state)
  metrics = None
  for r in range(rounds):
    cohort = fr.put_cohort(np.asarray(ids), data, mask)
    server, table, metrics = fr.round(server, table, *cohort, jax.random.key(seed + r))
  return server, table, metrics


def tree_equal(a, b) -> bool:
  """Bit-identical pytrees."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))
