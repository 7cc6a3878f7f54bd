"""Measured latency of candidate students: a per-layer lookup table built on the target
(onnxruntime, one thread, batch 1, through the export code) and cached on disk.

A candidate's latency is predicted as the sum of its layers' measured latencies plus the
runtime's per-call overhead (an identity graph's latency); each distinct layer (kind and
shape) is converted to ONNX with fedcomp.deploy and timed once, then read from the cache
(a JSON file keyed by the layer's signature and the thread count). A sum of isolated layers
misses what a whole graph costs between them (measured here: ~0.6x the whole model), so the
table is calibrated once on whole models timed the same way: measured ≈ scale · sum + offset
(least squares over a few random candidates and the teacher), stored with the entries; the
search then checks the calibrated prediction on models it did not fit (the uniform baselines).

References: He et al. 2018, "AMC" (ECCV) and Yang et al. 2018, "NetAdapt" (ECCV):
per-layer latency lookup tables measured on the device.
"""

import json
import os
import tempfile
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fedcomp.compression.autocompress.space import POOL

Signature = tuple  # ('conv', h, w, cin, cout) | ('pool' | 'gap', h, w, c) | ('head', c, classes)


def vgg_signatures(plan: Sequence, input_shape: Sequence[int], num_classes: int) -> list[Signature]:
  """The layers of a vgg plan with the shapes they see (SAME padding; pools halve, ceil)."""
  h, w, c = (int(d) for d in input_shape)
  out = []
  for item in plan:
    if item == POOL:
      out.append(('pool', h, w, c))
      h, w = -(-h // 2), -(-w // 2)
    else:
      out.append(('conv', h, w, c, int(item)))
      c = int(item)
  out.append(('gap', h, w, c))  # global average pool
  out.append(('head', c, int(num_classes)))
  return out


def _layer_fn(sig: Signature) -> tuple[Callable, tuple[int, ...]]:
  """A JAX function computing one layer with random weights, and its input shape."""
  rng = np.random.default_rng(0)
  kind = sig[0]
  if kind == 'conv':
    _, h, w, cin, cout = sig
    k = jnp.asarray(rng.normal(size=(3, 3, cin, cout)), jnp.float32)
    b = jnp.asarray(rng.normal(size=cout), jnp.float32)

    def conv(x):
      y = jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))  # fmt: skip
      return jax.nn.relu(y + b)

    return conv, (h, w, cin)
  if kind == 'pool':
    _, h, w, c = sig
    pool = lambda x: nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding='SAME')  # noqa: E731
    return pool, (h, w, c)
  if kind == 'gap':
    _, h, w, c = sig
    return (lambda x: x.mean(axis=(1, 2))), (h, w, c)
  if kind == 'head':
    _, c, classes = sig
    k = jnp.asarray(rng.normal(size=(c, classes)), jnp.float32)
    return (lambda x: x @ k), (c,)
  if kind == 'identity':
    return (lambda x: x + 0.0), tuple(sig[1:])
  raise ValueError(f'unknown layer kind {kind!r}')


def time_onnx(fn: Callable, input_shape: Sequence[int], threads: int, repeats: int) -> float:
  """p50 milliseconds of one batch-1 call of `fn` exported to ONNX, on `threads` threads."""
  import onnx

  from fedcomp.deploy import measure, onnx_export

  model, _ = onnx_export.convert(fn, input_shape, name='layer')
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'm.onnx')
    onnx.save(model, path)
    session = measure.ort_session(path, threads)
    feed = {session.get_inputs()[0].name: np.zeros((1, *input_shape), np.float32)}
    return measure.time_calls(lambda: session.run(None, feed), repeats)['p50_ms']


class LatencyTable:
  """Per-layer latencies measured once and cached in a JSON file.

  Args:
    path: the cache file (created or extended).
    threads: onnxruntime intra-op threads (1: the edge-like setting).
    repeats: timed calls per layer.
  """

  def __init__(self, path: str, threads: int = 1, repeats: int = 200):
    self.path, self.threads, self.repeats = path, threads, repeats
    self.entries: dict[str, float] = {}
    if os.path.exists(path):
      with open(path) as f:
        self.entries = json.load(f)

  def _key(self, sig: Signature) -> str:
    return f'{self.threads}:' + ','.join(map(str, sig))

  def layer_ms(self, sig: Signature) -> float:
    """The layer's latency, measured on first use."""
    key = self._key(sig)
    if key not in self.entries:
      fn, shape = _layer_fn(sig)
      self.entries[key] = time_onnx(fn, shape, self.threads, self.repeats)
      self._save()
    return self.entries[key]

  def overhead_ms(self, input_shape: Sequence[int]) -> float:
    """The runtime's per-call cost: an identity graph over the input."""
    return self.layer_ms(('identity', *[int(d) for d in input_shape]))

  def layer_sum(self, signatures: Sequence[Signature], input_shape: Sequence[int]) -> float:
    """The per-layer latencies, each without the runtime's per-call overhead, plus one
    overhead (ms): the uncalibrated prediction."""
    base = self.overhead_ms(input_shape)
    return base + sum(max(0.0, self.layer_ms(s) - base) for s in signatures)

  @property
  def calibration(self) -> tuple[float, float] | None:
    """(scale, offset) of the fitted calibration, or None."""
    keys = [f'{self.threads}:calibration:{k}' for k in ('scale', 'offset')]
    if not all(k in self.entries for k in keys):
      return None
    return self.entries[keys[0]], self.entries[keys[1]]

  def calibrate(
    self, layer_sums: Sequence[float], measured: Sequence[float]
  ) -> tuple[float, float]:
    """Fits measured ≈ scale · layer_sum + offset by least squares and stores it.

    Args:
      layer_sums: `layer_sum` of each calibration model.
      measured: each one's whole-model latency (ms), timed like the layers.

    Returns:
      (scale, offset).
    """
    x, y = np.asarray(layer_sums, np.float64), np.asarray(measured, np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
      raise ValueError('calibration needs at least two models of different latency')
    scale, offset = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)[0]
    self.entries[f'{self.threads}:calibration:scale'] = float(scale)
    self.entries[f'{self.threads}:calibration:offset'] = float(offset)
    self._save()
    return float(scale), float(offset)

  def predict(self, signatures: Sequence[Signature], input_shape: Sequence[int]) -> float:
    """Predicted batch-1 latency (ms): the calibrated layer sum (the plain sum until
    `calibrate` has run)."""
    raw = self.layer_sum(signatures, input_shape)
    cal = self.calibration
    return raw if cal is None else cal[0] * raw + cal[1]

  def _save(self) -> None:
    tmp = self.path + '.tmp'
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    with open(tmp, 'w') as f:
      json.dump(self.entries, f, indent=1, sort_keys=True)
    os.replace(tmp, self.path)
