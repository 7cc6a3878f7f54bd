"""BatchNorm folding on an ONNX inference graph.

An inference BatchNormalization after a Conv or Gemm is an affine map per output channel,
y = s * (conv(x) + b - mean) + beta with s = scale / sqrt(var + eps), so it merges into the
layer's weights and bias: W' = s * W (per output channel), b' = s * (b - mean) + beta. The
folded graph computes the same function with one layer fewer per BatchNorm; zero weights
(a pruned model's) stay zero.

We fold on the ONNX graph rather than in JAX because the converter already emits each
BatchNorm as one node right after its layer, whatever the model, so one pass covers every
registered model. onnxruntime fuses the same patterns when it loads a model (ConvBNFusion),
but only in memory; the artifact we ship should already be the lean graph.

References: Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference" (CVPR), Sec. 3.2 (batch normalization folding).
"""

import collections

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _attr(node, name, default):
  for a in node.attribute:
    if a.name == name:
      return helper.get_attribute_value(a)
  return default


def _set_attr(node, name, value) -> None:
  for a in list(node.attribute):
    if a.name == name:
      node.attribute.remove(a)
  node.attribute.append(helper.make_attribute(name, value))


def _affine(bn, consts) -> tuple[np.ndarray, np.ndarray] | None:
  """(s, shift) of an inference BatchNormalization with constant inputs, else None."""
  if _attr(bn, 'training_mode', 0) or len(bn.output) != 1:
    return None
  names = list(bn.input[1:5])
  if len(names) != 4 or any(n not in consts for n in names):
    return None
  scale, beta, mean, var = (consts[n].astype(np.float64) for n in names)
  s = scale / np.sqrt(var + float(_attr(bn, 'epsilon', 1e-5)))
  return s, beta - mean * s


def _fold_into_conv(layer, s, shift, consts, add_const) -> bool:
  w_name = layer.input[1]
  if w_name not in consts or (len(layer.input) > 2 and layer.input[2] not in consts):
    return False
  w = consts[w_name].astype(np.float64)
  if w.shape[0] != len(s):
    return False
  b = consts[layer.input[2]].astype(np.float64) if len(layer.input) > 2 else np.zeros(len(s))
  new_w = w * s.reshape(-1, *([1] * (w.ndim - 1)))
  new_b = b * s + shift
  layer.input[1] = add_const(new_w.astype(consts[w_name].dtype), w_name)
  bias = add_const(new_b.astype(np.float32), w_name + '_bias')
  if len(layer.input) > 2:
    layer.input[2] = bias
  else:
    layer.input.append(bias)
  return True


def _fold_into_gemm(layer, s, shift, consts, add_const) -> bool:
  """Gemm: Y = alpha * A' B' + beta * C with B' = B or B^T (transB); channels are B's
  output columns."""
  w_name = layer.input[1]
  if w_name not in consts or _attr(layer, 'transA', 0):
    return False
  w = consts[w_name].astype(np.float64)
  trans_b = bool(_attr(layer, 'transB', 0))
  out_axis = 0 if trans_b else 1
  if w.ndim != 2 or w.shape[out_axis] != len(s):
    return False
  beta = float(_attr(layer, 'beta', 1.0))
  if len(layer.input) > 2 and beta != 0.0:
    if layer.input[2] not in consts:
      return False
    c = consts[layer.input[2]].astype(np.float64)
    if c.size not in (1, len(s)) or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
      return False
    c = np.broadcast_to(c.reshape(-1), (len(s),)) * beta
  else:
    c = np.zeros(len(s))
  new_w = w * (s[:, None] if trans_b else s[None, :])
  layer.input[1] = add_const(new_w.astype(consts[w_name].dtype), w_name)
  bias = add_const((c * s + shift).astype(np.float32), w_name + '_bias')
  if len(layer.input) > 2:
    layer.input[2] = bias
  else:
    layer.input.append(bias)
  _set_attr(layer, 'beta', 1.0)
  return True


FOLDERS = {'Conv': _fold_into_conv, 'Gemm': _fold_into_gemm}


def fold_batch_norms(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
  """Folds every foldable BatchNormalization into the Conv or Gemm that feeds it.

  A BatchNorm folds when its input comes from a Conv or Gemm whose weights (and bias) are
  initializers, that output feeds nothing else and is not a graph output, and its own
  statistics are initializers. Other BatchNorms are left in place (count them with
  `count_ops`).

  Args:
    model: an ONNX model (not modified).

  Returns:
    (the folded model, the number of BatchNorms folded).
  """
  model = onnx.ModelProto.FromString(model.SerializeToString())
  graph = model.graph
  consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
  producer = {out: node for node in graph.node for out in node.output}
  consumers = collections.Counter(i for node in graph.node for i in node.input)
  graph_outputs = {o.name for o in graph.output}
  taken = set(consts)

  def add_const(array, stem):
    name, k = f'{stem}_folded', 0
    while name in taken:
      k += 1
      name = f'{stem}_folded{k}'
    taken.add(name)
    consts[name] = array
    graph.initializer.append(numpy_helper.from_array(array, name))
    return name

  folded, keep = 0, []
  for node in graph.node:
    layer = producer.get(node.input[0]) if node.op_type == 'BatchNormalization' else None
    if (
      layer is not None
      and layer.op_type in FOLDERS
      and consumers[node.input[0]] == 1
      and node.input[0] not in graph_outputs
    ):
      affine = _affine(node, consts)
      if affine is not None and FOLDERS[layer.op_type](layer, *affine, consts, add_const):
        layer.output[0] = node.output[0]
        folded += 1
        continue
    keep.append(node)
  del graph.node[:]
  graph.node.extend(keep)
  used = {i for node in graph.node for i in node.input} | graph_outputs
  unused = [t for t in graph.initializer if t.name not in used]
  for t in unused:
    graph.initializer.remove(t)
  return model, folded


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
  """Node counts by op type (top-level graph)."""
  return dict(collections.Counter(n.op_type for n in model.graph.node))
