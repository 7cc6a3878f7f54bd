"""Export: any run's model as inference-only artifacts, with a size/latency/parity report.

`run(config, workdir)` loads the model of `config.source_workdir` (fedcomp.deploy.source)
and writes to `workdir`:
  model.stablehlo   jax.export of the inference function, batch symbolic, for
                    config.platforms (bit-equal to the JAX model where it runs)
  model.onnx        the float32 ONNX inference graph (jax2onnx; BatchNorm folded into the
                    preceding conv/dense; no dropout; a pruned model's zeros kept)
  model.int8.onnx   post-training static int8 (onnxruntime's quantizer: per-channel int8
                    weights, uint8 activations calibrated on config.calibration_examples
                    training examples)
  report.json, report.md   per artifact: bytes (raw, gzip), parameters and non-zeros,
                    FLOPs per example, batch-1 latency p50/p90 (onnxruntime on one thread
                    and on all cores; JAX jit), test accuracy on the run's whole test set,
                    parity against the JAX model (max |Δ output|, top-1 agreement)
  config.json       this export's config
The ONNX models carry their classes and input scale as metadata, which `launch.predict`
reads with onnxruntime and numpy only. Artifacts are written atomically; a rerun replaces
them.

References: Lai & Suda 2018, "Rethinking Machine Learning Development and Deployment for
Edge Devices" (arXiv 1806.07846): deployment is inference-only.
"""

import json
import os

import jax
import ml_collections
import numpy as np
import onnx
from absl import logging

from fedcomp.core.run_dir import write_json_atomic
from fedcomp.deploy import int8, measure, onnx_export, source, stablehlo
from fedcomp.deploy.names import compact_names
from fedcomp.registry import ConfigError, check_known_keys

KEYS = ('experiment', 'source_workdir', 'platforms', 'calibration_examples', 'latency_repeats',
        'eval_batch_size', 'seed')  # fmt: skip
ARTIFACTS = ('jax', 'stablehlo', 'onnx', 'onnx_int8')
FILES = {'stablehlo': 'model.stablehlo', 'onnx': 'model.onnx', 'onnx_int8': 'model.int8.onnx'}


def validate(config) -> None:
  """Keys and numbers, and that the source holds a model, before anything is loaded."""
  check_known_keys(config, KEYS, 'config')
  stablehlo.check_platforms(config.platforms)
  for key in ('calibration_examples', 'latency_repeats', 'eval_batch_size'):
    value = config[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ConfigError(f'config.{key}={value!r} must be a positive integer')
  source.check_workdir(config.source_workdir)


def _atomic_write(path: str, data: bytes) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)


