"""The client-map primitive: a pure per-client function over a cohort, reduced canonically.

`ClientMap(mesh, ...)(fn, shared, clients, valid, reducer)` runs `fn(shared, client)` for
every client of a cohort (the leading axis of `clients`) and combines the results with a
`Reducer` (fedcomp.core.reducers): a weighted mean, a plain sum, grouped means, or the
per-client values stacked for a robust rule. It works inside any jitted function: one
federated round (fedcomp.core.federated_round), or one step that sums every client's
gradient of a server-held model.

How clients run on a device is the strategy: 'vmap' (the clients of a leaf at once, see
below), 'map' (chunks of `chunk_size` clients vmapped one after another, default one
client at a time) or 'loop' (clients unrolled at trace time). The cohort axis is sharded
over the mesh axis 'clients'.

Canonical reduction. Float addition is not associative, so a sum whose order follows the
device count gives results that differ in the last bits between 1 and 8 devices, and
training amplifies them. Here the order is fixed by the cohort alone: its K clients are
laid out on `width` leaves (a power of two, default 8) of c = ceil(K / width) slots each;
a leaf's sum is a left fold over its slots from +0.0, and the leaves are combined by a
perfect binary tree. A device holds width/D consecutive leaves, a subtree, so it folds
and combines its own leaves locally, and the devices' subtree sums are combined by a
butterfly (each step adds the partner's value: x + y == y + x exactly). Every strategy and
every device count D dividing `width` computes the same additions in the same order.
The spare slots of the layout (K < width·c) are spread over the leaves in bit-reversed
order, so every aligned block of leaves, hence every device, gets an equal share of real
clients (±1). Spare slots contribute exact zeros; with 'map', a chunk without real
clients is not run (one client at a time: no spare slot is run); 'vmap' runs a leaf's
spare slots with its real clients, 'loop' all of them.

The clients' own computation must also not depend on the device count. A device runs its
leaves one after another, and in a leaf a while loop over the chunks that hold real
clients (trip count known only at run time), so the clients always compile as the same
loop body; a client is never vmapped alone (a width-1 vmap compiles to other kernels);
and fedcomp caps XLA:CPU's code generation at AVX (fedcomp.utils.xla_flags), because
XLA:CPU contracts multiply-adds into FMAs wherever fusion puts them together, and fusion
follows the whole program. With these, 1, 2, 4 and 8 devices give bit-identical results
(tested for every algorithm, task, strategy and a BatchNorm model).

References: Ro et al. 2021, FedJAX's `for_each_client` (arXiv 2108.02117); pairwise
summation (Higham 1993, "The accuracy of floating point summation").
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fedcomp.core import multihost
from fedcomp.core.reducers import Reducer
from fedcomp.errors import ConfigError

PyTree = Any
AXIS = 'clients'
STRATEGIES = ('vmap', 'map', 'loop')


class CohortLayout(NamedTuple):
  """Where a cohort's clients sit in the canonical layout.

  Attributes:
    slots: (K,) int64 slot of each cohort member (in cohort order).
    size: number of slots (width · per_leaf), the padded cohort length.
    per_leaf: slots per leaf, c.
  """

  slots: np.ndarray
  size: int
  per_leaf: int


def bit_reversed(n: int) -> np.ndarray:
  """0..n-1 in bit-reversed order (n a power of two)."""
  bits = max(n.bit_length() - 1, 0)
  return np.array([int(format(i, f'0{bits}b')[::-1], 2) if bits else 0 for i in range(n)])


def cohort_layout(cohort_size: int, width: int) -> CohortLayout:
  """The canonical layout of `cohort_size` clients on `width` leaves.

  Leaf j receives floor(K / width) clients, plus one for the first K mod width leaves in
  bit-reversed order; clients fill the leaves in cohort order, each leaf from its first
  slot, so its spare slots are at its end.

  Args:
    cohort_size: K >= 1.
    width: the number of leaves, a power of two.

  Returns:
    The CohortLayout.
  """
  per_leaf = -(-cohort_size // width)
  counts = np.full(width, cohort_size // width)
  counts[bit_reversed(width)[: cohort_size % width]] += 1
  starts = np.arange(width) * per_leaf
  slots = np.concatenate([starts[j] + np.arange(counts[j]) for j in range(width)])
  return CohortLayout(slots.astype(np.int64), width * per_leaf, per_leaf)


def varying(tree):
  """Marks leaves that do not yet vary over the 'clients' axis as varying (shard_map)."""

  def cast(a):
    if AXIS in jax.typeof(a).manual_axis_type.varying:
      return a
    return jax.lax.pcast(a, AXIS, to='varying')

  return jax.tree.map(cast, tree)


def _zeros_like(shapes):
  return varying(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))


def _where(pred, tree):
  """tree where pred, exact zeros elsewhere (pred broadcast over each leaf's trailing axes)."""

  def pick(a):
    a = jnp.asarray(a)
    p = jnp.reshape(pred, jnp.shape(pred) + (1,) * (a.ndim - jnp.ndim(pred)))
    return jnp.where(p, a, jnp.zeros((), a.dtype))

  return jax.tree.map(pick, tree)


def _add(a, b):
  return jax.tree.map(jnp.add, a, b)


def _fold(acc, stacked, count: int):
  """acc + stacked[0] + stacked[1] + ... (a left fold over the leading axis)."""
  if not jax.tree.leaves(acc):
    return acc
  if count > 16:  # long folds as a loop, short ones unrolled; the same additions either way
    return jax.lax.scan(lambda a, s: (_add(a, s), None), acc, stacked)[0]
  for i in range(count):
    acc = _add(acc, jax.tree.map(lambda a, i=i: a[i], stacked))
  return acc


def _tree_sum(stacked, count: int):
  """Perfect binary tree over the leading axis (count a power of two): ((0+1)+(2+3))+..."""
  while count > 1:
    stacked = jax.tree.map(lambda a: a[0::2] + a[1::2], stacked)
    count //= 2
  return jax.tree.map(lambda a: a[0], stacked)


@dataclasses.dataclass(frozen=True)
class ClientMap:
  """Maps per-client functions over cohorts on a mesh, with canonical reduction.

  Args:
    mesh: a 1-D mesh with axis 'clients'.
    strategy: 'vmap', 'map' or 'loop' (see the module docstring).
    chunk_size: with 'map', clients vmapped per chunk (at most a leaf's ⌈K/width⌉ slots);
      None or 1: one client at a time.
    reduction_width: leaves of the canonical layout, a power of two; results are
      bit-identical across device counts that divide it. A larger device count raises it
      to the device count.
  """

  mesh: jax.sharding.Mesh
  strategy: str = 'vmap'
  chunk_size: int | None = None
  reduction_width: int = 8

  def __post_init__(self):
    if self.strategy not in STRATEGIES:
      raise ConfigError(
        f'config.client_map.strategy={self.strategy!r} is unknown; known: {", ".join(STRATEGIES)}'
      )
    if self.chunk_size is not None and (
      not isinstance(self.chunk_size, int) or self.chunk_size < 1
    ):
      raise ConfigError(f'config.client_map.chunk_size={self.chunk_size!r} must be None or >= 1')
    w = self.reduction_width
    if not isinstance(w, int) or w < 1 or w & (w - 1):
      raise ConfigError(f'config.client_map.reduction_width={w!r} must be a power of two')
    d = self.num_devices
    if d & (d - 1):
      raise ConfigError(
        f'{d} devices: the canonical reduction needs a power-of-two device count '
        '(set config.num_devices)'
      )

  @property
  def num_devices(self) -> int:
    return int(self.mesh.devices.size)

  @property
  def width(self) -> int:
    """The effective number of leaves: reduction_width, or the device count if larger."""
    return max(self.reduction_width, self.num_devices)

  @property
  def sharded(self) -> NamedSharding:
    """The sharding of cohort-axis arrays."""
    return NamedSharding(self.mesh, P(AXIS))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def layout(self, cohort_size: int) -> CohortLayout:
    """The canonical layout of a cohort of this size (see cohort_layout)."""
    if cohort_size < 1:
      raise ValueError(f'cohort_size={cohort_size} must be >= 1')
    return cohort_layout(cohort_size, self.width)

  def place(self, cohort: PyTree, cohort_size: int | None = None, fill=0) -> PyTree:
    """Puts per-client arrays (K, ...) in their canonical slots (size, ...), sharded.

    Args:
      cohort: arrays with the cohort (in cohort order) as leading axis (numpy or jax).
      cohort_size: K (default: the leading size of the first leaf).
      fill: value of the padded slots.

    Returns:
      The arrays on the mesh, leading axis = layout(K).size, sharded over 'clients'
      (with several processes: every process passes the whole cohort and places its own
      devices' slots).
    """
    leaves = jax.tree.leaves(cohort)
    k = cohort_size if cohort_size is not None else len(leaves[0])
    layout = self.layout(k)

    def one(a):
      a = np.asarray(a)
      out = np.full((layout.size, *a.shape[1:]), fill, a.dtype)
      out[layout.slots] = a
      return out

    return multihost.put(jax.tree.map(one, cohort), self.sharded)

  def valid(self, cohort_size: int) -> jax.Array:
    """(size,) bool on the mesh: True on the slots of real clients."""
    return self.place(np.ones(cohort_size, bool), cohort_size, False)

  # --------------------------------------------------------------------- mapping
  def __call__(
    self,
    fn: Callable[[PyTree, PyTree], tuple[Any, PyTree]],
    shared: PyTree,
    clients: PyTree,
    valid: jax.Array,
    reducer: Reducer,
  ) -> tuple[Any, PyTree]:
    """Runs fn over the cohort and reduces its first output canonically.

    Args:
      fn: fn(shared, client) -> (value, out): `value` goes to the reducer, `out` is
        returned per client. Pure; traced once per distinct chunk shape.
      shared: a pytree every client sees (replicated), e.g. the server state.
      clients: per-client pytree with leading axis = the layout size (see `place`).
      valid: (size,) bool, True for real clients (see `valid`); in every leaf the real
        clients come first (as `place` and `cohort_layout` put them).
      reducer: how the values become one result.

    Returns:
      (reducer.finish(...): replicated, outs: per-client pytree (size, ...) sharded).
    """
    size = valid.shape[0]
    if size % self.width:
      raise ValueError(f'cohort length {size} is not a multiple of the layout width {self.width}')
    per_leaf = size // self.width
    leaves_per_device = self.width // self.num_devices

    def per_client(shared_v, client, ok):
      value, out = fn(shared_v, client)
      summand = _where(ok, reducer.summand(value))
      stacked = _where(ok, reducer.stack(value)) if reducer.stack is not None else ()
      return varying((summand, stacked, out))

    def body(shared_v, clients_d, valid_d):
      # Shared inputs enter replicated; mark them device-varying so that gradients of
      # per-client losses are not summed across devices by the vma transpose.
      shared_v = varying(shared_v)
      run = functools.partial(per_client, shared_v)
      sums, stacked, outs = self._run_device(run, clients_d, valid_d, per_leaf, leaves_per_device)
      total = self._across_devices(_tree_sum(sums, leaves_per_device))
      gathered = jax.lax.all_gather(stacked, AXIS, tiled=True, to='invarying')
      all_valid = jax.lax.all_gather(valid_d, AXIS, tiled=True, to='invarying')
      return reducer.finish(total, gathered, all_valid), outs

    mapped = jax.shard_map(
      body,
      mesh=self.mesh,
      in_specs=(P(), P(AXIS), P(AXIS)),
      out_specs=(P(), P(AXIS)),
    )
    return mapped(shared, clients, valid)

  def _across_devices(self, value):
    """The devices' subtree sums combined by a butterfly; the same bits on every device."""
    d = self.num_devices
    step = 1
    while step < d:
      pairs = [(i, i ^ step) for i in range(d)]
      value = _add(value, jax.lax.ppermute(value, AXIS, pairs))
      step *= 2
    # Every device now holds the same total; psum it from device 0 alone (x + 0 == x) to
    # turn it into a replicated value. (+0.0 first: -0.0 + 0.0 is +0.0 on any path.)
    value = jax.tree.map(lambda a: a + jnp.zeros((), a.dtype), value)
    first = jax.lax.axis_index(AXIS) == 0
    return jax.lax.psum(_where(first, value), AXIS)

  def _run_device(self, run, clients, valid, per_leaf, leaves):
    """This device's clients: (leaf sums (leaves, ...), stacked values, outs) in slot order.

    Every strategy runs a device's leaves one after another and the same program for each
    leaf, whatever the device count: a vmap over a whole leaf ('vmap'), over chunks of it
    ('map'), or its clients unrolled ('loop'). (A vmap over all of a device's clients would
    change width with the device count, and XLA:CPU's reductions round differently at
    different widths.)
    """
    if self.strategy == 'loop':
      return self._loop(run, clients, valid, per_leaf, leaves)
    size = per_leaf if self.strategy == 'vmap' else min(self.chunk_size or 1, per_leaf)
    return self._map(run, clients, valid, per_leaf, leaves, size)

  def _batch(self, run, clients, valid, count: int):
    """`count` clients at once: vmapped, or called directly when count == 1 (XLA:CPU
    compiles a width-1 vmap to other kernels than a batched one: other rounding)."""
    if count == 1:
      one = jax.tree.map(lambda a: a[0], (clients, valid))
      return jax.tree.map(lambda a: a[None], run(*one))
    return jax.vmap(run)(clients, valid)

  def _loop(self, run, clients, valid, per_leaf, leaves):
    """Clients unrolled one after another; their summands folded afterwards in a loop.

    The folds run in a while loop over each leaf's real slots (a trip count only known at
    run time), apart from the unrolled clients, whose code around them then does not
    depend on the device count.
    """
    cat = lambda *a: jnp.concatenate(a)  # noqa: E731
    each = [self._batch(run, *jax.tree.map(lambda a, i=i: a[i : i + 1], (clients, valid)), 1)
            for i in range(leaves * per_leaf)]  # fmt: skip
    summands, stacked, outs = (jax.tree.map(cat, *part) for part in zip(*each))
    by_leaf = jax.tree.map(lambda a: a.reshape(leaves, per_leaf, *a.shape[1:]), summands)
    real = valid.reshape(leaves, per_leaf).sum(1)

    def leaf_sum(args):
      leaf, count = args
      acc = varying(jax.tree.map(lambda a: jnp.zeros_like(a[0]), leaf))
      body = lambda i, acc: _add(acc, jax.tree.map(lambda a: a[i], leaf))  # noqa: E731
      return jax.lax.fori_loop(0, count, body, acc)

    if not jax.tree.leaves(by_leaf):
      return by_leaf, stacked, outs
    return jax.lax.map(leaf_sum, (by_leaf, real)), stacked, outs

  def _map(self, run, clients, valid, per_leaf, leaves, size):
    """Leaves one after another (lax.map); in a leaf, chunks of `size` clients vmapped.

    A leaf runs only its chunks that hold real clients (a while loop up to its last real
    slot; spare slots come last in a leaf: a precondition of `valid`), and the clients and
    folds sit in a loop body whatever the device count, so XLA compiles them the same way
    (a loop of known trip count 1 would be inlined into the code around it, where XLA:CPU
    may contract multiply-adds into FMAs differently). A while loop is not reverse-mode
    differentiable: take gradients inside the per-client function.
    """
    full, rest = divmod(per_leaf, size)
    data = (clients, valid)

    def chunk_at(first, width):
      """`width` clients from slot `first` (traced) of this device's data: one dynamic
      slice, where slicing a leaf and then a chunk of it copied each leaf's data once more
      (small_mlp: a fifth of a round's time)."""
      return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, first, width), data)

    def chunk_shapes(width):
      first = lambda d: jax.tree.map(lambda a: a[:width], d)  # noqa: E731
      return jax.eval_shape(lambda d: self._batch(run, *first(d), width), data)

    def run_chunks(acc, first, width, n, count):
      """The first `count` (traced) of the n chunks of `width` slots from slot `first`,
      folded into acc in order."""
      _, st_shape, o_shape = chunk_shapes(width)
      bufs = _zeros_like(jax.tree.map(
        lambda s: jax.ShapeDtypeStruct((n, *s.shape), s.dtype), (st_shape, o_shape)
      ))  # fmt: skip

      def body(i, carry):
        acc, bufs = carry
        s, st, o = self._batch(run, *chunk_at(first + i * width, width), width)
        bufs = jax.tree.map(
          lambda b, x: jax.lax.dynamic_update_index_in_dim(b, x, i, 0), bufs, (st, o)
        )
        return _fold(acc, s, width), bufs

      return jax.lax.fori_loop(0, count, body, (acc, bufs))

    def leaf_fn(leaf):
      index, leaf_valid = leaf
      real = leaf_valid.sum()
      start = index * per_leaf
      shapes = chunk_shapes(size)
      acc = _zeros_like(
        jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), shapes[0])
      )
      count = jnp.minimum(-(-real // size), full)
      acc, (stacked, outs) = run_chunks(acc, start, size, full, count)
      stacked, outs = jax.tree.map(lambda a: a.reshape(full * size, *a.shape[2:]), (stacked, outs))
      if rest:
        more = (real > full * size).astype(jnp.int32)
        acc, (st, o) = run_chunks(acc, start + full * size, rest, 1, more)
        stacked, outs = jax.tree.map(
          lambda a, b: jnp.concatenate([a, b[0]]), (stacked, outs), (st, o)
        )
      return acc, stacked, outs

    indices = jnp.arange(leaves, dtype=jnp.int32)
    sums, stacked, outs = jax.lax.map(leaf_fn, (indices, valid.reshape(leaves, per_leaf)))
    flat = lambda a: a.reshape(leaves * per_leaf, *a.shape[2:])
    return sums, jax.tree.map(flat, stacked), jax.tree.map(flat, outs)
