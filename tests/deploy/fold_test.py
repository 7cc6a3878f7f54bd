"""BatchNorm folding and name compaction on hand-built ONNX graphs, against onnxruntime
running the unfolded graph and a numpy computation of the same layers."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fedcomp.deploy.fold import count_ops, fold_batch_norms
from fedcomp.deploy.names import compact_names

EPS = 1e-3


def run(model, x):
  options = ort.SessionOptions()
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no fusion
  return ort.InferenceSession(model.SerializeToString(), options).run(None, {'x': x})[0]


def bn_stats(rng, c):
  return {
    'scale': rng.normal(size=c).astype(np.float32),
    'beta': rng.normal(size=c).astype(np.float32),
    'mean': rng.normal(size=c).astype(np.float32),
    'var': rng.uniform(0.5, 2.0, size=c).astype(np.float32),
  }


def graph_with_bn(layer_node, inits, x_shape, y_shape, stats):
  bn = helper.make_node(
    'BatchNormalization', ['h', 'scale', 'beta', 'mean', 'var'], ['y'], epsilon=EPS
  )
  tensors = [numpy_helper.from_array(v, k) for k, v in {**inits, **stats}.items()]
  graph = helper.make_graph(
    [layer_node, bn], 'g',
    [helper.make_tensor_value_info('x', TensorProto.FLOAT, x_shape)],
    [helper.make_tensor_value_info('y', TensorProto.FLOAT, y_shape)],
    tensors,
  )  # fmt: skip
  return helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])


def by_hand(h, stats, channel_axis):
  shape = [1] * h.ndim
  shape[channel_axis] = -1
  s = stats['scale'] / np.sqrt(stats['var'] + EPS)
  return (h - stats['mean'].reshape(shape)) * s.reshape(shape) + stats['beta'].reshape(shape)


def test_conv_batch_norm_folds_exactly_and_keeps_zero_weights():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(4, 3, 1, 1)).astype(np.float32)
  w[1, :2] = 0.0  # pruned weights
  b = rng.normal(size=4).astype(np.float32)
  stats = bn_stats(rng, 4)
  conv = helper.make_node('Conv', ['x', 'w', 'b'], ['h'])
  model = graph_with_bn(conv, {'w': w, 'b': b}, [2, 3, 5, 5], [2, 4, 5, 5], stats)
  x = rng.normal(size=(2, 3, 5, 5)).astype(np.float32)
  folded, n = fold_batch_norms(model)
  assert n == 1 and count_ops(folded) == {'Conv': 1}
  # A 1x1 convolution is a matmul over channels: the hand computation.
  h = np.einsum('oi,bihw->bohw', w[:, :, 0, 0], x) + b[None, :, None, None]
  expected = by_hand(h, stats, 1)
  np.testing.assert_allclose(run(model, x), expected, atol=1e-5)
  np.testing.assert_allclose(run(folded, x), expected, atol=1e-5)
  new_w = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}[
    folded.graph.node[0].input[1]
  ]
  assert np.all(new_w[1, :2] == 0.0) and np.count_nonzero(new_w) == np.count_nonzero(w)


@pytest.mark.parametrize('trans_b', [0, 1])
@pytest.mark.parametrize('with_bias', [True, False])
def test_gemm_batch_norm_folds_exactly(trans_b, with_bias):
  rng = np.random.default_rng(1)
  w = rng.normal(size=(6, 3)).astype(np.float32)  # (K, N)
  c = rng.normal(size=3).astype(np.float32)
  stats = bn_stats(rng, 3)
  inits = {'w': w.T.copy() if trans_b else w}
  inputs = ['x', 'w']
  if with_bias:
    inits['c'] = c
    inputs.append('c')
  gemm = helper.make_node('Gemm', inputs, ['h'], transB=trans_b, beta=0.5)
  model = graph_with_bn(gemm, inits, [4, 6], [4, 3], stats)
  x = rng.normal(size=(4, 6)).astype(np.float32)
  h = x @ w + (0.5 * c if with_bias else 0.0)
  folded, n = fold_batch_norms(model)
  assert n == 1 and 'BatchNormalization' not in count_ops(folded)
  np.testing.assert_allclose(run(folded, x), by_hand(h, stats, 1), atol=1e-5)


def test_a_batch_norm_whose_input_is_shared_is_left_in_place():
  rng = np.random.default_rng(2)
  stats = bn_stats(rng, 3)
  gemm = helper.make_node('Gemm', ['x', 'w'], ['h'])
  model = graph_with_bn(gemm, {'w': rng.normal(size=(6, 3)).astype(np.float32)}, [4, 6],
                        [4, 3], stats)  # fmt: skip
  model.graph.output.append(helper.make_tensor_value_info('h', TensorProto.FLOAT, [4, 3]))
  folded, n = fold_batch_norms(model)
  assert n == 0 and count_ops(folded)['BatchNormalization'] == 1


def test_compact_names_keeps_the_function_and_shrinks_the_file():
  rng = np.random.default_rng(3)
  stats = bn_stats(rng, 3)
  long = {'a_very_long_weight_name_from_a_converter_' + k: v for k, v in stats.items()}
  bn = helper.make_node('BatchNormalization', ['x', *long], ['y'], name='named_node')
  graph = helper.make_graph(
    [bn], 'g', [helper.make_tensor_value_info('x', TensorProto.FLOAT, [2, 3])],
    [helper.make_tensor_value_info('y', TensorProto.FLOAT, [2, 3])],
    [numpy_helper.from_array(v, k) for k, v in long.items()],
  )  # fmt: skip
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
  small = compact_names(model)
  onnx.checker.check_model(small)
  x = rng.normal(size=(2, 3)).astype(np.float32)
  np.testing.assert_array_equal(run(small, x), run(model, x))
  assert len(small.SerializeToString()) < len(model.SerializeToString()) - 100
  assert [i.name for i in small.graph.input] == ['x'] and small.graph.output[0].name == 'y'
