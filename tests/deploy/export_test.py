"""Every registered model exports: ONNX matches JAX, StableHLO round-trips bit-equal,
BatchNorm is folded, pruned zeros survive, int8 is small; unsupported ops fail in one line."""

import jax
import numpy as np
import onnx
import pytest

from fedcomp import models
from fedcomp.deploy import int8, measure, onnx_export, stablehlo
from fedcomp.deploy.names import compact_names
from fedcomp.errors import ConfigError

# One row per registered model (and per BatchNorm variant): name, options, input shape,
# classes, BatchNorms it has.
BATTERY = {
  'mlp': ('mlp', {'hidden': (32, 16)}, (64,), 10, 0),
  'mlp_batch_norm': ('mlp', {'hidden': (32, 16), 'batch_norm': True}, (64,), 10, 2),
  'cnn': ('cnn', {}, (28, 28, 1), 10, 0),
  'simple_cnn': ('simple_cnn', {}, (28, 28, 1), 10, 0),
  'resnet': ('resnet', {'depth': 8, 'width': 0.5}, (28, 28, 1), 10, 7),
  'vgg': ('vgg', {'depth': 11, 'width': 0.125}, (32, 32, 3), 10, 8),
  'autoencoder': ('autoencoder', {}, (784,), None, 0),
  'split_mlp': ('split_mlp', {}, (28, 28, 1), 10, 0),
  'split_cnn': ('split_cnn', {}, (32, 32, 3), 10, 0),
}


def test_the_battery_covers_every_registered_model():
  assert {row[0] for row in BATTERY.values()} == set(models.MODELS)


def with_random_statistics(model):
  """BatchNorm running statistics away from (0, 1), so folding has something to fold."""
  rng = np.random.default_rng(0)
  return jax.tree.map(
    lambda a: np.asarray(a) + rng.uniform(0.2, 1.0, a.shape).astype(np.float32), model.state
  )


@pytest.mark.parametrize('key', sorted(BATTERY))
def test_onnx_matches_jax_and_stablehlo_round_trips_bit_equal(key, tmp_path):
  name, kwargs, shape, classes, batch_norms = BATTERY[key]
  model = models.build_model(name, kwargs, shape, classes, seed=0)
  state = with_random_statistics(model)
  forward = lambda x: model.apply(model.params, state, x)[0]  # noqa: E731
  x = np.random.default_rng(1).uniform(0, 1, (5, *shape)).astype(np.float32)
  expected = np.asarray(jax.jit(forward)(x))

  proto, info = onnx_export.convert(forward, shape, name=key)
  assert info['batch_norms_folded'] == batch_norms and info['batch_norms_left'] == 0
  assert 'Dropout' not in info['ops']
  path = str(tmp_path / 'm.onnx')
  onnx.save(compact_names(proto), path)
  got = measure.ort_outputs(measure.ort_session(path), x)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)

  call = stablehlo.load_stablehlo(stablehlo.export_stablehlo(forward, shape))
  for batch in (x, x[:1]):  # the batch dimension is symbolic
    np.testing.assert_array_equal(np.asarray(call(batch)), np.asarray(jax.jit(forward)(batch)))


def test_a_pruned_model_exports_with_its_zeros(tmp_path):
  model = models.build_model('cnn', {}, (28, 28, 1), 10, seed=0)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: np.where(rng.random(a.shape) < 0.9, 0.0, a).astype(a.dtype),
                        jax.device_get(model.params))  # fmt: skip
  zeros_jax = sum(int((a == 0).sum()) for a in jax.tree.leaves(params))
  size_jax = sum(a.size for a in jax.tree.leaves(params))
  proto, _ = onnx_export.convert(lambda x: model.apply(params, model.state, x)[0], (28, 28, 1))
  counts = measure.weight_counts(proto)
  assert counts['params'] == size_jax
  assert counts['params'] - counts['nonzeros'] == zeros_jax
  dense, _ = onnx_export.convert(lambda x: model.apply(model.params, model.state, x)[0],
                                 (28, 28, 1))  # fmt: skip
  for m, p in ((proto, 'sparse.onnx'), (dense, 'dense.onnx')):
    onnx.save(m, str(tmp_path / p))
  sparse_gz = measure.file_bytes(str(tmp_path / 'sparse.onnx'))['gzip']
  dense_gz = measure.file_bytes(str(tmp_path / 'dense.onnx'))['gzip']
  assert sparse_gz < 0.3 * dense_gz  # zeros compress: what sparse storage buys


def test_int8_is_under_a_third_of_float32_and_agrees_on_the_calibrated_data(tmp_path):
  model = models.build_model('resnet', {'depth': 8}, (28, 28, 1), 10, seed=0)
  forward = lambda x: model.apply(model.params, model.state, x)[0]  # noqa: E731
  proto, _ = onnx_export.convert(forward, (28, 28, 1))
  fp32, q8 = str(tmp_path / 'm.onnx'), str(tmp_path / 'm.int8.onnx')
  onnx.save(compact_names(proto), fp32)
  x = np.random.default_rng(0).uniform(0, 1, (128, 28, 28, 1)).astype(np.float32)
  int8.quantize_int8(fp32, q8, x)
  onnx.save(compact_names(onnx.load(q8)), q8)
  ops = {n.op_type for n in onnx.load(q8).graph.node}
  assert {'QuantizeLinear', 'DequantizeLinear'} <= ops
  assert measure.file_bytes(q8)['raw'] <= 0.3 * measure.file_bytes(fp32)['raw']
  ref = measure.ort_outputs(measure.ort_session(fp32), x)
  got = measure.ort_outputs(measure.ort_session(q8), x)
  scale = np.abs(ref).max()
  assert np.abs(got - ref).max() < 0.1 * scale  # 8-bit error, not a broken graph


def test_an_op_the_converter_cannot_handle_fails_in_one_line():
  def f(x):
    return jax.lax.composite(lambda y: y * 2.0, name='acme.double')(x)

  with pytest.raises(onnx_export.UnsupportedOpError) as e:
    onnx_export.convert(f, (4,), name='acme')
  assert "'composite'" in str(e.value) and '\n' not in str(e.value)


def test_stablehlo_for_accelerators_is_lowered_without_one():
  from jax import export

  model = models.build_model('mlp', {'hidden': (8,)}, (4,), 3, seed=0)
  blob = stablehlo.export_stablehlo(lambda x: model.apply(model.params, model.state, x)[0], (4,),
                                    ('cpu', 'cuda', 'tpu'))  # fmt: skip
  exported = export.deserialize(bytearray(blob))
  assert exported.platforms == ('cpu', 'cuda', 'tpu')
  assert str(exported.in_avals[0].shape[0]) == 'b'  # symbolic batch
  with pytest.raises(ConfigError, match='known platforms are cpu, cuda, rocm, tpu'):
    stablehlo.check_platforms(('cpu', 'npu'))
