"""The simulated clock of federated split training.

A discriminator step on a user's devices takes, per device, the compute time of the parts
it hosts (measured per part on this machine, or from FLOPs) times the device's time factor,
plus a link latency per device-to-device hop; an epoch takes as long as its slowest user.

References: Kortoçi et al. 2022, "Federated Split GANs" (arXiv 2207.01750), notebook timing
model (measured time × time factor + 50 ms LAN time per hop; epoch = slowest discriminator).
"""

from collections.abc import Sequence

from fedcomp.gan.placement import Device, Placement

DEFAULT_LINK_MS = 50.0


def user_time_ms(placement: Placement, devices: Sequence[Device], part_ms: Sequence[float],
                 link_ms: float = DEFAULT_LINK_MS) -> float:  # fmt: skip
  """Σ_parts part_ms[p] · time_factor[device of p] + link_ms · hops (ms); inf if dropped."""
  if placement.dropped:
    return float('inf')
  compute = sum(part_ms[p] * devices[d].time_factor for p, d in enumerate(placement.device_of_part))
  return compute + link_ms * placement.hops()


def epoch_time_ms(
  placements: Sequence[Placement], users: Sequence[Sequence[Device]], part_ms: Sequence[float],
  steps: int, link_ms: float = DEFAULT_LINK_MS,
) -> float:  # fmt: skip
  """Simulated time of an epoch of `steps` steps: the slowest kept user's step time × steps."""
  times = [user_time_ms(p, u, part_ms, link_ms) for p, u in zip(placements, users) if not p.dropped]
  if not times:
    raise ValueError('every user was dropped: no discriminator to train')
  return steps * max(times)
