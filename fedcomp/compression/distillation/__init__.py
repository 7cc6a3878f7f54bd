"""Distillation with and without data.

- `kd`: the knowledge-distillation loss (T²-scaled soft term mixed with the label loss).
- `subset`: class-subset deployments (data, labels and teacher logits restricted).
- `metadata`: Dream Distillation's metadata (per-class k-means centroids and principal
  directions of a layer's activations), per client and merged on a server.
- `synthesis`: inputs optimised against a fixed teacher (Adam, jitter, image prior), and
  noise inputs.
- `dream`: the teacher's activations, central and per-client metadata, the dream loss.
- `deepinversion`: the BatchNorm-statistics + class loss of DeepInversion.

The `distill` experiment (fedcomp/experiments/distill.py) puts them together; its
transfer sets are registered in TRANSFER_SETS there.
"""
