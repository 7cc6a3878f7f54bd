"""Tests for fedcomp.data.sources and load_source."""

import gzip
import os

import numpy as np
import pytest

from fedcomp.data import PARTITIONS, SOURCES, build_federated_data, load_source
from fedcomp.data.sources import idx, synthetic
from fedcomp.registry import ConfigError

FASHION = '/usr/share/datasets/fashion-mnist'


def _idx_bytes(a: np.ndarray) -> bytes:
  codes = {np.dtype('u1'): 0x08, np.dtype('>i4'): 0x0C}
  a = a.astype(a.dtype.newbyteorder('>')) if a.dtype.itemsize > 1 else a
  header = bytes([0, 0, codes[a.dtype], a.ndim]) + np.array(a.shape, '>u4').tobytes()
  return header + a.tobytes()


def _write_idx(folder, arrays, gz):
  os.makedirs(folder, exist_ok=True)
  for key, stem in idx.FILES.items():
    data = _idx_bytes(arrays[key])
    opener = gzip.open if gz else open
    with opener(os.path.join(folder, stem + ('.gz' if gz else '')), 'wb') as f:
      f.write(data)


def _tiny_arrays():
  rng = np.random.default_rng(0)
  return {
    'train_x': rng.integers(0, 256, (6, 4, 3), dtype=np.uint8),
    'train_y': np.array([0, 1, 2, 3, 4, 6], np.uint8),
    'test_x': rng.integers(0, 256, (2, 4, 3), dtype=np.uint8),
    'test_y': np.array([7, 0], np.uint8),
  }


def _one_line(e):
  assert '\n' not in str(e.value)


@pytest.mark.parametrize('gz', [False, True])
def test_idx_round_trip(tmp_path, gz):
  arrays = _tiny_arrays()
  _write_idx(tmp_path, arrays, gz)
  ds = load_source('idx', {'path': str(tmp_path)}, seed=0)
  assert ds.train_x.shape == (6, 4, 3, 1) and ds.train_x.dtype == np.float32
  np.testing.assert_allclose(ds.train_x[..., 0], arrays['train_x'] / 255, rtol=1e-6)
  np.testing.assert_allclose(ds.test_x[..., 0], arrays['test_x'] / 255, rtol=1e-6)
  np.testing.assert_array_equal(ds.train_y, arrays['train_y'])
  assert ds.train_y.dtype == np.int32 and ds.num_classes == 8 and ds.groups is None


def test_parse_idx_other_dtypes_and_errors():
  a = np.arange(6, dtype=np.int32).reshape(2, 3) - 2
  out = idx.parse_idx(_idx_bytes(a))
  np.testing.assert_array_equal(out, a)
  assert out.dtype == np.int32
  with pytest.raises(ValueError, match='bad idx magic'):
    idx.parse_idx(b'\x01\x00\x08\x01')
  with pytest.raises(ValueError, match='data bytes follow'):
    idx.parse_idx(_idx_bytes(a)[:-1])


def test_idx_errors(tmp_path):
  missing = str(tmp_path / 'nope')
  with pytest.raises(ConfigError, match=rf"^config\.data\.path='{missing}' does not exist") as e:
    load_source('idx', {'path': missing}, seed=0)
  _one_line(e)
  _write_idx(tmp_path, _tiny_arrays(), gz=True)
  os.remove(tmp_path / 't10k-labels-idx1-ubyte.gz')
  with pytest.raises(ConfigError, match=r'lacks t10k-labels-idx1-ubyte\[\.gz\]$') as e:
    load_source('idx', {'path': str(tmp_path)}, seed=0)
  _one_line(e)
  with open(tmp_path / 't10k-labels-idx1-ubyte', 'wb') as f:
    f.write(b'junk')
  with pytest.raises(ConfigError, match=r'^config\.data\.path: cannot read .*bad idx magic') as e:
    load_source('idx', {'path': str(tmp_path)}, seed=0)
  _one_line(e)


def test_idx_train_and_test_images_of_different_sizes(tmp_path):
  arrays = _tiny_arrays()
  arrays['test_x'] = np.zeros((2, 5, 3), np.uint8)
  _write_idx(tmp_path, arrays, gz=False)
  with pytest.raises(ConfigError, match=r'train images are \(4, 3\) but test images \(5, 3\)') as e:
    load_source('idx', {'path': str(tmp_path)}, seed=0)
  _one_line(e)


@pytest.mark.skipif(not os.path.isdir(FASHION), reason='dataset-fashion-mnist not installed')
def test_idx_real_fashion_mnist():
  ds = load_source('idx', {'path': FASHION}, seed=0)
  assert ds.train_x.shape == (60000, 28, 28, 1) and ds.test_x.shape == (10000, 28, 28, 1)
  assert ds.num_classes == 10
  np.testing.assert_array_equal(np.bincount(ds.train_y), [6000] * 10)
  assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0


