"""Post-training static int8 quantization of an ONNX model with onnxruntime's quantizer.

Weights int8 per output channel (symmetric), activations uint8 per tensor with scales
calibrated on real examples (min/max), in QDQ format: QuantizeLinear/DequantizeLinear
pairs around each quantized op, which onnxruntime fuses into integer kernels and which
other ONNX runtimes read too. We use onnxruntime's maintained quantizer rather than our
own; its shape-inference pre-processing runs first, as its documentation recommends.

References: Jacob et al. 2018 (CVPR), integer-arithmetic-only inference; onnxruntime
documentation, "Quantize ONNX models" (static quantization, QDQ format).
"""

import os
import tempfile

import numpy as np


class _Batches:
  """onnxruntime's CalibrationDataReader over an array of examples, in batches."""

  def __init__(self, x: np.ndarray, batch_size: int, input_name: str):
    self._batches = iter(
      [{input_name: x[i : i + batch_size]} for i in range(0, len(x), batch_size)]
    )

  def get_next(self):
    return next(self._batches, None)


def quantize_int8(
  fp32_path: str, out_path: str, calibration: np.ndarray, *, batch_size: int = 64,
  per_channel: bool = True,
) -> None:  # fmt: skip
  """Writes the int8 version of the model at `fp32_path` to `out_path`.

  Args:
    fp32_path: a float32 ONNX model with one input.
    out_path: where the quantized model goes.
    calibration: (N, ...) float32 examples the activation ranges are calibrated on.
    batch_size: calibration batch size.
    per_channel: per-output-channel weight scales (else per tensor).
  """
  import onnx
  from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
  )
  from onnxruntime.quantization.shape_inference import quant_pre_process

  input_name = onnx.load(fp32_path, load_external_data=False).graph.input[0].name
  with tempfile.TemporaryDirectory() as tmp:
    prepared = os.path.join(tmp, 'prepared.onnx')
    quant_pre_process(fp32_path, prepared, skip_symbolic_shape=False)
    quantize_static(
      prepared,
      out_path,
      _Batches(np.asarray(calibration, np.float32), batch_size, input_name),
      quant_format=QuantFormat.QDQ,
      per_channel=per_channel,
      activation_type=QuantType.QUInt8,
      weight_type=QuantType.QInt8,
      calibrate_method=CalibrationMethod.MinMax,
    )
