"""Forward FLOPs of a function, counted from the dot and conv shapes in its jaxpr."""

import math
from collections.abc import Callable

import jax


def _sub_jaxprs(params):
  for v in params.values():
    for item in v if isinstance(v, tuple | list) else (v,):
      if hasattr(item, 'eqns'):
        yield item
      elif hasattr(item, 'jaxpr') and hasattr(item.jaxpr, 'eqns'):
        yield item.jaxpr


def _count(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      (lhs_contract, _), _ = eqn.params['dimension_numbers']
      lhs_shape = eqn.invars[0].aval.shape
      out_size = math.prod(eqn.outvars[0].aval.shape)
      total += 2 * out_size * math.prod(lhs_shape[d] for d in lhs_contract)
    elif name == 'conv_general_dilated':
      rhs_shape = eqn.invars[1].aval.shape
      out_feature_dim = eqn.params['dimension_numbers'].rhs_spec[0]
      macs_per_output = math.prod(rhs_shape) // rhs_shape[out_feature_dim]
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * macs_per_output
    else:
      repeat = eqn.params.get('length', 1) if name == 'scan' else 1
      total += repeat * sum(_count(sub) for sub in _sub_jaxprs(eqn.params))
  return total


def count_matmul_flops(fn: Callable, *args) -> int:
  """Returns 2 x multiply-adds of every dot_general and convolution `fn(*args)` runs.

  Bias adds, activations and pooling are not counted. Loops other than scan count once.

  Args:
    fn: a jax-traceable function.
    *args: example arguments (arrays or ShapeDtypeStructs).

  Returns:
    The FLOP count.
  """
  return _count(jax.make_jaxpr(fn)(*args).jaxpr)
