"""Model registry and `build_model`, which turns an NNX module into pure functions and pytrees.

Every model file exposes `Model(*, input_shape, num_classes, rngs, **kwargs)`, an nnx.Module
called as `model(x, train=..., rngs=key, mask=mask)`. `build_model` splits it once into
parameters (nnx.Param) and model state (every other variable, e.g. BatchNorm's running
statistics); afterwards the rest of fedcomp sees only a pure
`apply(params, state, x, *, train, key, mask) -> (outputs, new_state)` and nested dicts.
`taps` runs the same forward pass and also returns named activations and BatchNorm input
statistics (see fedcomp.models.taps), for knowledge distillation and DeepInversion.
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from fedcomp.models import autoencoder, cnn, mlp, resnet, simple_cnn, split_cnn, split_mlp, vgg
from fedcomp.models.flops import count_matmul_flops
from fedcomp.models.taps import recording
from fedcomp.registry import check_kwargs, lookup
from fedcomp.utils.param_paths import leaf_paths

MODELS = {
  'autoencoder': autoencoder.Model,
  'cnn': cnn.Model,
  'mlp': mlp.Model,
  'resnet': resnet.Model,
  'simple_cnn': simple_cnn.Model,
  'split_cnn': split_cnn.Model,
  'split_mlp': split_mlp.Model,
  'vgg': vgg.Model,
}

_NOT_OPTIONS = ('self', 'input_shape', 'num_classes', 'rngs')
_FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
NORM_LAYERS = (nnx.BatchNorm, nnx.LayerNorm, nnx.GroupNorm, nnx.RMSNorm)


@dataclasses.dataclass(frozen=True)
class BuiltModel:
  """A model as pure functions and data.

  Attributes:
    apply: apply(params, state, x, *, train=False, key=None, mask=None) -> (outputs, new_state);
      pure, jittable and vmappable. train=True applies dropout (needs `key`) and normalises by
      batch statistics, computed over the rows where `mask` (B,) is True and folded into the
      returned state; train=False uses the running statistics and returns `state` unchanged.
    params: nested dict of the trainable arrays, e.g. {'conv0': {'kernel': ..., 'bias': ...}}.
    state: nested dict of the non-parameter variables (BatchNorm's `mean` and `var`); {} for
      models without any.
    norm_paths: the parameter paths ('blocks/0/bn0/scale') of normalisation layers (what FedBN
      keeps local).
    flops_per_example: forward FLOPs per example (2 x multiply-adds of conv/dense layers).
    taps: taps(params, state, x, *, train=False, key=None, mask=None) -> (outputs, new_state,
      taps): `apply`'s results plus taps = {'features': {name: (B, D) float32}, 'bn': (...)}.
      'features' holds the model's named activations: every classifier gives 'penultimate'
      (the input of its logits layer, after dropout when training); resnet also 'stage0',
      'stage1', ... (each stage's output, globally average-pooled); autoencoder 'code'.
      'bn' has one dict per BatchNorm layer in forward-execution order:
      {'mean', 'var'} (C,) of the layer's input over the rows where `mask` is True (all rows
      when None) and spatial positions, biased variance, in training and evaluation alike;
      {'running_mean', 'running_var'} (C,) its stored statistics before this call. () for
      models without BatchNorm. Pure, jittable, vmappable, differentiable in params and x.
    input_shape: the shape of one example.
    feature_names (a cached property): the keys of taps['features'] (sorted, as are the
      features), from an abstract evaluation made on first use.
  """

  apply: Callable
  params: dict
  state: dict
  norm_paths: tuple[str, ...]
  flops_per_example: int
  taps: Callable
  input_shape: tuple[int, ...]

  @functools.cached_property
  def feature_names(self) -> tuple[str, ...]:
    x = jax.ShapeDtypeStruct((1, *self.input_shape), jnp.float32)
    fn = lambda p, s, x: self.taps(p, s, x)[2]['features']  # noqa: E731
    return tuple(sorted(jax.eval_shape(fn, self.params, self.state, x)))


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


def _norm_param_paths(module: nnx.Module) -> tuple[str, ...]:
  """Paths of the parameters that belong to normalisation layers."""
  found = []
  for path, node in nnx.iter_graph(module):
    if isinstance(node, NORM_LAYERS):
      prefix = '/'.join(str(p) for p in path)
      params = nnx.to_pure_dict(nnx.state(node, nnx.Param))
      found += [f'{prefix}/{p}' for p in leaf_paths(params)]
  return tuple(sorted(found))


def _creator(name, kwargs, input_shape, num_classes, key):
  """create(rngs) -> the nnx module, with the options checked (named config.<key>.*)."""
  model_cls = lookup(MODELS, name, 'model_name' if key == 'model' else f'{key}_name')
  kwargs = check_kwargs(_options_signature(model_cls), kwargs, key, f'model {name!r}')
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  input_shape = tuple(int(d) for d in input_shape)
  num_classes = 0 if num_classes is None else int(num_classes)

  def create(rngs):
    return model_cls(input_shape=input_shape, num_classes=num_classes, rngs=rngs, **kwargs)

  return create


def check_model(name: str, kwargs: Mapping, input_shape, num_classes, key: str = 'model') -> None:
  """Creates model `name` abstractly (no arrays, no compilation): its options and its fit to
  the input shape fail here with a one-line ConfigError.

  Args:
    name, kwargs, input_shape, num_classes: as build_model.
    key: the config section the options come from (named in errors).
  """
  create = _creator(name, kwargs, input_shape, num_classes, key)
  nnx.eval_shape(lambda: create(nnx.Rngs(0)))


def build_model(
  name: str, kwargs: Mapping, input_shape: tuple[int, ...], num_classes: int | None, seed: int
) -> BuiltModel:
  """Creates model `name` once and splits it into a pure apply function, params and state.

  Args:
    name: key of MODELS (config.model_name).
    kwargs: model options (config.model); None-valued fields mean 'use the default'.
    input_shape: shape of one example, e.g. (28, 28, 1).
    num_classes: number of logits (None: unlabelled data; the model decides its outputs).
    seed: initialisation seed.

  Returns:
    The BuiltModel.
  """
  create = _creator(name, kwargs, input_shape, num_classes, 'model')
  input_shape = tuple(int(d) for d in input_shape)
  # Abstract creation (cheap) gives the graph and validates the options; one jitted init
  # then computes the values (faster than eager init, whose ops compile one by one).
  abstract = nnx.eval_shape(lambda: create(nnx.Rngs(seed)))
  graphdef, abstract_params, abstract_state = nnx.split(abstract, nnx.Param, ...)
  params_treedef = jax.tree.structure(nnx.to_pure_dict(abstract_params))
  state_treedef = jax.tree.structure(nnx.to_pure_dict(abstract_state))
  params_nnx_treedef = jax.tree.structure(abstract_params)
  state_nnx_treedef = jax.tree.structure(abstract_state)

  def init(key):
    _, p, s = nnx.split(create(nnx.Rngs(key)), nnx.Param, ...)
    return nnx.to_pure_dict(p), nnx.to_pure_dict(s)

  # On CPU, XLA's optimisation passes dominate the init's compile time (measured 1.1-1.3 s ->
  # 0.4-0.5 s for cnn/simple_cnn) and buy nothing for a program that runs once.
  options = _FAST_COMPILE if jax.default_backend() == 'cpu' else None
  params, state = jax.jit(init, compiler_options=options)(jax.random.key(seed))

  def apply(params, state, x, *, train: bool = False, key=None, mask=None):
    if train and key is None:
      raise ValueError('apply(train=True) needs a dropout key')
    if jax.tree.structure(params) != params_treedef:
      raise ValueError(f'params do not match model {name!r}: {jax.tree.structure(params)}')
    # Pure dicts and nnx states flatten in the same sorted-key order: leaves map one to one.
    p = jax.tree.unflatten(params_nnx_treedef, jax.tree.leaves(params))
    s = jax.tree.unflatten(state_nnx_treedef, jax.tree.leaves(state))
    model = nnx.merge(graphdef, p, s)
    out = model(x, train=train, rngs=key if train else None, mask=mask)
    if not train or state_treedef.num_leaves == 0:
      return out, state
    new = jax.tree.leaves(nnx.state(model, nnx.Not(nnx.Param)))
    return out, jax.tree.unflatten(state_treedef, new)

  def taps_fn(params, state, x, *, train: bool = False, key=None, mask=None):
    with recording() as recorded:
      out, new_state = apply(params, state, x, train=train, key=key, mask=mask)
    features = dict(sorted(recorded.features.items()))  # as jit returns dicts
    return out, new_state, {'features': features, 'bn': tuple(recorded.bn)}

  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  flops = count_matmul_flops(lambda p, s, x: apply(p, s, x)[0], params, state, x)
  return BuiltModel(
    apply=apply,
    params=params,
    state=state,
    norm_paths=_norm_param_paths(abstract),
    flops_per_example=flops,
    taps=taps_fn,
    input_shape=input_shape,
  )
