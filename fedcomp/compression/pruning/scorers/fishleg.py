"""FishLeg Surgeon (FLS): OBS with FishLeg's learned inverse Fisher Q(λ) ≈ (F + γI)⁻¹.

Scores ρ_i = θ_i² / (2 [Q]_ii) come from each block's closed-form diagonal (no inversion);
the newly pruned set P is removed with one product, δθ = −Q (θ ⊙ 1_P / diag Q). Q is fitted
by FishLeg's auxiliary loss with Gaussian probes u (which fits the whole inverse, not only
gradient directions) and the pruning masks gating u, Q·u and F·(Q·u), so Q fits the inverse
of the Fisher restricted to the weights still alive and never spends capacity on pruned
ones. The Fisher-vector products are Hessian-vector products of the NLL of model-sampled
targets (`nll_fn(params, key)` in the extras).

Initialisation: Q₀ = 1/γ · I, or (`warm_start_probes` > 0) the diagonal warm start
Q₀ = diag(1/(F̂_ii + γ)) of the official code's FishConv2d, with F̂_ii the Hutchinson estimate
mean_k v_k ⊙ (F v_k) over Rademacher probes v_k (clipped at 0), written into the elementwise
rescaling A of the Kronecker blocks (and the vector of diagonal blocks); the aux loss then
learns the off-diagonal structure (L, R) from a Q already on the Fisher's scale.

When: `pretrain_steps` aux steps at the first pruning step (on the dense model), then
`refine_steps` at each later one (the "progressive assimilation" of the curvature into λ
instead of re-estimation), plus one aux step every `aux_every` optimizer steps in between
(0: none). Memory: λ of the Kronecker blocks (L, R and A: m'² + n² + m'·n per layer; the
'kdiag' fallback for wide layers keeps m' instead of m'²) and the aux optimizer's state.

References: McGowan et al. 2024, "Efficient Model Compression Techniques with FishLeg"
(arXiv 2412.02328); Garcia et al. 2023, FishLeg (ICLR); Hassibi & Stork 1993 (OBS).
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedcomp.errors import ConfigError
from fedcomp.optim import fishleg_blocks
from fedcomp.optim import fishleg_transform as fl
from fedcomp.optim.make_tx import check_hyperparameters


class FishLegSurgeonState(NamedTuple):
  lam: tuple  # λ of Q
  aux_state: object  # the aux optimizer's state
  count: jax.Array  # optimizer steps observed
  pretrained: jax.Array  # bool: the dense-model pre-training has run
  aux_loss: jax.Array  # A(λ; u) at the last aux step


def make(
  targets,
  damping: float = 1e-3,
  aux_learning_rate: float = 1e-3,
  pretrain_steps: int = 500,
  refine_steps: int = 100,
  aux_every: int = 0,
  initial_scale: float | None = None,
  precondition_aux: bool = True,
  blocks: Sequence[tuple[str, str]] = (),
  block_size: int = 50,
  max_factor_size: int = 4096,
  fallback: str = 'kdiag',
  warm_start_probes: int = 0,
):
  """The FishLeg Surgeon scorer.

  Args:
    targets: the pruning targets.
    damping: γ.
    aux_learning_rate: Adam's learning rate on λ.
    pretrain_steps: aux steps on the dense model at the first pruning step.
    refine_steps: aux steps at every later pruning step (with the current masks).
    aux_every: one aux step every this many optimizer steps between pruning steps (0: none).
    initial_scale: Q₀ = initial_scale · I (None: 1/γ).
    precondition_aux: precondition the aux gradient by Q (the official code's default).
    blocks, block_size, max_factor_size, fallback: Q's structure (fedcomp.optim.fishleg).
    warm_start_probes: Rademacher probes of the diagonal warm start (0: Q₀ = initial_scale·I).

  Returns:
    The Scorer; needs `nll_fn` in the extras. Its curvature is (Q's prepared factors,
    diag Q).
  """
  from fedcomp.compression.pruning.scorers import Scorer, require

  check_hyperparameters(
    dict(damping=damping, aux_learning_rate=aux_learning_rate, block_size=block_size,
         max_factor_size=max_factor_size),
    'pruning.scorer_kwargs',
  )  # fmt: skip
  for name, v in (('pretrain_steps', pretrain_steps), ('refine_steps', refine_steps),
                  ('aux_every', aux_every), ('warm_start_probes', warm_start_probes)):  # fmt: skip
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
      raise ConfigError(f'pruning.scorer_kwargs.{name}={v!r} must be an integer >= 0')
  if initial_scale is not None:
    check_hyperparameters({'initial_scale': initial_scale}, 'pruning.scorer_kwargs')
  if fallback not in ('diag', 'kdiag'):
    raise ConfigError(f"pruning.scorer_kwargs.fallback={fallback!r} must be 'diag' or 'kdiag'")
  del targets
  aux_opt = optax.adam(aux_learning_rate)
  scale = 1.0 / damping if initial_scale is None else initial_scale

  def structure(params):
    return fl.inverse_fisher(params, blocks, block_size, max_factor_size, fallback)

  def init(params):
    lam = structure(params).init(jnp.asarray(scale, jnp.float32))
    return FishLegSurgeonState(
      lam, aux_opt.init(lam), jnp.zeros((), jnp.int32), jnp.zeros((), bool),
      jnp.zeros((), jnp.float32),
    )  # fmt: skip

  def aux_step(state, params, masks, nll_fn, key):
    q = structure(params)
    k_u, k_y = jax.random.split(key)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(k_u, len(leaves))
    u = jax.tree.unflatten(
      treedef, [jax.random.normal(k, jnp.shape(p), jnp.float32) for k, p in zip(keys, leaves)]
    )
    fvp = functools.partial(fl.hessian_vector_product, lambda p: nll_fn(p, k_y), params)
    cache = q.prepare(state.lam)
    precondition = functools.partial(q.apply, cache) if precondition_aux else None
    loss, grad = fl.aux_loss_and_grad(
      q, state.lam, u, fvp, damping, precondition, cache=cache, mask=masks
    )
    step, aux_state = aux_opt.update(grad, state.aux_state, state.lam)
    return state._replace(
      lam=optax.apply_updates(state.lam, step), aux_state=aux_state, aux_loss=loss
    )

  def run_aux(state, params, masks, nll_fn, key, steps):
    return jax.lax.fori_loop(
      0, steps, lambda i, s: aux_step(s, params, masks, nll_fn, jax.random.fold_in(key, i)), state
    )

  def observe(state, params, masks, extras, key):
    state = state._replace(count=state.count + 1)
    if not aux_every:
      return state
    require(extras, ('nll_fn',), 'fishleg')
    return jax.lax.cond(
      state.pretrained & (state.count % aux_every == 0),
      lambda: aux_step(state, params, masks, extras['nll_fn'], key),
      lambda: state,
    )

  def warm_start(state, params, masks, nll_fn, key):
    """λ with diag Q = 1/(F̂_ii + γ) on kron, kdiag and diag blocks (F̂: Hutchinson)."""
    leaves, treedef = jax.tree.flatten(params)

    def probe(i, acc):
      k_v, k_y = jax.random.split(jax.random.fold_in(key, i))
      keys = jax.random.split(k_v, len(leaves))
      v = jax.tree.unflatten(
        treedef, [jax.random.rademacher(k, jnp.shape(p), jnp.float32) for k, p in zip(keys, leaves)]
      )
      fv = fl.hessian_vector_product(lambda p: nll_fn(p, k_y), params, v)
      return jax.tree.map(lambda a, x, y: a + x * y, acc, v, fv)

    acc = jax.lax.fori_loop(0, warm_start_probes, probe, jax.tree.map(jnp.zeros_like, params))
    inv = [1.0 / (jnp.maximum(a / warm_start_probes, 0.0) + damping) for a in jax.tree.leaves(acc)]
    q = structure(params)
    lam = list(state.lam)
    for j, g in enumerate(q.groups):
      shapes = [q.shapes[i] for i in g.leaves]
      diag = [inv[i] for i in g.leaves]
      if g.kind in ('kron', 'kdiag'):
        lam[j] = lam[j]._replace(A=jnp.sqrt(fishleg_blocks._to_matrix(diag, shapes)))
      elif g.kind == 'diag':
        lam[j] = [jnp.sqrt(d) for d in diag]
    lam = tuple(lam)
    return state._replace(lam=lam, aux_state=aux_opt.init(lam))

  def curvature(state, params, masks, extras, key):
    require(extras, ('nll_fn',), 'fishleg')
    if warm_start_probes:
      state = jax.lax.cond(
        state.pretrained,
        lambda: state,
        lambda: warm_start(state, params, masks, extras['nll_fn'], jax.random.fold_in(key, 1)),
      )
    steps = jnp.where(state.pretrained, refine_steps, pretrain_steps)
    state = run_aux(state, params, masks, extras['nll_fn'], key, steps)
    state = state._replace(pretrained=jnp.ones((), bool))
    q = structure(params)
    return state, (q.prepare(state.lam), q.diagonal(state.lam))

  def scores(curv, params):
    _, diag = curv
    return jax.tree.map(lambda p, d: p**2 / (2.0 * jnp.maximum(d, 1e-30)), params, diag)

  def compensate(curv, params, removed):
    cache, diag = curv
    v = jax.tree.map(
      lambda p, d, r: jnp.where(r, p / jnp.maximum(d, 1e-30), 0.0), params, diag, removed
    )
    return jax.tree.map(jnp.negative, structure(params).apply(cache, v))

  return Scorer(
    name='fishleg',
    init=init,
    observe=observe,
    curvature=curvature,
    scores=scores,
    compensate=compensate,
    needs=('nll_fn',),
  )