def _jax_outputs(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
  jitted = jax.jit(fn)
  parts = []
  for i in range(0, len(x), batch_size):
    chunk = x[i : i + batch_size]
    pad = np.zeros((batch_size - len(chunk), *chunk.shape[1:]), chunk.dtype)  # one shape
    out = np.asarray(jitted(np.concatenate([chunk, pad])))
    parts.append(out[: len(chunk)])
  return np.concatenate(parts)


def _accuracy(outputs: np.ndarray, test: dict | None) -> float | None:
  if test is None or 'y' not in test or outputs.ndim != 2:
    return None
  return float(np.mean(outputs.argmax(1) == test['y']))


def _checkpoint_bytes(workdir: str) -> int | None:
  path = os.path.join(workdir, 'model')
  if not os.path.isdir(path):
    return None
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Exports the source run's model (see the module docstring); returns the report."""
  validate(config)
  src = source.load_source(config.source_workdir, config.calibration_examples, config.seed)
  os.makedirs(workdir, exist_ok=True)
  write_json_atomic(os.path.join(workdir, 'config.json'), config.to_dict(), indent=2)
  meta = src.saved.meta
  name = meta['model_name']
  paths = {k: os.path.join(workdir, f) for k, f in FILES.items()}

  logging.info('export: StableHLO for %s', list(config.platforms))
  blob = stablehlo.export_stablehlo(src.forward, src.input_shape, config.platforms)
  _atomic_write(paths['stablehlo'], blob)

  logging.info('export: ONNX (jax2onnx)')
  metadata = {
    'fedcomp.model_name': name,
    'fedcomp.input_shape': json.dumps(list(src.input_shape)),
    'fedcomp.classes': json.dumps(src.classes),
    'fedcomp.pixel_max': repr(src.pixel_max),
    'fedcomp.source': os.path.abspath(config.source_workdir),
  }
  model, info = onnx_export.convert(src.forward, src.input_shape, name=name, metadata=metadata)
  _atomic_write(paths['onnx'], compact_names(model).SerializeToString())

  logging.info('export: int8 (onnxruntime quantizer, %d calibration examples)',
               len(src.calibration))  # fmt: skip
  tmp = paths['onnx_int8'] + '.raw'
  int8.quantize_int8(paths['onnx'], tmp, src.calibration)
  _atomic_write(paths['onnx_int8'], compact_names(onnx.load(tmp)).SerializeToString())
  os.remove(tmp)

  report = _report(config, src, paths, info)
  write_json_atomic(os.path.join(workdir, 'report.json'), report, indent=2)
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(report_markdown(report))
  logging.info('export: wrote %s', workdir)
  return report


def _report(config, src, paths, info) -> dict:
  """Every artifact measured on the same inputs."""
  x = src.test['x'] if src.test is not None else src.calibration
  example = x[0]
  ref = _jax_outputs(src.forward, x, config.eval_batch_size)
  reps = config.latency_repeats
  logits = src.saved.meta.get('num_classes') is not None
  rows = {}
  flops = int(src.saved.model.flops_per_example)
  leaves = jax.tree.leaves(src.saved.params)
  rows['jax'] = {
    'file': None,
    'bytes': {'checkpoint': _checkpoint_bytes(config.source_workdir)},
    'params': int(sum(a.size for a in leaves)),
    'nonzeros': int(sum(np.count_nonzero(np.asarray(a)) for a in leaves)),
    'flops_per_example': flops,
    'latency_ms': {'jax_jit': measure.jax_latency(src.forward, example, reps)},
    'accuracy': _accuracy(ref, src.test),
    'parity': measure.parity(ref, ref, logits),
  }
  with open(paths['stablehlo'], 'rb') as f:
    call = stablehlo.load_stablehlo(f.read())
  out = _jax_outputs(call, x, config.eval_batch_size)
  rows['stablehlo'] = {
    'file': os.path.basename(paths['stablehlo']),
    'bytes': measure.file_bytes(paths['stablehlo']),
    'params': rows['jax']['params'],
    'nonzeros': rows['jax']['nonzeros'],
    'flops_per_example': flops,
    'latency_ms': {'jax_deserialized': measure.jax_latency(call, example, reps)},
    'accuracy': _accuracy(out, src.test),
    'parity': measure.parity(ref, out, logits),
    'bit_equal': bool(np.array_equal(ref, out)),
    'platforms': list(config.platforms),
  }
  for key in ('onnx', 'onnx_int8'):
    session = measure.ort_session(paths[key])
    out = measure.ort_outputs(session, x, config.eval_batch_size)
    counts = measure.weight_counts(onnx.load(paths[key]))
    rows[key] = {
      'file': os.path.basename(paths[key]),
      'bytes': measure.file_bytes(paths[key]),
      'params': counts['params'],
      'nonzeros': counts['nonzeros'],
      'flops_per_example': flops,
      'latency_ms': measure.ort_latency(paths[key], example, reps),
      'accuracy': _accuracy(out, src.test),
      'parity': measure.parity(ref, out, logits),
    }
  rows['onnx']['graph'] = info
  return {
    'source': os.path.abspath(config.source_workdir),
    'model': {k: src.saved.meta.get(k) for k in ('model_name', 'model', 'input_shape')},
    'classes': src.classes,
    'test_examples': None if src.test is None else int(len(x)),
    'calibration_examples': int(len(src.calibration)),
    'latency_repeats': reps,
    'cpu_count': os.cpu_count(),
    'artifacts': rows,
  }


def _fmt(value, spec='') -> str:
  return '—' if value is None else format(value, spec)


def report_markdown(report: dict) -> str:
  """report.md: one table row per artifact."""
  rows = report['artifacts']
  lines = [
    f'# Export of {report["source"]}',
    '',
    f'model {report["model"]["model_name"]} {report["model"]["model"]}, input '
    f'{report["model"]["input_shape"]}, classes {report["classes"] or "all"}; test examples '
    f'{_fmt(report["test_examples"])}; latency: batch 1, {report["latency_repeats"]} calls, '
    f'{report["cpu_count"]} CPU cores',
    '',
    '| artifact | bytes | gzip bytes | params | non-zeros | FLOPs/example | p50 ms (1 thread) '
    '| p90 ms (1 thread) | p50 ms (all cores) | accuracy | max abs diff vs JAX | top-1 agreement |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for key in ARTIFACTS:
    r = rows[key]
    lat = r['latency_ms']
    one = lat.get('one_thread') or lat.get('jax_jit') or lat.get('jax_deserialized')
    allc = lat.get('all_cores', {})
    size = r['bytes'].get('raw', r['bytes'].get('checkpoint'))
    label = key if key != 'jax' else 'jax (jit; bytes: orbax checkpoint)'
    lines.append(
      f'| {label} | {_fmt(size, ",")} | {_fmt(r["bytes"].get("gzip"), ",")} | '
      f'{r["params"]:,} | {r["nonzeros"]:,} | {r["flops_per_example"]:,} | '
      f'{one["p50_ms"]:.3f} | {one["p90_ms"]:.3f} | {_fmt(allc.get("p50_ms"), ".3f")} | '
      f'{_fmt(r["accuracy"], ".4f")} | {r["parity"]["max_abs_diff"]:.2e} | '
      f'{_fmt(r["parity"].get("top1_agreement"), ".4f")} |'
    )
  graph = rows['onnx']['graph']
  lines += [
    '',
    f'ONNX graph: {graph["batch_norms_folded"]} BatchNorms folded, '
    f'{graph["batch_norms_left"]} left; ops {graph["ops"]}. JAX rows run jit on all cores.',
    '',
  ]
  return '\n'.join(lines)
