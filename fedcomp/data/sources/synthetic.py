"""Synthetic(alpha, beta) federated logistic-regression data of FedProx.

References: T. Li, A. K. Sahu, M. Zaheer, M. Sanjabi, A. Talwalkar, V. Smith, "Federated
Optimization in Heterogeneous Networks", MLSys 2020 (arXiv 1812.06127), Section 5.1 and
its generator data/synthetic_*/generate_synthetic.py.
"""

import numpy as np

from fedcomp.data._checks import check_float, check_int
from fedcomp.data.dataset import Dataset
from fedcomp.registry import ConfigError

TRAIN_FRACTION = 0.9  # per device, as in the generator


def device_sizes(
  rng: np.random.Generator, num_devices: int, min_size: int, max_total: int | None
) -> np.ndarray:
  """Draws device sizes int(lognormal(4, 2)) + min_size, scaled down to fit max_total.

  If the total exceeds `max_total`, the lognormal parts (not the min_size floors) are
  multiplied by (max_total - num_devices * min_size) / sum(lognormal parts) and floored,
  which keeps the size ranking and skew while bounding the total.

  Args:
    rng: randomness.
    num_devices: number of devices.
    min_size: examples every device gets on top of its lognormal draw.
    max_total: cap on the total number of examples, or None for no cap.

  Returns:
    (num_devices,) int64 sizes.
  """
  extra = rng.lognormal(4, 2, num_devices).astype(np.int64)
  if max_total is not None and extra.sum() + num_devices * min_size > max_total:
    budget = max_total - num_devices * min_size
    extra = np.floor(extra * (budget / extra.sum())).astype(np.int64)
  return extra + min_size


def load(
  *,
  seed: int,
  alpha: float = 1.0,
  beta: float = 1.0,
  num_devices: int = 30,
  dim: int = 60,
  num_classes: int = 10,
  iid: bool = False,
  min_size: int = 50,
  max_total: int | None = 20_000,
) -> Dataset:
  """Generates Synthetic(alpha, beta).

  For device k (std-devs as in the generator's np.random.normal calls):
  u_k ~ N(0, alpha^2), B_k ~ N(0, beta^2), W_k ~ N(u_k, 1) of shape (dim, num_classes),
  b_k ~ N(u_k, 1), v_k ~ N(B_k, 1) per entry, x ~ N(v_k, Sigma) with diagonal
  Sigma_jj = j^-1.2 (j = 1..dim), y = argmax(softmax(x W_k + b_k)). With iid=True, as in
  the generator, one W, b ~ N(0, 1) is shared and v_k = B_k * 1 (the paper's
  Synthetic-IID uses alpha = beta = 0). Each device's examples are split 90/10 into
  train (with groups = k) and test; the test parts form the global test set.

  Args:
    seed: run seed.
    alpha: how much the local models differ.
    beta: how much the local inputs differ.
    num_devices: number of devices (natural clients).
    dim: input dimension.
    num_classes: number of classes.
    iid: share one model and use v_k = B_k * 1.
    min_size: added to each device's int(lognormal(4, 2)) size.
    max_total: cap on the total size (see `device_sizes`); None for the generator's uncapped
      sizes (heavy-tailed: a device can get 10^5 examples).

  Returns:
    Dataset with x (N, dim) float32 and groups (N,) int32.
  """
  alpha = check_float(alpha, 'data.alpha', min_value=0)
  beta = check_float(beta, 'data.beta', min_value=0)
  num_devices = check_int(num_devices, 'data.num_devices', min_value=1)
  dim = check_int(dim, 'data.dim', min_value=1)
  num_classes = check_int(num_classes, 'data.num_classes', min_value=2)
  min_size = check_int(min_size, 'data.min_size', min_value=2)
  if max_total is not None:
    max_total = check_int(max_total, 'data.max_total', min_value=1)
    if max_total < num_devices * min_size:
      raise ConfigError(
        f'config.data.max_total={max_total} is below num_devices * min_size = '
        f'{num_devices * min_size}'
      )
  rng = np.random.default_rng(seed)
  sizes = device_sizes(rng, num_devices, min_size, max_total)
  u = rng.normal(0, alpha, num_devices)
  b_mean = rng.normal(0, beta, num_devices)
  if iid:
    v = np.repeat(b_mean[:, None], dim, axis=1)
    w = np.broadcast_to(rng.normal(0, 1, (dim, num_classes)), (num_devices, dim, num_classes))
    b = np.broadcast_to(rng.normal(0, 1, num_classes), (num_devices, num_classes))
  else:
    v = rng.normal(b_mean[:, None], 1, (num_devices, dim))
    w = rng.normal(u[:, None, None], 1, (num_devices, dim, num_classes))
    b = rng.normal(u[:, None], 1, (num_devices, num_classes))
  device = np.repeat(np.arange(num_devices), sizes)
  std = np.arange(1, dim + 1, dtype=np.float64) ** -0.6  # sqrt(j^-1.2)
  x = v[device] + rng.standard_normal((len(device), dim)) * std
  starts = np.concatenate([[0], np.cumsum(sizes)])
  y = np.empty(len(device), np.int32)
  for k in range(num_devices):  # argmax(softmax(z)) = argmax(z)
    rows = slice(starts[k], starts[k + 1])
    y[rows] = np.argmax(x[rows] @ w[k] + b[k], axis=1)
  rank = np.arange(len(device)) - starts[device]
  is_train = rank < (TRAIN_FRACTION * sizes).astype(np.int64)[device]
  x = x.astype(np.float32)
  return Dataset.from_arrays(
    x[is_train],
    y[is_train],
    x[~is_train],
    y[~is_train],
    num_classes=num_classes,
    groups=device[is_train].astype(np.int32),
  )
