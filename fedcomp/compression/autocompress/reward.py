"""Rewards of a compression search: N2N's product of compression and accuracy terms,
weighted over accuracy, latency and memory, with N2N's annealed penalty for hard budgets.

With C = 1 − cost(student) / cost(teacher) the saving in a cost, R_c(C) = C(2 − C) rewards
savings with diminishing returns (0 at no saving, 1 at a free model), and
R_a = accuracy(student) / accuracy(teacher). N2N's reward is R = R_c(C_params) · R_a. The
weighted form generalises it to several costs with user weights:

  R = R_a^w_a · Π_k R_c(C_k)^w_k,  k ∈ {latency, memory},

so w_a = 1, w_memory = 1, w_latency = 0 (memory counted in parameters) is N2N's reward;
raising one weight trades accuracy for that cost. A hard budget violated at search episode
t gives N2N's penalty R' = (ε − 1) + ε·R with ε = max(0, 1 − t/T)⁴, which anneals from
"just the reward" to −1; an invalid architecture gets −1.

References: Ashok, Rhinehart, Beainy, Kitani 2018, "N2N Learning: Network to Network
Compression via Policy Gradient Reinforcement Learning" (ICLR), Sec. 3.3 and its code
(rl.py); Pahwa et al. 2019, "Data-Driven Compression of Convolutional Neural Networks"
(arXiv 1911.12740): user-weighted speed/memory/accuracy trade-offs.
"""

import dataclasses
from collections.abc import Mapping

from fedcomp.errors import ConfigError

INVALID = -1.0


def saving(student_cost: float, teacher_cost: float) -> float:
  """C = 1 − student/teacher (negative when the student costs more)."""
  if teacher_cost <= 0:
    raise ValueError(f'teacher cost must be positive, got {teacher_cost}')
  return 1.0 - float(student_cost) / float(teacher_cost)


def compression_term(c: float) -> float:
  """N2N's R_c = C(2 − C), for savings C ≤ 1."""
  return c * (2.0 - c)


def n2n_reward(student_params: int, teacher_params: int, student_acc: float,
               teacher_acc: float) -> float:  # fmt: skip
  """N2N's R = R_c(C) · R_a with C the parameter saving."""
  return compression_term(saving(student_params, teacher_params)) * (student_acc / teacher_acc)


@dataclasses.dataclass(frozen=True)
class RewardWeights:
  """User weights of the trade-off and optional hard budgets.

  Attributes:
    accuracy_weight: exponent of R_a.
    latency_weight, memory_weight: exponents of R_c of the latency and memory savings.
    latency_budget_ms, memory_budget_bytes: hard budgets (None: none).
    anneal_episodes: T of the penalty's ε = max(0, 1 − t/T)⁴.
  """

  accuracy_weight: float = 1.0
  latency_weight: float = 0.0
  memory_weight: float = 1.0
  latency_budget_ms: float | None = None
  memory_budget_bytes: float | None = None
  anneal_episodes: int = 15

  def check(self, key: str = 'reward') -> 'RewardWeights':
    for name in ('accuracy_weight', 'latency_weight', 'memory_weight'):
      if getattr(self, name) < 0:
        raise ConfigError(f'config.{key}.{name}={getattr(self, name)} must be >= 0')
    if self.accuracy_weight == self.latency_weight == self.memory_weight == 0:
      raise ConfigError(f'config.{key}: every weight is 0; the reward would be constant')
    for name in ('latency_budget_ms', 'memory_budget_bytes'):
      value = getattr(self, name)
      if value is not None and value <= 0:
        raise ConfigError(f'config.{key}.{name}={value} must be positive (or None)')
    if self.anneal_episodes <= 0:
      raise ConfigError(f'config.{key}.anneal_episodes={self.anneal_episodes} must be > 0')
    return self


def weighted_reward(
  weights: RewardWeights,
  student: Mapping[str, float],
  teacher: Mapping[str, float],
  episode: int = 0,
) -> float:
  """The weighted reward of one candidate (see the module docstring).

  Args:
    weights: the RewardWeights.
    student, teacher: {'accuracy', 'latency_ms', 'memory_bytes'} of each; a student
      with accuracy None is invalid.
    episode: the search episode (anneals the budget penalty).

  Returns:
    The reward; INVALID (−1) for an invalid student.
  """
  if student.get('accuracy') is None:
    return INVALID
  r = (student['accuracy'] / teacher['accuracy']) ** weights.accuracy_weight
  for key, w in (('latency_ms', weights.latency_weight),
                 ('memory_bytes', weights.memory_weight)):  # fmt: skip
    if w:
      rc = compression_term(saving(student[key], teacher[key]))
      # A student that costs more than the teacher (C < 0) gets R_c < 0; a negative base
      # has no real power, so it counts as a factor of 0 (no reward).
      r *= max(rc, 0.0) ** w
  over = (
    weights.latency_budget_ms is not None and student['latency_ms'] > weights.latency_budget_ms
  ) or (
    weights.memory_budget_bytes is not None
    and student['memory_bytes'] > weights.memory_budget_bytes
  )
  if over:
    eps = max(0.0, 1.0 - episode / weights.anneal_episodes) ** 4
    r = (eps - 1.0) + eps * r
  return float(r)
