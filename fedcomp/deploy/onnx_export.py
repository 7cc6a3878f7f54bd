"""JAX function -> ONNX inference graph (jax2onnx), BatchNorm folded, metadata attached.

Converter choice: jax2onnx (Apache-2.0, on PyPI) traces the function to a jaxpr and maps
every primitive to ONNX ops through one plugin per primitive, so any of our models (and
any future one built from covered primitives) converts without per-model code; parameters
closed over by the function become initializers. The alternatives need TensorFlow
(jax2tf -> tf2onnx) or a hand-written emitter per layer. Its newest releases pin
orbax-checkpoint below the version fedcomp needs, so we use 0.13.0, the newest release pip
can install beside it (setup.cfg); fedcomp's models call `nnx.max_pool` with keyword
arguments and skip dropout at inference, which that release's Flax patches expect.

References: jax2onnx (github.com/enpasos/jax2onnx); ONNX operator specification.
"""

import logging
import re
from collections.abc import Callable, Mapping, Sequence

import onnx

from fedcomp.deploy.fold import count_ops, fold_batch_norms
from fedcomp.errors import ConfigError

BATCH = 'B'
OPSET = 21  # onnxruntime 1.2x runs it and its quantizer supports it


class UnsupportedOpError(ConfigError):
  """The converter has no ONNX rule for a primitive the model uses."""


def convert(
  fn: Callable,
  input_shape: Sequence[int],
  *,
  name: str = 'fedcomp',
  metadata: Mapping[str, str] | None = None,
  fold: bool = True,
) -> tuple[onnx.ModelProto, dict]:
  """Converts `fn` (x (B, *input_shape) float32 -> outputs) to ONNX with a symbolic batch.

  Args:
    fn: a pure JAX function of one float32 batch (closes over its parameters).
    input_shape: the shape of one example.
    name: the graph's name.
    metadata: string key/values stored in the model (read back by launch.predict).
    fold: fold BatchNorms into the preceding Conv/Gemm (fedcomp.deploy.fold).

  Returns:
    (model, info) with info = {'ops': op counts, 'batch_norms_folded': n,
    'batch_norms_left': n}.

  Raises:
    UnsupportedOpError: one line naming the JAX primitive the converter cannot handle.
  """
  from jax2onnx import to_onnx

  quiet = logging.getLogger().level
  logging.disable(logging.WARNING)  # jax2onnx logs plugin import notes at WARNING
  try:
    model = to_onnx(
      fn, [(BATCH, *[int(d) for d in input_shape])], model_name=name, opset=OPSET,
      input_names=['x'], output_names=['logits'],
    )  # fmt: skip
  except NotImplementedError as e:
    match = re.search(r"primitive '([^']+)'", str(e))
    op = match.group(1) if match else str(e).splitlines()[0]
    raise UnsupportedOpError(
      f'cannot export to ONNX: the converter (jax2onnx) has no rule for the JAX op {op!r} '
      f'used by {name}'
    ) from None
  finally:
    logging.disable(logging.NOTSET)
    logging.getLogger().setLevel(quiet)
  folded = 0
  if fold:
    model, folded = fold_batch_norms(model)
  for key, value in (metadata or {}).items():
    entry = model.metadata_props.add()
    entry.key, entry.value = str(key), str(value)
  onnx.checker.check_model(model)
  ops = count_ops(model)
  return model, {
    'ops': ops,
    'batch_norms_folded': folded,
    'batch_norms_left': ops.get('BatchNormalization', 0),
  }
