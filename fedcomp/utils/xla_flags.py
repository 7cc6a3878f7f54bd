"""XLA flags fedcomp sets by default, before JAX's backend starts."""

import os
import platform

# XLA:CPU's concurrency-optimised scheduler keeps every unrolled local step's
# temporaries live (25 MB per step of the EMNIST CNN at batch 32): a round of 10
# clients x 15 unrolled steps peaked at 5.3 GB RSS with it and 1.55 GB without,
# at the same speed (1,335 vs 1,297 examples/s, within noise).
#
# XLA:CPU contracts a multiply and an add into one FMA whenever its fusion puts them in the
# same kernel, and its fusion (and loop-invariant hoisting) follows the whole program: the
# same client code then rounds differently on 1 device (no SPMD partitioning) than on 2, 4
# or 8, in the last bit, and training amplifies that (a BatchNorm MLP's updates differed
# after one round). Capping XLA's own code generation at AVX (no FMA instructions) makes
# the rounding independent of fusion decisions; the matmul and convolution kernels are
# Eigen's and keep AVX2/FMA (2048^2 matmul: the same GFLOP/s). Measured side by side on
# this 2-core CPU: no throughput difference beyond noise (emnist_cnn 600 vs 603 examples/s
# median of 6, small_mlp 18.3k vs 20.1k).
# (x86 only: the flag names x86 instruction sets.)
NO_FMA = '--xla_cpu_max_isa=AVX'
DEFAULT_FLAGS = ('--xla_cpu_enable_concurrency_optimized_scheduler=false',) + (
  (NO_FMA,) if platform.machine().lower() in ('x86_64', 'amd64') else ()
)


# Two XLA:CPU host devices per core, as a power of two and at most 8 (the canonical
# reduction's default width: device counts that divide it give bit-identical results, see
# fedcomp.core.client_map). A round's clients then run on every core at once, and a second
# device per core fills the gaps between one device's small ops. Measured on this 2-core
# machine (2026-12-04, examples/s, runs alternated): small_mlp 1 device 54-55k, 2 devices
# 53-62k, 4 devices 62-78k, 8 devices 71k; emnist_cnn 1 device 1,217-1,253, 2 devices
# 1,343-1,428, 4 devices 1,333.
HOST_DEVICES = '--xla_force_host_platform_device_count'
MAX_HOST_DEVICES = 8


def host_device_count(cores: int | None = None) -> int:
  """The largest power of two <= 2 x the usable cores, at most MAX_HOST_DEVICES."""
  if cores is None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return min(1 << (2 * max(int(cores or 1), 1)).bit_length() - 1, MAX_HOST_DEVICES)


def set_default_xla_flags(environ=os.environ, cores: int | None = None) -> str:
  """Adds DEFAULT_FLAGS and the host device count (host_device_count) to XLA_FLAGS
  unless the user set them; returns XLA_FLAGS.

  Call before the first JAX operation (the backend reads XLA_FLAGS once).

  Args:
    environ: the environment whose XLA_FLAGS is read and set.
    cores: usable CPU cores (default: this process's affinity).

  Returns:
    The new XLA_FLAGS.
  """
  flags = environ.get('XLA_FLAGS', '')
  for flag in (*DEFAULT_FLAGS, f'{HOST_DEVICES}={host_device_count(cores)}'):
    if flag.split('=')[0] not in flags:
      flags = f'{flags} {flag}'.strip()
  environ['XLA_FLAGS'] = flags
  return flags


def fma_contraction_is_off(environ=os.environ) -> bool:
  """Whether XLA_FLAGS caps XLA:CPU at an ISA without FMA (or the machine is not x86)."""
  if NO_FMA not in DEFAULT_FLAGS:
    return True
  return NO_FMA.split('=')[0] in environ.get('XLA_FLAGS', '')
