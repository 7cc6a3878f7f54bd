"""FishLeg: a learned inverse Fisher Q(λ) ≈ (F + γI)⁻¹ as optax transforms.

`scale_by_fishleg` returns Q(λ)·g and, every `aux_every` steps, takes one step
of its own optax optimizer (Adam by default) on the auxiliary loss

  A(λ; u) = ½ uᵀ Q(λ) F_γ Q(λ) u − uᵀ Q(λ) u,   F_γ = F + γI,

whose minimiser over symmetric positive definite Q is F_γ⁻¹ for every u. Its
gradient is (∂(Q(λ)u)/∂λ)ᵀ (F_γ Q u − u), computed with one vector-Jacobian
product through Q and one Fisher-vector product. The Fisher-vector product is a
Hessian-vector product of the negative log-likelihood of targets sampled from
the model (E_y~p_θ[∇²(−log p(y|x, θ))] = F), which the caller supplies as the
keyword-only extra argument `nll_fn(params, key)` together with a `key`
(tests/optim/fishleg_test.py runs this example):

  >>> import jax, jax.numpy as jnp, optax
  >>> from fedcomp.optim import fishleg
  >>> from fedcomp.optim.fishleg_transform import sampled_nll
  >>> def apply(params, x, *, train=False, key=None):  # a softmax regression
  ...   return x @ params['dense']['kernel'] + params['dense']['bias']
  >>> params = {'dense': {'kernel': jnp.zeros((4, 3)), 'bias': jnp.zeros(3)}}
  >>> x = jax.random.normal(jax.random.key(0), (32, 4))
  >>> y = (x[:, 0] > 0).astype(jnp.int32) + (x[:, 1] > 0)
  >>> def loss(p):
  ...   return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()
  >>> tx = fishleg(learning_rate=0.05, damping=0.1)
  >>> state = tx.init(params)
  >>> nll = sampled_nll(apply, x)  # or any (params, key) -> NLL of model-sampled targets
  >>> for step in range(20):
  ...   grads = jax.grad(loss)(params)
  ...   updates, state = tx.update(grads, state, params, nll_fn=nll, key=jax.random.key(step))
  ...   params = optax.apply_updates(params, updates)
  >>> bool(loss(params) < 0.8 * jnp.log(3.0))
  True

Q(λ) is a block-diagonal model over parameter groups chosen by (regex, block)
pairs on leaf paths (fedcomp.optim.fishleg_blocks): by default Kronecker-factored
blocks for dense and conv kernels (with their bias folded in as an extra input
row) and diagonal blocks for every other leaf (biases without a kernel,
normalisation scales); a kernel whose Kronecker factors would exceed
`max_factor_size` rows falls back to a diagonal block. The state caches the Gram
factors of Q(λ) (LᵀL, RᵀR), recomputed only when λ changes, so a step between
aux steps costs one Q·g product.

References: Garcia, Freddi, Fotiadis, Li, Vakili, Bernacchia, Hennequin 2023,
"Fisher-Legendre (FishLeg) optimization of deep neural networks" (ICLR).
"""

import functools
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedcomp.errors import ConfigError
from fedcomp.optim import fishleg_blocks
from fedcomp.tasks import classification
from fedcomp.utils.param_paths import leaf_paths

PyTree = Any
U_SAMPLING = ('gradient', 'gaussian')


class Group(NamedTuple):
  """One block of Q: its kind and the indices (jax.tree.leaves order) of its leaves."""

  kind: str
  leaves: tuple[int, ...]


