"""Automatic compression (in progress, issue 15): N2N's rewards (reward.py), the two-stage
REINFORCE policy (policy.py), and a VGG teacher's search space with candidates materialised
or masked (space.py), and the per-layer onnxruntime latency table (latency.py). The search
experiment (materialised vs masked candidates measured, class subsets, policy reuse) is to
come."""

from fedcomp.compression.autocompress.policy import Episode, TwoStagePolicy, reinforce
from fedcomp.compression.autocompress.reward import (
  RewardWeights,
  n2n_reward,
  weighted_reward,
)

__all__ = ['Episode', 'RewardWeights', 'TwoStagePolicy', 'n2n_reward', 'reinforce',
           'weighted_reward']  # fmt: skip