def test_digits():
  ds = load_source('digits', {'test_fraction': None, 'split_seed': None}, seed=0)
  assert len(ds.train_y) + len(ds.test_y) == 1797
  assert ds.train_x.shape[1:] == (8, 8, 1) and ds.train_x.dtype == np.float32
  assert ds.train_x.max() == 1.0 and ds.num_classes == 10
  counts = np.bincount(ds.test_y)  # stratified: round(0.2 * n_c) of each class
  np.testing.assert_array_equal(
    counts, np.rint(0.2 * (counts + np.bincount(ds.train_y))).astype(int)
  )
  other = SOURCES['digits'](seed=123)
  np.testing.assert_array_equal(ds.train_x, other.train_x)  # independent of the run seed
  resplit = SOURCES['digits'](seed=0, split_seed=1)
  assert not np.array_equal(ds.train_x, resplit.train_x)
  with pytest.raises(ConfigError, match=r'^config\.data\.test_fraction=1\.5 must be in') as e:
    SOURCES['digits'](seed=0, test_fraction=1.5)
  _one_line(e)


def test_synthetic():
  ds = load_source('synthetic', {'num_devices': 8, 'alpha': 0.5}, seed=3)
  assert ds.train_x.shape[1] == 60 and ds.train_x.dtype == np.float32
  assert ds.groups.dtype == np.int32 and len(ds.groups) == len(ds.train_y)
  assert set(ds.groups) == set(range(8)) and ds.num_classes == 10
  assert ds.train_y.max() < 10 and ds.train_y.dtype == np.int32
  n = len(ds.train_y) + len(ds.test_y)
  assert n <= 20_000 and 0.85 < len(ds.train_y) / n < 0.92
  assert np.bincount(ds.groups).min() >= 45  # int(0.9 * 50)
  again = SOURCES['synthetic'](seed=3, num_devices=8, alpha=0.5)
  np.testing.assert_array_equal(ds.train_x, again.train_x)
  assert not np.array_equal(ds.train_x, SOURCES['synthetic'](seed=4, num_devices=8).train_x)
  fd = build_federated_data(ds, 'natural', {'num_clients': 8}, 0)
  np.testing.assert_array_equal(fd.client_sizes + fd.test_sizes, np.bincount(ds.groups))
  with pytest.raises(ConfigError, match=r'^config\.partition\.num_clients=30 but the data has 8'):
    build_federated_data(ds, 'natural', {'num_clients': 30}, 0)
  iid = SOURCES['synthetic'](seed=0, alpha=0, beta=0, iid=True, dim=5, num_classes=3)
  assert iid.train_x.shape[1] == 5 and iid.num_classes == 3


def test_synthetic_sizes_capped():
  sizes = synthetic.device_sizes(np.random.default_rng(0), 1000, 50, 100_000)
  assert sizes.sum() <= 100_000 and sizes.min() >= 50
  uncapped = synthetic.device_sizes(np.random.default_rng(0), 1000, 50, None)
  assert uncapped.sum() > 100_000
  assert (np.diff(sizes[np.argsort(uncapped)]) >= 0).all()  # the ranking is kept
  with pytest.raises(ConfigError, match=r'^config\.data\.max_total=100 is below'):
    SOURCES['synthetic'](seed=0, max_total=100)


@pytest.mark.parametrize(
  'name,shape,classes',
  [
    ('mnist', (28, 28, 1), 10),
    ('cifar10', (32, 32, 3), 10),
    ('cifar100', (32, 32, 3), 100),
    ('emnist', (28, 28, 1), 62),
  ],
)
def test_tfds_mock(mock_tfds, monkeypatch, name, shape, classes):
  from fedcomp.data.sources import tfds_source

  monkeypatch.setattr(tfds_source, 'CHUNK', 7)  # exercise several chunks
  with mock_tfds.testing.mock_data(num_examples=20):
    ds = load_source('tfds', {'name': name, 'data_dir': None}, seed=0)
  assert ds.train_x.shape == (20, *shape) and ds.test_x.shape == (20, *shape)
  assert ds.train_x.dtype == np.float32 and ds.train_x.min() >= 0 and ds.train_x.max() <= 1
  assert ds.train_x.max() > 0.5  # scaled from uint8, not all zero
  assert ds.num_classes == classes and ds.train_y.dtype == np.int32
  assert ds.train_y.min() >= 0 and ds.train_y.max() < classes


def test_tfds_unknown_name():
  with pytest.raises(
    ConfigError, match=r"^config\.data\.name='imagenet' is unknown; known: mnist"
  ) as e:
    load_source('tfds', {'name': 'imagenet'}, seed=0)
  _one_line(e)


def test_tfds_missing_data_fails_fast(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  with pytest.raises(ConfigError, match=r"^config\.data\.name='mnist': cannot open split") as e:
    load_source('tfds', {'name': 'mnist', 'data_dir': str(tmp_path)}, seed=0)
  _one_line(e)


def test_load_source_errors():
  with pytest.raises(ConfigError, match=r"^config\.data_name='nope' is unknown; known: digits"):
    load_source('nope', {}, seed=0)
  with pytest.raises(ConfigError, match=r"^config\.data\.path is set but data source 'digits'"):
    load_source('digits', {'path': '/x'}, seed=0)
  with pytest.raises(ConfigError, match=r'^config\.data\.seed is set'):
    load_source('digits', {'seed': 1}, seed=0)


def test_registries():
  assert set(SOURCES) == {'digits', 'idx', 'tfds', 'synthetic', 'random'}
  assert set(PARTITIONS) == {'iid', 'shards', 'dirichlet', 'quantity', 'natural', 'hovefl'}
