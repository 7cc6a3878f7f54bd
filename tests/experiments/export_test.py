"""The export experiment on a real run, launch.export's errors, and launch.predict."""

import gzip
import json
import os
import struct
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from configs import common
from configs import export as export_config
from fedcomp.errors import ConfigError
from fedcomp.experiments import export, get_run
from launch import predict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def federated_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('fed'))
  get_run('federated')(common.runlocal(common.federated_config()), workdir)
  return workdir


def test_a_federated_run_exports_and_predict_agrees_with_the_report(federated_run, tmp_path,
                                                                    capsys):  # fmt: skip
  config = export_config.get_config('runlocal')
  config.source_workdir = federated_run
  out = str(tmp_path / 'export')
  report = export.run(config, out)
  for name in ('model.onnx', 'model.int8.onnx', 'model.stablehlo', 'report.json', 'report.md'):
    assert os.path.exists(os.path.join(out, name)), name
  rows = report['artifacts']
  assert rows['stablehlo']['bit_equal']
  assert rows['onnx']['parity']['max_abs_diff'] < 1e-5
  assert rows['onnx']['params'] == rows['jax']['params']
  assert rows['onnx_int8']['bytes']['raw'] < 0.35 * rows['onnx']['bytes']['raw']
  with open(os.path.join(federated_run, 'summary.json')) as f:
    assert rows['jax']['accuracy'] == json.load(f)['eval/accuracy']  # the run's own number

  # launch.predict (onnxruntime + numpy) on the run's test set gives the report's accuracy.
  from fedcomp import data

  test = data.load_source('digits', {}, 0).test
  np.save(tmp_path / 'x.npy', test['x'])
  np.save(tmp_path / 'y.npy', test['y'])
  assert predict.main([f'--model={out}/model.onnx', f'--images={tmp_path}/x.npy',
                       f'--labels={tmp_path}/y.npy', '--limit=3']) == 0  # fmt: skip
  printed = capsys.readouterr().out
  assert f'accuracy {rows["onnx"]["accuracy"]:.4f} on {len(test["y"])}' in printed
  with open(os.path.join(out, 'report.json')) as f:
    assert json.load(f)['artifacts']['onnx_int8']['accuracy'] == rows['onnx_int8']['accuracy']


def test_a_workdir_without_a_model_or_checkpoint_fails_in_one_line(tmp_path):
  config = export_config.get_config('runlocal')
  config.source_workdir = str(tmp_path)
  with pytest.raises(ConfigError, match='holds no saved model') as e:
    export.run(config, str(tmp_path / 'out'))
  assert '\n' not in str(e.value)
  # A federated run that has not checkpointed yet.
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(common.runlocal(common.federated_config()).to_dict(), f)
  with pytest.raises(ConfigError, match='no checkpoint'):
    export.run(config, str(tmp_path / 'out'))
  assert not os.path.exists(tmp_path / 'out')


def test_launch_export_reports_bad_input_in_one_line(tmp_path):
  r = subprocess.run(
    [sys.executable, '-m', 'launch.export', f'--workdir={tmp_path}/nothing'],
    cwd=ROOT, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1] == (
    f"fedcomp: error: source workdir '{tmp_path}/nothing' does not exist"
  )


def test_predict_needs_neither_jax_nor_fedcomp():
  code = (
    'import sys, launch.predict; '
    "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'fedcomp', 'flax')]; "
    'assert not bad, bad'
  )
  subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True, timeout=120)


def write_idx(path, array):
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_predict_reads_idx_scales_pixels_and_maps_subset_classes(tmp_path, capsys):
  # A hand-made 2-class model over 4 pixels: logits = x @ W, classes [3, 7].
  w = np.array([[1, 0], [0, 1], [0, 0], [0, 0]], np.float32)
  graph = helper.make_graph(
    [helper.make_node('Gemm', ['x', 'w'], ['logits'])], 'g',
    [helper.make_tensor_value_info('x', TensorProto.FLOAT, ['B', 4])],
    [helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['B', 2])],
    [numpy_helper.from_array(w, 'w')],
  )  # fmt: skip
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
  for k, v in {'fedcomp.classes': '[3, 7]', 'fedcomp.pixel_max': '255.0'}.items():
    entry = model.metadata_props.add()
    entry.key, entry.value = k, v
  onnx.save(model, str(tmp_path / 'm.onnx'))
  images = np.array([[[200, 10], [0, 0]], [[10, 200], [0, 0]], [[0, 255], [0, 0]]], np.uint8)
  write_idx(str(tmp_path / 'images.gz'), images)
  np.testing.assert_array_equal(predict.read_idx(str(tmp_path / 'images.gz')), images)
  np.save(tmp_path / 'labels.npy', np.array([3, 7, 3]))
  assert predict.main([f'--model={tmp_path}/m.onnx', f'--images={tmp_path}/images.gz',
                       f'--labels={tmp_path}/labels.npy']) == 0  # fmt: skip
  lines = capsys.readouterr().out.splitlines()
  assert lines[:3] == ['0\t3', '1\t7', '2\t7']
  assert lines[-1].startswith('accuracy 0.6667 on 3 ')
