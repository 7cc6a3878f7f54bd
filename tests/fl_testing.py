"""Small models and data shared by the engine and algorithm tests."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedcomp.core import RoundEngine
from fedcomp.core.losses import classification_loss


def linear_apply(params, x, *, train=False, key=None):
  """Logits = flattened x @ w (+ b if present): gradients easy to check by hand."""
  del train, key
  return x.reshape(x.shape[0], -1) @ params['w'] + params.get('b', 0.0)


def random_clients(num, pad, sizes, seed=0, features=5, classes=3):
  """(x, y, mask) for `num` clients padded to `pad`, with the given sizes."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num, pad, features)).astype(np.float32)
  y = rng.integers(0, classes, (num, pad)).astype(np.int32)
  mask = np.arange(pad)[None] < np.asarray(sizes)[:, None]
  return x * mask[..., None], y * mask, mask


def engine_for(
  make_algorithm,
  num_devices=1,
  *,
  num_clients=4,
  pad_to=6,
  batch_size=2,
  epochs=1,
  client_lr=0.5,
  server_lr=1.0,
  **alg_kwargs,
):
  """A RoundEngine over the first `num_devices` devices for linear_apply."""
  alg = make_algorithm(
    loss_fn=classification_loss(linear_apply),
    client_tx=optax.sgd(client_lr),
    server_tx=optax.sgd(server_lr),
    **alg_kwargs,
  )
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:num_devices]), ('clients',))
  return RoundEngine(
    alg,
    num_clients=num_clients,
    local_epochs=epochs,
    batch_size=batch_size,
    pad_to=pad_to,
    mesh=mesh,
  )


def linear_params(features, init_scale=0.1, bias=False):
  """Params of linear_apply for 3 classes: w filled with init_scale, b = 0 if asked."""
  params = {'w': jnp.full((features, 3), init_scale, jnp.float32)}
  if bias:
    params['b'] = jnp.zeros((3,), jnp.float32)
  return params


def run_rounds(eng, x, y, mask, ids, rounds=2, seed=0, init_scale=0.1, bias=False):
  """Runs `rounds` rounds of the same cohort; returns (server, table, last metrics)."""
  server, table = eng.init(linear_params(x[0, 0].size, init_scale, bias))
  metrics = None
  for r in range(rounds):
    cohort = eng.put_cohort(np.asarray(ids), x, y, mask)
    server, table, metrics = eng.round(server, table, *cohort, jax.random.key(seed + r))
  return server, table, metrics
