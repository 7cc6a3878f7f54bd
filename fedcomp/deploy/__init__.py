"""Inference-only deployment: a run's model as StableHLO, ONNX and int8 ONNX, measured.

The experiment `export` (fedcomp/experiments/export.py) drives these modules; see it for
what a deployment writes and reports.
"""

from fedcomp.deploy.fold import count_ops, fold_batch_norms
from fedcomp.deploy.names import compact_names
from fedcomp.deploy.source import ExportSource, load_source

__all__ = ['ExportSource', 'compact_names', 'count_ops', 'fold_batch_norms', 'load_source']
