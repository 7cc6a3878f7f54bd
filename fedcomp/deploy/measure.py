"""What a deployment measures: bytes on disk, parameters and non-zeros, latency, outputs.

Latency is batch-1 wall time per call after warm-up, as p50/p90 over `repeats` calls; the
JAX figure times the jitted function on the same inputs (block_until_ready), so both
include their runtime's dispatch, which is what an application pays.
"""

import gzip
import time
from collections.abc import Callable

import numpy as np

WEIGHT_OPS = ('Conv', 'Gemm', 'MatMul', 'ConvTranspose')


def file_bytes(path: str) -> dict[str, int]:
  """{'raw', 'gzip'}: the file's size and its gzip (level 9) size: what compression (and
  so sparsity, whose zeros compress) saves in storage and download."""
  with open(path, 'rb') as f:
    data = f.read()
  return {'raw': len(data), 'gzip': len(gzip.compress(data, compresslevel=9, mtime=0))}


def weight_counts(model) -> dict[str, int]:
  """{'params', 'nonzeros'}: the elements of the weights and biases of the Conv/Gemm/MatMul
  layers (initializers, directly or through a DequantizeLinear), as JAX counts a model's
  parameters; an int8 weight is zero when its code is 0 (symmetric quantization)."""
  from onnx import numpy_helper

  inits = {t.name: t for t in model.graph.initializer}
  producer = {o: n for n in model.graph.node for o in n.output}
  names = set()
  for node in model.graph.node:
    if node.op_type not in WEIGHT_OPS:
      continue
    for name in node.input[1:]:
      dq = producer.get(name)
      if dq is not None and dq.op_type == 'DequantizeLinear':
        name = dq.input[0]
      if name in inits:
        names.add(name)
  arrays = [numpy_helper.to_array(inits[n]) for n in names]
  return {
    'params': int(sum(a.size for a in arrays)),
    'nonzeros': int(sum(np.count_nonzero(a) for a in arrays)),
  }


def _percentiles(seconds: list[float]) -> dict[str, float]:
  ms = np.asarray(seconds) * 1e3
  return {'p50_ms': float(np.percentile(ms, 50)), 'p90_ms': float(np.percentile(ms, 90))}


def time_calls(call: Callable[[], object], repeats: int, warmup: int = 10) -> dict[str, float]:
  """p50/p90 milliseconds of `call()` over `repeats` calls after `warmup` calls."""
  for _ in range(warmup):
    call()
  seconds = []
  for _ in range(repeats):
    t = time.perf_counter()
    call()
    seconds.append(time.perf_counter() - t)
  return _percentiles(seconds)


def ort_session(path: str, threads: int | None = None):
  """An onnxruntime CPU session; threads=1 is the edge-like setting, None all cores."""
  import onnxruntime as ort

  options = ort.SessionOptions()
  options.log_severity_level = 3
  if threads is not None:
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
  return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def ort_outputs(session, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
  """The model's first output over `x`, in batches."""
  name = session.get_inputs()[0].name
  out = [session.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
  return np.concatenate(out)


def ort_latency(path: str, example: np.ndarray, repeats: int) -> dict[str, dict[str, float]]:
  """Batch-1 latency on one thread and on all cores."""
  out = {}
  for label, threads in (('one_thread', 1), ('all_cores', None)):
    session = ort_session(path, threads)
    name = session.get_inputs()[0].name
    feed = {name: example[None]}
    out[label] = time_calls(lambda: session.run(None, feed), repeats)  # noqa: B023
  return out


def jax_latency(fn: Callable, example: np.ndarray, repeats: int) -> dict[str, float]:
  """Batch-1 latency of jit(fn) (compiled before timing)."""
  import jax

  jitted = jax.jit(fn)
  x = jax.device_put(example[None])
  return time_calls(lambda: jitted(x).block_until_ready(), repeats)


def parity(reference: np.ndarray, other: np.ndarray, logits: bool = True) -> dict[str, float]:
  """max |Δ| between two output arrays and, for logits (N, C), top-1 agreement."""
  out = {'max_abs_diff': float(np.max(np.abs(reference - other)))}
  if logits and reference.ndim == 2:
    out['top1_agreement'] = float(np.mean(reference.argmax(1) == other.argmax(1)))
  return out
