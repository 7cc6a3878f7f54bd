"""MNIST-format idx files in a folder (MNIST, Fashion-MNIST, ...), gzipped or raw.

References: Y. LeCun et al., "THE MNIST DATABASE of handwritten digits" (file format section).
"""

import gzip
import os

import numpy as np

from fedcomp.data.dataset import Dataset
from fedcomp.registry import ConfigError

FILES = {
  'train_x': 'train-images-idx3-ubyte',
  'train_y': 'train-labels-idx1-ubyte',
  'test_x': 't10k-images-idx3-ubyte',
  'test_y': 't10k-labels-idx1-ubyte',
}

# Third byte of the magic number -> big-endian element type.
_DTYPES = {
  0x08: np.dtype('u1'),
  0x09: np.dtype('i1'),
  0x0B: np.dtype('>i2'),
  0x0C: np.dtype('>i4'),
  0x0D: np.dtype('>f4'),
  0x0E: np.dtype('>f8'),
}


def parse_idx(data: bytes, name: str = 'idx data') -> np.ndarray:
  """Parses the bytes of one idx file.

  The header is two zero bytes, a type byte, a byte with the number of dims d,
  then d big-endian uint32 sizes; the data follows in C order.

  Args:
    data: the file's (decompressed) bytes.
    name: file name, for error messages.

  Returns:
    The array, in native byte order.
  """
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
    raise ValueError(f'{name}: bad idx magic number {data[:4].hex()}')
  dtype, ndim = _DTYPES[data[2]], data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f'{name}: truncated idx header')
  shape = tuple(int(d) for d in np.frombuffer(data, '>u4', count=ndim, offset=4))
  size = int(np.prod(shape, dtype=np.int64))
  if len(data) - header != size * dtype.itemsize:
    raise ValueError(
      f'{name}: idx header says {shape} {dtype} ({size * dtype.itemsize} bytes) '
      f'but {len(data) - header} data bytes follow'
    )
  arr = np.frombuffer(data, dtype, count=size, offset=header).reshape(shape)
  return arr.astype(dtype.newbyteorder('='))


def find_files(path: str) -> dict[str, str]:
  """Returns the four idx file paths under `path` (raw name, else name + '.gz').

  Args:
    path: the folder.

  Returns:
    key ('train_x', ...) -> file path.
  """
  if not os.path.isdir(path):
    raise ConfigError(f'config.data.path={path!r} does not exist or is not a folder')
  found, missing = {}, []
  for key, stem in FILES.items():
    for candidate in (stem, stem + '.gz'):
      if os.path.isfile(os.path.join(path, candidate)):
        found[key] = os.path.join(path, candidate)
        break
    else:
      missing.append(stem + '[.gz]')
  if missing:
    raise ConfigError(f'config.data.path={path!r} lacks {", ".join(missing)}')
  return found


def _read(file: str) -> np.ndarray:
  opener = gzip.open if file.endswith('.gz') else open
  try:
    with opener(file, 'rb') as f:
      return parse_idx(f.read(), os.path.basename(file))
  except (OSError, EOFError, ValueError) as e:
    raise ConfigError(f'config.data.path: cannot read {file}: {e}') from e


def load(*, seed: int, path: str) -> Dataset:
  """Loads the four MNIST-format idx files in folder `path`.

  Args:
    seed: run seed; unused (the files fix the train/test split).
    path: folder with train-images-idx3-ubyte, train-labels-idx1-ubyte,
      t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, each optionally '.gz'.

  Returns:
    Dataset with x (N, H, W, 1) float32 = pixel / 255; num_classes = max label + 1.
  """
  del seed
  files = find_files(os.path.expanduser(str(path)))
  arrays = {key: _read(file) for key, file in files.items()}
  for split in ('train', 'test'):
    x, y = arrays[f'{split}_x'], arrays[f'{split}_y']
    if x.dtype != np.uint8 or x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
      raise ConfigError(
        f'config.data.path: {split} images {x.shape} {x.dtype} and labels {y.shape} are not '
        'MNIST-like (uint8 (N, H, W) images, (N,) labels)'
      )
    if len(y) and y.min() < 0:
      raise ConfigError(f'config.data.path: {split} labels must be >= 0')
  if arrays['train_x'].shape[1:] != arrays['test_x'].shape[1:]:
    raise ConfigError(
      f'config.data.path: train images are {arrays["train_x"].shape[1:]} but test images '
      f'{arrays["test_x"].shape[1:]}; both splits must have the same image size'
    )
  train_y = arrays['train_y'].astype(np.int32)
  test_y = arrays['test_y'].astype(np.int32)
  num_classes = int(max(train_y.max(initial=-1), test_y.max(initial=-1))) + 1

  def images(a):
    return (a.astype(np.float32) / np.float32(255))[..., None]

  return Dataset.from_arrays(
    images(arrays['train_x']), train_y, images(arrays['test_x']), test_y, num_classes
  )
