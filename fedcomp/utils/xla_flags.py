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


# One XLA:CPU device per core (the largest power of two not above the usable cores: the
# canonical reduction needs a power-of-two device count). A round's clients then run on
# both cores of this 2-core machine at once, and results are bit-identical to one device
# (fedcomp.core.client_map). Measured (2026-12-04, examples/s): emnist_cnn 1 device
# 1,100-1,121, 2 devices 1,184-1,346; small_mlp 36-43k vs 47-66k.
HOST_DEVICES = '--xla_force_host_platform_device_count'


def host_device_count(cores: int | None = None) -> int:
  """The largest power of two <= the usable cores (at least 1)."""
  if cores is None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return 1 << (max(int(cores or 1), 1).bit_length() - 1)


def set_default_xla_flags(environ=os.environ, cores: int | None = None) -> str:
  """Adds DEFAULT_FLAGS and one host device per core to XLA_FLAGS unless the user set
  them; returns XLA_FLAGS.

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