def assign_blocks(
  params: PyTree,
  blocks: Sequence[tuple[str, str]] = (),
  max_factor_size: int = 4096,
  fallback: str = 'diag',
) -> list[Group]:
  """Groups the leaves of `params` into blocks.

  Args:
    params: the params pytree.
    blocks: (regex, kind) pairs; the first regex that fully matches a leaf path
      ('dense0/kernel') decides its kind. Unmatched leaves get the default: 'kron'
      for rank-2 and rank-4 leaves named 'kernel', 'diag' otherwise. A kernel in a
      'kron', 'full' or 'block' group takes its sibling 'bias' leaf along unless a
      pair names the bias explicitly.
    max_factor_size: a default 'kron' kernel whose input or output factor would
      have more rows falls back to `fallback` (explicit pairs are obeyed).
    fallback: 'diag', or 'kdiag' (a diagonal input factor) for kernels whose output
      factor still fits.

  Returns:
    The groups, each leaf in exactly one.
  """
  paths = leaf_paths(params)
  shapes = [jnp.shape(x) for x in jax.tree.leaves(params)]
  compiled = []
  for pattern, kind in blocks:
    if kind not in fishleg_blocks.BLOCKS:
      known = ', '.join(fishleg_blocks.BLOCKS)
      raise ConfigError(f'FishLeg block {kind!r} (for {pattern!r}) is unknown; known: {known}')
    compiled.append((re.compile(pattern), kind))

  def explicit(i):
    return next((kind for regex, kind in compiled if regex.fullmatch(paths[i])), None)

  groups, taken = [], set()
  is_kernel_leaf = [
    p.rsplit('/', 1)[-1] == 'kernel' and len(s) in (2, 4) for p, s in zip(paths, shapes)
  ]
  # Kernels first, so that they claim their biases; then every other leaf.
  order = [i for i in range(len(paths)) if is_kernel_leaf[i]]
  order += [i for i in range(len(paths)) if not is_kernel_leaf[i]]
  for i in order:
    path = paths[i]
    if i in taken:
      continue
    kind = explicit(i)
    is_kernel = is_kernel_leaf[i]
    if kind is None:
      kind = 'kron' if is_kernel else 'diag'
      rows = (shapes[i][-1], math.prod(shapes[i][:-1]) + 1) if is_kernel else ()
      if kind == 'kron' and max(rows) > max_factor_size:
        kind = fallback if fallback == 'kdiag' and rows[0] <= max_factor_size else 'diag'
    if kind in ('kron', 'kdiag') and not is_kernel:
      raise ConfigError(f'FishLeg block {kind} needs a rank-2 or rank-4 kernel; {path} is not')
    members = [i]
    if is_kernel and fishleg_blocks.BLOCKS[kind].takes_bias:
      bias = path[: -len('kernel')] + 'bias'
      if bias in paths:
        j = paths.index(bias)
        if explicit(j) in (None, kind) and j not in taken:
          members.append(j)
    taken.update(members)
    groups.append(Group(kind, tuple(members)))
  return groups


class InverseFisher(NamedTuple):
  """Q(λ) over a params structure: the groups, their block functions and shapes."""

  groups: tuple[Group, ...]
  treedef: Any
  shapes: tuple[tuple[int, ...], ...]
  block_size: int

  def _fns(self, kind):
    block = fishleg_blocks.BLOCKS[kind]
    if kind == 'block':
      return block._replace(init=functools.partial(block.init, block_size=self.block_size))
    return block

  def _group_shapes(self, g):
    return [self.shapes[i] for i in g.leaves]

  def init(self, scale) -> tuple:
    """λ with Q(λ) = scale · I."""
    return tuple(self._fns(g.kind).init(self._group_shapes(g), scale) for g in self.groups)

  def _apply(self, fn_name, per_group, tree=None):
    leaves = None if tree is None else jax.tree.leaves(tree)
    out = [None] * len(self.shapes)
    for g, arg in zip(self.groups, per_group):
      fn = getattr(self._fns(g.kind), fn_name)
      if leaves is None:
        res = fn(arg, self._group_shapes(g))
      else:
        res = fn(arg, [leaves[i] for i in g.leaves], self._group_shapes(g))
      for i, r in zip(g.leaves, res):
        out[i] = r
    return jax.tree.unflatten(self.treedef, out)

  def prepare(self, lam) -> tuple:
    """The v-independent factors of Q(λ) (Gram matrices, squares), one per group."""
    return tuple(self._fns(g.kind).prepare(lam_g) for g, lam_g in zip(self.groups, lam))

  def apply(self, cache, v: PyTree) -> PyTree:
    """Q·v from `prepare(λ)`: the cheap per-step product."""
    return self._apply('apply', cache, v)

  def matvec(self, lam, v: PyTree) -> PyTree:
    """Q(λ)·v for a params-shaped v."""
    return self.apply(self.prepare(lam), v)

  def diagonal(self, lam) -> PyTree:
    """diag(Q(λ)), params-shaped, in closed form."""
    return self._apply('diagonal', lam)

  def dense(self, lam) -> jax.Array:
    """Q(λ) as a matrix over ravel_pytree(params) order (small models and tests)."""
    sizes = [math.prod(s) for s in self.shapes]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    n = sum(sizes)
    q = jnp.zeros((n, n), jnp.float32)
    for g, lam_g in zip(self.groups, lam):
      block = self._fns(g.kind).dense(lam_g, self._group_shapes(g))
      idx = jnp.concatenate([jnp.arange(starts[i], starts[i] + sizes[i]) for i in g.leaves])
      q = q.at[idx[:, None], idx[None, :]].set(block)
    return q


