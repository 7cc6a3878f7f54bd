"""Model registry and `build_model`, which turns an NNX module into a pure (apply, params) pair.

Every model file exposes `Model(*, input_shape, num_classes, rngs, **kwargs)`, an nnx.Module
called as `model(x, train=..., rngs=key)`. `build_model` splits it once; afterwards the rest of
fedcomp sees only a pure `apply(params, x, *, train, key)` and a nested dict of arrays.
"""

import dataclasses
import inspect
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from fedcomp.models import autoencoder, cnn, mlp, simple_cnn
from fedcomp.models.flops import count_matmul_flops
from fedcomp.registry import check_kwargs, lookup

MODELS = {
  'autoencoder': autoencoder.Model,
  'cnn': cnn.Model,
  'mlp': mlp.Model,
  'simple_cnn': simple_cnn.Model,
}

_NOT_OPTIONS = ('self', 'input_shape', 'num_classes', 'rngs')
_FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


@dataclasses.dataclass(frozen=True)
class BuiltModel:
  """A model as pure functions and data.

  Attributes:
    apply: apply(params, x, *, train=False, key=None) -> logits (B, num_classes); pure,
      jittable and vmappable. train=True applies dropout and needs `key`.
    params: nested dict of jnp arrays, e.g. {'conv0': {'kernel': ..., 'bias': ...}, ...}.
    flops_per_example: forward FLOPs per example (2 x multiply-adds of conv/dense layers).
  """

  apply: Callable
  params: dict
  flops_per_example: int


def _options_signature(model_cls) -> Callable:
  """Returns a stub whose signature lists the config options of `model_cls.__init__`.

  nnx.Module's metaclass hides `__init__`'s signature, and `input_shape`, `num_classes` and
  `rngs` come from the data and seed, not from config.model.
  """
  sig = inspect.signature(model_cls.__init__)
  stub = lambda **kwargs: None
  stub.__signature__ = sig.replace(
    parameters=[p for n, p in sig.parameters.items() if n not in _NOT_OPTIONS]
  )
  return stub


def build_model(
  name: str, kwargs: Mapping, input_shape: tuple[int, ...], num_classes: int, seed: int
) -> BuiltModel:
  """Creates model `name` once and splits it into a pure apply function and params.

  Args:
    name: key of MODELS (config.model_name).
    kwargs: model options (config.model); None-valued fields mean 'use the default'.
    input_shape: shape of one example, e.g. (28, 28, 1).
    num_classes: number of logits.
    seed: initialisation seed.

  Returns:
    The BuiltModel.
  """
  model_cls = lookup(MODELS, name, 'model_name')
  kwargs = check_kwargs(_options_signature(model_cls), kwargs, 'model', f'model {name!r}')
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  input_shape = tuple(int(d) for d in input_shape)
  num_classes = int(num_classes)

  def create(rngs):
    return model_cls(input_shape=input_shape, num_classes=num_classes, rngs=rngs, **kwargs)

  # Abstract creation (cheap) gives the graph and validates the options; one jitted init
  # then computes the values (faster than eager init, whose ops compile one by one).
  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: create(nnx.Rngs(seed))))
  variables = jax.tree.leaves(abstract_state, is_leaf=lambda v: isinstance(v, nnx.Variable))
  others = sorted({type(v).__name__ for v in variables if not isinstance(v, nnx.Param)})
  if others:
    raise TypeError(f'model {name!r} has non-Param variables ({", ".join(others)}); unsupported')
  state_treedef = jax.tree.structure(abstract_state)
  params_treedef = jax.tree.structure(nnx.to_pure_dict(abstract_state))

  def init(key):
    return nnx.to_pure_dict(nnx.split(create(nnx.Rngs(key)))[1])

  # On CPU, XLA's optimisation passes dominate the init's compile time (measured 1.1-1.3 s ->
  # 0.4-0.5 s for cnn/simple_cnn) and buy nothing for a program that runs once.
  options = _FAST_COMPILE if jax.default_backend() == 'cpu' else None
  params = jax.jit(init, compiler_options=options)(jax.random.key(seed))

  def apply(params, x, *, train: bool = False, key: jax.Array | None = None):
    if train and key is None:
      raise ValueError('apply(train=True) needs a dropout key')
    if jax.tree.structure(params) != params_treedef:
      raise ValueError(f'params do not match model {name!r}: {jax.tree.structure(params)}')
    # Both trees flatten in sorted-key order, so the leaves map one to one.
    state = jax.tree.unflatten(state_treedef, jax.tree.leaves(params))
    model = nnx.merge(graphdef, state)
    return model(x, train=train, rngs=key if train else None)

  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  flops = count_matmul_flops(lambda p, x: apply(p, x), params, x)
  return BuiltModel(apply=apply, params=params, flops_per_example=flops)
