"""TensorFlow Datasets image sets, read through `tfds.data_source` (no TensorFlow needed).

The data must already be prepared in array_record format under `data_dir`
(`tfds.load` and `as_dataset` need TensorFlow, which fedcomp does not install).
"""

import numpy as np

from fedcomp.data.dataset import Dataset
from fedcomp.registry import ConfigError

NAMES = ('mnist', 'fashion_mnist', 'emnist', 'cifar10', 'cifar100', 'svhn_cropped')
DEFAULT_CONFIGS = {'emnist': 'emnist/byclass'}  # 62 classes: digits, upper and lower case.
CHUNK = 8192  # examples per __getitems__ call.


def _read_split(source, num: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
  x = np.empty((num, *shape), np.float32)
  y = np.empty((num,), np.int32)
  for start in range(0, num, CHUNK):
    stop = min(start + CHUNK, num)
    items = source.__getitems__(list(range(start, stop)))
    np.multiply(np.stack([it['image'] for it in items]), np.float32(1 / 255), out=x[start:stop])
    y[start:stop] = [it['label'] for it in items]
  return x, y


def load(*, seed: int, name: str, data_dir: str | None = None, download: bool = False) -> Dataset:
  """Loads a TFDS image classification set as float32 NHWC arrays.

  Args:
    seed: run seed; unused (TFDS fixes the train/test split).
    name: one of NAMES, optionally with a config and version, e.g. 'emnist/balanced';
      plain 'emnist' means 'emnist/byclass'. cifar100 uses the fine 'label'.
    data_dir: TFDS data folder (None: TFDS's default, ~/tensorflow_datasets).
    download: whether TFDS may download and prepare missing data (needs network and
      array_record; off by default so a missing dataset fails at once instead of
      retrying DNS for minutes).

  Returns:
    Dataset with x = uint8 image / 255, num_classes from the label feature.
  """
  del seed
  base = str(name).split('/')[0].split(':')[0]
  if base not in NAMES:
    raise ConfigError(f'config.data.name={name!r} is unknown; known: {", ".join(NAMES)}')
  full_name = DEFAULT_CONFIGS.get(name, name)
  import tensorflow_datasets as tfds

  arrays = {}
  for split in ('train', 'test'):
    try:
      source = tfds.data_source(full_name, split=split, data_dir=data_dir, download=download)
    except Exception as e:  # TFDS raises many types for missing or unprepared data.
      msg = str(e).strip().splitlines()[0] if str(e).strip() else ''
      raise ConfigError(
        f'config.data.name={name!r}: cannot open split {split!r} under '
        f'config.data.data_dir={data_dir!r} (download={download}): {type(e).__name__}: {msg}'
      ) from e
    features = source.dataset_info.features
    num_classes = int(features['label'].num_classes)
    arrays[split] = _read_split(source, len(source), tuple(features['image'].shape))
  (train_x, train_y), (test_x, test_y) = arrays['train'], arrays['test']
  return Dataset.from_arrays(train_x, train_y, test_x, test_y, num_classes=num_classes)
