r"""Predicts classes with an exported ONNX model, using only onnxruntime and numpy.

  python -m launch.predict --model=RUN/export/model.onnx --images=FILE [--labels=FILE]
      [--limit=10] [--batch_size=256]

FILE: an idx file (MNIST / Fashion-MNIST format, optionally .gz) or a .npy array. Integer
pixels are scaled by the model's `fedcomp.pixel_max` metadata (x = pixels / 255 for idx
images); float arrays are taken as already scaled. Prints the first `limit` predictions
(the original class ids of a class-subset model) and, with --labels, the accuracy over the
examples whose label the model knows.

Deliberately free of jax and fedcomp: this is what runs on the edge device.
"""

import argparse
import gzip
import json
import sys

import numpy as np
import onnxruntime as ort

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}


def read_idx(path: str) -> np.ndarray:
  """An idx file (LeCun's MNIST format: zero bytes, type code, rank, big-endian dims)."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
    raise ValueError(f'{path} is not an idx file')
  rank = data[3]
  dims = np.frombuffer(data, '>u4', count=rank, offset=4).astype(int)
  dtype = np.dtype(_IDX_TYPES[data[2]])
  array = np.frombuffer(data, dtype, count=int(np.prod(dims)), offset=4 + 4 * rank)
  return array.reshape(dims)


def read_array(path: str) -> np.ndarray:
  return np.load(path) if path.endswith('.npy') else read_idx(path)


def load(path: str):
  """(session, metadata dict) of an exported model."""
  options = ort.SessionOptions()
  options.log_severity_level = 3
  session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
  return session, dict(session.get_modelmeta().custom_metadata_map)


def prepare(images: np.ndarray, meta: dict, input_shape) -> np.ndarray:
  """Scaled float32 inputs of the model's example shape."""
  x = images
  if np.issubdtype(x.dtype, np.integer):
    x = x.astype(np.float32) / np.float32(float(meta.get('fedcomp.pixel_max', 255.0)))
  x = x.astype(np.float32)
  shape = [int(d) for d in input_shape[1:]]
  if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
    raise ValueError(f'examples of shape {x.shape[1:]} do not fit the model input {shape}')
  return x.reshape(len(x), *shape)


def predict(session, x: np.ndarray, batch_size: int) -> np.ndarray:
  name = session.get_inputs()[0].name
  starts = range(0, len(x), batch_size)
  logits = [session.run(None, {name: x[i : i + batch_size]})[0] for i in starts]
  return np.concatenate(logits).argmax(1)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--model', required=True, help='an exported .onnx model')
  p.add_argument('--images', required=True, help='idx (.gz) or .npy examples')
  p.add_argument('--labels', help='idx (.gz) or .npy labels: print the accuracy')
  p.add_argument('--limit', type=int, default=10, help='predictions to print')
  p.add_argument('--batch_size', type=int, default=256)
  args = p.parse_args(argv)
  try:
    session, meta = load(args.model)
    x = prepare(read_array(args.images), meta, session.get_inputs()[0].shape)
  except (OSError, ValueError) as e:
    print(f'predict: error: {e}', file=sys.stderr)
    return 2
  classes = json.loads(meta.get('fedcomp.classes', 'null'))
  pred = predict(session, x, args.batch_size)
  if classes is not None:
    pred = np.asarray(classes)[pred]
  for i, c in enumerate(pred[: args.limit]):
    print(f'{i}\t{int(c)}')
  print(f'predicted {len(pred)} examples with {args.model}')
  if args.labels:
    y = read_array(args.labels).astype(np.int64)
    known = np.isin(y, classes) if classes is not None else np.ones(len(y), bool)
    acc = float(np.mean(pred[known] == y[known]))
    print(f"accuracy {acc:.4f} on {int(known.sum())} labelled examples of the model's classes")
  return 0


if __name__ == '__main__':
  sys.exit(main())
