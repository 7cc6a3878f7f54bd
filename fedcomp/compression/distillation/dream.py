"""Dream Distillation: dreams synthesised to match activation metadata of the teacher.

The teacher is released with *metadata*: per-class k-means centroids of one layer's
activations (default the penultimate: the classifier's input) on a small fraction of real
data, and the principal directions of the activations around them (`metadata.py`). A dream
of class c starts as noise and is optimised so that the teacher's activation at that layer
matches a target t = μ_{c,j} + Σ_m z_m √λ_m v_m sampled around one of the class's centroids
along its principal directions (`metadata.sample_targets`), under an image prior. Each
dream's loss is its own: the per-example loss ‖a(x) − t‖² / ‖t‖² (relative, so the
layer's scale does not matter) is vmapped over the batch, as the teacher in inference mode
treats examples independently. The student is then distilled on dreams alone.

Functions here: the teacher's activations at a layer (`features`), central and per-client
metadata (`central_metadata`, `client_metadata`: a lax.map over the clients, the values
stacked for the server's merge), and the dream loss for `synthesis.optimise_inputs`.

References: Bhardwaj, Suda, Marculescu 2019, "Dream Distillation: A Data-Independent Model
Compression Framework" (ICML ODML-CDNNR workshop, arXiv 1905.07072).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from fedcomp.compression.distillation import metadata as md


def layer_activations(model, params, state, x: jax.Array, layer: str) -> jax.Array:
  """(B, D) activations of the teacher at `layer` for inputs (B, ...) (inference mode)."""
  return model.taps(params, state, x)[2]['features'][layer].astype(jnp.float32)


def features(model, params, state, x: jax.Array, layer: str, batch_size: int) -> jax.Array:
  """(N, D) activations at `layer` of every input, `batch_size` at a time (a lax.map; call
  inside jit). N must be a multiple of batch_size (pad and mask the rest)."""
  batches = x.reshape(-1, batch_size, *x.shape[1:])
  out = jax.lax.map(lambda b: layer_activations(model, params, state, b, layer), batches)
  return out.reshape(x.shape[0], -1)


def central_metadata(model, params, state, arrays, *, layer, num_classes, clusters, components,
                     key, iters, batch_size) -> md.Metadata:  # fmt: skip
  """Metadata of the examples `arrays` ('x', 'y', 'mask'; N a multiple of batch_size) pooled
  in one place (call inside jit)."""
  f = features(model, params, state, arrays['x'], layer, batch_size)
  w = arrays['mask'].astype(jnp.float32)
  return md.class_metadata(f, arrays['y'], w, num_classes, clusters, components, key, iters)


def client_metadata(model, params, state, clients, *, layer, num_classes, clusters, components,
                    key, iters, batch_size) -> md.Metadata:  # fmt: skip
  """Each client's metadata of its own examples, stacked over clients (a lax.map over the
  client axis inside one program; call inside jit). Nothing but the metadata leaves a
  client.

  Args:
    clients: {'x', 'y', 'mask'} (M, n, ...) packed by client (n a multiple of batch_size;
      padding rows masked out) and 'index' (M,) the client ids (their k-means keys).
    Others as central_metadata.

  Returns:
    The stacked Metadata (M, ...); a client without examples has zero counts.
  """

  def one(client):
    f = features(model, params, state, client['x'], layer, batch_size)
    w = client['mask'].astype(jnp.float32)
    k = jax.random.fold_in(key, client['index'])
    return md.class_metadata(f, client['y'], w, num_classes, clusters, components, k, iters)

  return jax.lax.map(one, clients)


def dream_loss(model, params, state, layer: str, class_weight: float = 0.0) -> Callable:
  """The teacher term of a dream batch: loss_fn(x, (targets, labels)) -> (loss, metrics).

  Args:
    model: the teacher's BuiltModel (its `taps`).
    params, state: the teacher's (fixed) values.
    layer: the metadata's layer.
    class_weight: weight of the teacher's cross-entropy with the dream's class (0 in the
      paper: activations only).

  Returns:
    loss_fn: the mean over the batch of ‖a(x) − t‖²/‖t‖² (+ class_weight · CE).
  """

  def one(x, target, label):
    out, _, taps = model.taps(params, state, x[None])
    a = taps['features'][layer][0].astype(jnp.float32)
    match = jnp.sum(jnp.square(a - target)) / (jnp.sum(jnp.square(target)) + 1e-8)
    ce = optax.softmax_cross_entropy_with_integer_labels(out[0], label)
    return match, ce

  def loss_fn(x, aux):
    targets, labels = aux
    match, ce = jax.vmap(one)(x, targets, labels)
    loss = match.mean() + (class_weight * ce.mean() if class_weight else 0.0)
    return loss, {'match': match.mean(), 'ce': ce.mean()}

  return loss_fn