def inverse_fisher(
  params: PyTree,
  blocks: Sequence[tuple[str, str]] = (),
  block_size: int = 50,
  max_factor_size: int = 4096,
  fallback: str = 'diag',
) -> InverseFisher:
  """The Q(λ) model for `params` (see assign_blocks for the arguments)."""
  groups = assign_blocks(params, blocks, max_factor_size, fallback)
  leaves, treedef = jax.tree.flatten(params)
  shapes = tuple(tuple(jnp.shape(x)) for x in leaves)
  return InverseFisher(tuple(groups), treedef, shapes, int(block_size))


def sampled_nll(apply: Callable, x: jax.Array, mask: jax.Array | None = None) -> Callable:
  """nll_fn(params, key) for a classifier: the mean cross-entropy of labels sampled
  from the model's own predictive distribution (the samples carry no gradient).

  Its Hessian-vector products are unbiased Fisher-vector products.

  Args:
    apply: apply(params, x, *, train, key) -> logits.
    x: a batch of inputs.
    mask: optional (B,) bool; masked rows do not count.

  Returns:
    nll_fn(params, key) -> scalar.
  """

  batch = {'x': x, 'mask': jnp.ones(x.shape[0], bool) if mask is None else mask}

  def stateful(params, state, x, *, train=False, key=None, mask=None):
    return apply(params, x, train=train, key=key), state

  return lambda params, key: classification.sampled_nll(stateful, params, {}, batch, key)


def bernoulli_sampled_nll(apply: Callable, x: jax.Array) -> Callable:
  """nll_fn(params, key) for Bernoulli outputs (auto-encoders): targets sampled from
  sigmoid(logits), summed over output units and averaged over the batch."""

  def nll(params, key):
    k_model, k_target = jax.random.split(key)
    logits = apply(params, x, train=True, key=k_model)  # the training-mode forward
    y = jax.lax.stop_gradient(jax.random.bernoulli(k_target, jax.nn.sigmoid(logits)))
    return optax.sigmoid_binary_cross_entropy(logits, y.astype(logits.dtype)).sum(-1).mean()

  return nll


class ScaleByFishLegState(NamedTuple):
  count: jax.Array  # int32 steps taken
  lam: tuple  # λ, one entry per block group
  aux_state: PyTree  # the aux optimizer's state on λ
  grad_ema: PyTree  # EMA of gradients: u for u_sampling='gradient'
  aux_loss: jax.Array  # A(λ; u) at the last aux step
  q_cache: tuple  # InverseFisher.prepare(λ): the Gram factors every step's Q·g uses


def find_state(tree: PyTree, cls: type):
  """The first `cls` instance (a NamedTuple state) inside an optimizer state, or None."""
  found = [
    s for s in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, cls)) if isinstance(s, cls)
  ]
  return found[0] if found else None


