"""Short tensor names and no doc strings in an ONNX graph: smaller artifacts, same function.

Converters and quantizers name every tensor after its origin ('kernel_oih_6_folded_quantized_
scale'); in a small edge model those strings are a sizeable part of the file (measured:
about a fifth of an int8 ResNet-8). Inference needs only that names be unique, so every
tensor except the graph's inputs and outputs is renamed to a short base-36 id; node names,
doc strings and intermediate shape annotations (value_info) are dropped. Graphs with
subgraphs (If/Loop) are left unchanged.
"""

import onnx

_DIGITS = '0123456789abcdefghijklmnopqrstuvwxyz'


def _short(i: int) -> str:
  s = ''
  while True:
    i, r = divmod(i, 36)
    s = _DIGITS[r] + s
    if not i:
      return '_' + s


def compact_names(model: onnx.ModelProto) -> onnx.ModelProto:
  """A copy of `model` with short tensor names, without node names, doc strings or
  value_info."""
  model = onnx.ModelProto.FromString(model.SerializeToString())
  g = model.graph
  if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
         for n in g.node for a in n.attribute):  # fmt: skip
    return model
  keep = {v.name for v in (*g.input, *g.output)}
  names = {}

  def rename(name: str) -> str:
    if not name or name in keep:
      return name
    if name not in names:
      names[name] = _short(len(names))
    return names[name]

  for t in g.initializer:
    t.name = rename(t.name)
    t.doc_string = ''
  for node in g.node:
    node.input[:] = [rename(i) for i in node.input]
    node.output[:] = [rename(o) for o in node.output]
    node.name, node.doc_string = '', ''
  del g.value_info[:]  # intermediate shapes: the runtime infers them again
  g.doc_string = ''
  model.doc_string = ''
  return model
