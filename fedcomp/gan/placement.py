"""Capacity-aware placement of a split discriminator's parts on each user's devices.

A user owns devices, each with a capacity (how many parameters it can host) and a time
factor (how much slower than this machine it computes). The parts (A, B, C, ... in forward
order, sized in parameters) are placed greedily in order: the devices are visited in the
chosen order and a device keeps taking the next part while its remaining capacity holds
that part's parameter count; then the next device is used. A user whose devices cannot host
every part is dropped (the notebook's "false clients").

Orders: 'given' (the devices as listed), 'random' (a permutation from the rng), 'time'
(fastest first: ascending time factor), 'capacity' (largest first); ties keep the listed
order.

References: Kortoçi et al. 2022, "Federated Split GANs" (arXiv 2207.01750) and its notebook
`dcsfgan_3parts.ipynb` (THRESHOLD = [1664, 204928, 823553]).
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from fedcomp.errors import ConfigError

ORDERS = ('given', 'random', 'time', 'capacity')


class Device(NamedTuple):
  capacity: int  # parameters it can host
  time_factor: float  # its compute time relative to this machine's


class Placement(NamedTuple):
  """Where one user's parts run.

  Attributes:
    device_of_part: (num_parts,) index into the user's devices, or None if dropped.
    order: the device visiting order used.
  """

  device_of_part: tuple[int, ...] | None
  order: tuple[int, ...]

  @property
  def dropped(self) -> bool:
    return self.device_of_part is None

  def hops(self) -> int:
    """Device-to-device transfers in one forward pass (consecutive parts on other devices)."""
    d = self.device_of_part or ()
    return sum(a != b for a, b in zip(d, d[1:]))


def device_order(
  devices: Sequence[Device], order: str, rng: np.random.Generator
) -> tuple[int, ...]:
  """The visiting order of a user's devices (see the module docstring)."""
  n = len(devices)
  if order == 'given':
    return tuple(range(n))
  if order == 'random':
    return tuple(int(i) for i in rng.permutation(n))
  if order == 'time':
    return tuple(sorted(range(n), key=lambda i: devices[i].time_factor))
  if order == 'capacity':
    return tuple(sorted(range(n), key=lambda i: -devices[i].capacity))
  raise ConfigError(f'placement order {order!r} is unknown; known: {", ".join(ORDERS)}')


def place(part_sizes: Sequence[int], devices: Sequence[Device], order: str = 'given',
          rng: np.random.Generator | None = None) -> Placement:  # fmt: skip
  """Places the parts on one user's devices.

  Args:
    part_sizes: parameters of each part, in forward order.
    devices: the user's devices.
    order: 'given', 'random', 'time' or 'capacity'.
    rng: randomness for order='random'.

  Returns:
    The Placement (device_of_part None when the user cannot host every part).
  """
  if order == 'random' and rng is None:
    raise ValueError("order='random' needs an rng")
  for d in devices:
    if d.capacity < 0 or not d.time_factor > 0:
      raise ConfigError(f'device {tuple(d)}: capacity must be >= 0 and time_factor > 0')
  visit = device_order(devices, order, rng)
  out, part = [], 0
  for i in visit:
    free = devices[i].capacity
    while part < len(part_sizes) and free >= part_sizes[part]:
      free -= part_sizes[part]
      out.append(i)
      part += 1
    if part == len(part_sizes):
      return Placement(tuple(out), visit)
  return Placement(None, visit)


def place_users(part_sizes: Sequence[int], users: Sequence[Sequence[Device]], order: str,
                seed: int = 0) -> list[Placement]:  # fmt: skip
  """One Placement per user (rng = default_rng([seed, user]) for order='random')."""
  return [
    place(part_sizes, devs, order, np.random.default_rng([seed, u])) for u, devs in enumerate(users)
  ]