def _dot(a: PyTree, b: PyTree) -> jax.Array:
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def aux_loss_and_grad(
  q: InverseFisher,
  lam,
  u: PyTree,
  fisher_vp: Callable[[PyTree], PyTree],
  damping,
  precondition: Callable[[PyTree], PyTree] | None = None,
  cache=None,
  mask: PyTree | None = None,
) -> tuple[jax.Array, Any]:
  """A(λ; u) and its gradient in λ, from one Fisher-vector product.

  ∇_λ A = (∂(Q(λ)u)/∂λ)ᵀ (F_γ Q u − u): a vector-Jacobian product through Q.
  With `precondition` = (v -> Q v), the residual F_γ Q u − u is replaced by
  Q (F_γ Q u − u): a Newton step in z = Q u, whose Hessian in A is F_γ ≈ Q⁻¹
  (the official PyTorch code's `precondition_aux`).

  Args:
    q: the Q(λ) model.
    lam: λ.
    u: a params-shaped probe vector.
    fisher_vp: v -> F·v (params-shaped).
    damping: γ.
    precondition: optional map applied to the residual (no gradient flows through it).
    cache: `q.prepare(lam)` if already at hand (the transform's state keeps it).
    mask: optional params-shaped 0/1 (or bool) gates on u, Q u and F·(Q u): Q then fits
      the inverse of F_γ restricted to the unmasked coordinates (pruned weights are
      never fitted; FishLeg Surgeon).

  Returns:
    (A(λ; u), the λ-gradient: ∇_λ A, or its preconditioned form).
  """
  if cache is None:
    cache = q.prepare(lam)
  # Q u is linear in the prepared factors: differentiate apply at the cache, then pull
  # back through prepare, whose own outputs (the Gram products) are not recomputed.
  if mask is None:
    gate = lambda t: t  # noqa: E731
  else:
    gate = lambda t: jax.tree.map(lambda a, m: a * m.astype(a.dtype), t, mask)  # noqa: E731
  u = gate(u)
  z, apply_vjp = jax.vjp(lambda c: gate(q.apply(c, u)), cache)
  fz = gate(jax.tree.map(lambda a, b: a + damping * b, fisher_vp(z), z))  # F_γ Q u
  residual = jax.tree.map(jnp.subtract, fz, u)
  if precondition is not None:
    residual = precondition(residual)
  (d_cache,) = apply_vjp(jax.lax.stop_gradient(residual))
  (grad,) = jax.vjp(q.prepare, lam)[1](d_cache)
  return 0.5 * _dot(z, fz) - _dot(u, z), grad


def hessian_vector_product(fn: Callable, params: PyTree, v: PyTree) -> PyTree:
  """∇²fn(params)·v by forward-over-reverse differentiation."""
  return jax.jvp(jax.grad(fn), (params,), (v,))[1]


def scale_by_fishleg(
  damping: float = 1e-3,
  aux_learning_rate: float = 1e-4,
  aux_every: int = 10,
  u_sampling: str = 'gradient',
  initial_scale: float | None = None,
  gradient_decay: float = 0.9,
  blocks: Sequence[tuple[str, str]] = (),
  block_size: int = 50,
  max_factor_size: int = 4096,
  aux_optimizer: Callable[[Any], optax.GradientTransformation] | None = None,
  precondition_aux: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Preconditions updates by FishLeg's learned inverse Fisher: returns Q(λ)·g.

  Args:
    damping: γ in F_γ = F + γI.
    aux_learning_rate: learning rate of the aux optimizer on λ.
    aux_every: λ takes one aux step every this many updates (at counts 0, k, 2k, ...).
    u_sampling: 'gradient' (u = EMA of gradients, normalised, as in the paper) or
      'gaussian' (u ~ N(0, I): fits the whole inverse, what pruning needs).
    initial_scale: Q₀ = initial_scale · I; None means 1/damping (the inverse of the
      damping-only Fisher).
    gradient_decay: decay of the gradient EMA used for u.
    blocks: (regex, kind) pairs over parameter paths; kinds 'kron', 'diag', 'full',
      'block' (see assign_blocks).
    block_size: block size of 'block' groups.
    max_factor_size: default 'kron' kernels with a larger factor fall back to 'diag'.
    aux_optimizer: learning_rate -> optax transformation for λ; None: optax.adam.
    precondition_aux: multiply the aux residual F_γ Q u − u by the current Q before
      the vector-Jacobian product (see aux_loss_and_grad; the PyTorch code's default,
      not the paper's JAX code's).

  The numeric arguments damping, aux_learning_rate, aux_every, initial_scale and
  gradient_decay work with optax.inject_hyperparams; the structural ones (blocks,
  block_size, max_factor_size, u_sampling, precondition_aux) go in its
  `static_args`.

  Returns:
    An optax.GradientTransformationExtraArgs whose update takes keyword-only
    `nll_fn` ((params, key) -> scalar NLL of model-sampled targets) and `key` on the
    steps where λ is updated (always pass them), and optionally `masks` (pruning masks,
    params-shaped: the aux loss then ignores masked coordinates); other extra arguments
    are ignored.
  """
  if u_sampling not in U_SAMPLING:
    raise ConfigError(f'u_sampling={u_sampling!r} is unknown; known: {", ".join(U_SAMPLING)}')
  _check_positive('damping', damping)
  _check_positive('aux_every', aux_every, integer=True)
  if initial_scale is not None:
    _check_positive('initial_scale', initial_scale)
  make_aux = aux_optimizer or optax.adam

  def structure(params):
    return inverse_fisher(params, blocks, block_size, max_factor_size)

  def init_fn(params):
    q = structure(params)
    scale = 1.0 / damping if initial_scale is None else initial_scale
    lam = q.init(jnp.asarray(scale, jnp.float32))
    return ScaleByFishLegState(
      count=jnp.zeros((), jnp.int32),
      lam=lam,
      aux_state=make_aux(aux_learning_rate).init(lam),
      grad_ema=jax.tree.map(jnp.zeros_like, params),
      aux_loss=jnp.zeros((), jnp.float32),
      q_cache=q.prepare(lam),
    )

  def aux_step(state, params, grad_ema, nll_fn, key, masks=None):
    q = structure(params)
    k_u, k_y = jax.random.split(key)
    if u_sampling == 'gradient':
      norm = optax.tree.norm(grad_ema)
      u = jax.tree.map(lambda g: g / jnp.maximum(norm, 1e-12), grad_ema)
    else:
      leaves, treedef = jax.tree.flatten(params)
      keys = jax.random.split(k_u, len(leaves))
      u = jax.tree.unflatten(
        treedef, [jax.random.normal(k, jnp.shape(p), jnp.float32) for k, p in zip(keys, leaves)]
      )
    fisher_vp = functools.partial(hessian_vector_product, lambda p: nll_fn(p, k_y), params)
    precondition = functools.partial(q.apply, state.q_cache) if precondition_aux else None
    aux_loss, grad_lam = aux_loss_and_grad(
      q, state.lam, u, fisher_vp, damping, precondition, cache=state.q_cache, mask=masks
    )
    step, aux_state = make_aux(aux_learning_rate).update(grad_lam, state.aux_state, state.lam)
    lam = optax.apply_updates(state.lam, step)
    return lam, aux_state, aux_loss.astype(jnp.float32), q.prepare(lam)

  def update_fn(updates, state, params=None, *, nll_fn=None, key=None, masks=None, **extra):
    del extra
    if params is None or nll_fn is None or key is None:
      raise ValueError(
        'scale_by_fishleg.update needs params and the keyword arguments nll_fn=(params, key) '
        '-> negative log-likelihood of model-sampled targets, and key=a PRNG key'
      )
    grad_ema = jax.tree.map(
      lambda m, g: gradient_decay * m + (1 - gradient_decay) * g, state.grad_ema, updates
    )
    lam, aux_state, aux_loss, q_cache = jax.lax.cond(
      state.count % aux_every == 0,
      lambda: aux_step(state, params, grad_ema, nll_fn, key, masks),
      lambda: (state.lam, state.aux_state, state.aux_loss, state.q_cache),
    )
    out = structure(params).apply(q_cache, updates)
    count = optax.safe_int32_increment(state.count)
    return out, ScaleByFishLegState(count, lam, aux_state, grad_ema, aux_loss, q_cache)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


MOMENTUM_ON = ('update', 'gradient')


def _check_positive(name: str, value, integer: bool = False) -> None:
  """A ConfigError for a Python number out of range (arrays, e.g. injected, pass)."""
  if not isinstance(value, int | float) or isinstance(value, bool):
    return
  if not value > 0 or value != value or value == float('inf'):
    raise ConfigError(f'{name}={value!r} must be a finite number > 0')
  if integer and value != int(value):
    raise ConfigError(f'{name}={value!r} must be a positive integer')


def fishleg(
  learning_rate: optax.ScalarOrSchedule,
  momentum: float = 0.9,
  sgd_learning_rate: float | None = None,
  momentum_on: str = 'update',
  damping: float = 1e-3,
  aux_learning_rate: float = 1e-4,
  aux_every: int = 10,
  u_sampling: str = 'gradient',
  initial_scale: float | None = None,
  gradient_decay: float = 0.9,
  blocks: Sequence[tuple[str, str]] = (),
  block_size: int = 50,
  max_factor_size: int = 4096,
  aux_optimizer: Callable[[Any], optax.GradientTransformation] | None = None,
  precondition_aux: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """FishLeg: θ ← θ − η · EMA_β(Q(λ) g) (official PyTorch code) or θ ← θ − η · Q(λ) EMA_β(g)
  (the paper's JAX code).

  Every argument is an explicit keyword, so `optax.inject_hyperparams(fishleg)` can
  schedule the numeric ones (learning_rate, momentum, damping, aux_learning_rate, ...);
  pass the structural ones (blocks, u_sampling, momentum_on, ...) in its `static_args`.

  Args:
    learning_rate: η (or a schedule).
    momentum: β of the exponential moving average (0 disables it).
    sgd_learning_rate: if set, Q₀ = (sgd_learning_rate / learning_rate) · I, so the
      first steps equal SGD with that rate (the paper's initialisation); overrides
      `initial_scale`.
    momentum_on: 'update' averages the preconditioned gradients Q(λ) g; 'gradient'
      preconditions the average of the gradients, which is then also the u of the
      aux loss (`gradient_decay` is not used).
    damping: see scale_by_fishleg (γ > 0).
    aux_learning_rate: see scale_by_fishleg.
    aux_every: see scale_by_fishleg (a positive integer).
    u_sampling: see scale_by_fishleg.
    initial_scale: see scale_by_fishleg (> 0, or None).
    gradient_decay: see scale_by_fishleg.
    blocks: see scale_by_fishleg.
    block_size: see scale_by_fishleg.
    max_factor_size: see scale_by_fishleg.
    aux_optimizer: see scale_by_fishleg.
    precondition_aux: see scale_by_fishleg.

  Returns:
    The chained optax.GradientTransformationExtraArgs (extra args as scale_by_fishleg).
  """
  if momentum_on not in MOMENTUM_ON:
    raise ConfigError(f'momentum_on={momentum_on!r} is unknown; known: {", ".join(MOMENTUM_ON)}')
  if sgd_learning_rate is not None:
    if callable(learning_rate):
      raise ConfigError('sgd_learning_rate needs a constant learning_rate')
    _check_positive('sgd_learning_rate', sgd_learning_rate)
    _check_positive('learning_rate', learning_rate)
    initial_scale = sgd_learning_rate / learning_rate
  if isinstance(momentum, int | float) and not 0 <= momentum < 1:
    raise ConfigError(f'momentum={momentum!r} must be in [0, 1)')
  kwargs = dict(
    damping=damping,
    aux_learning_rate=aux_learning_rate,
    aux_every=aux_every,
    u_sampling=u_sampling,
    initial_scale=initial_scale,
    gradient_decay=gradient_decay,
    blocks=blocks,
    block_size=block_size,
    max_factor_size=max_factor_size,
    aux_optimizer=aux_optimizer,
    precondition_aux=precondition_aux,
  )
  # A momentum of exactly 0 (a Python number) needs no average; an injected one may change.
  no_average = isinstance(momentum, int | float) and momentum == 0
  average = [] if no_average else [optax.ema(momentum, debias=False)]
  if momentum_on == 'gradient':
    kwargs['gradient_decay'] = 0.0  # u = the incoming (already averaged) gradient
    parts = [*average, scale_by_fishleg(**kwargs)]
  else:
    parts = [scale_by_fishleg(**kwargs), *average]
  return optax.chain(*parts, optax.scale_by_learning_rate(learning_rate))
