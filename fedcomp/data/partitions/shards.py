"""Label-sorted shards (pathological non-IID).

References: B. McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017 (200 shards of 300, 2 per client); Y. Zhao et al.,
"Federated Learning with Non-IID Data", arXiv 1806.00582 (1-class and 2-class non-IID).
"""

import numpy as np

from fedcomp.data._checks import check_int
from fedcomp.data.dataset import Dataset
from fedcomp.data.partitions._util import class_sorted, sizes_from_weights, split_by_client
from fedcomp.registry import ConfigError


def make_distinct(assign: np.ndarray, shard_label: np.ndarray, rng: np.random.Generator):
  """Swaps shards between clients until no client holds two shards of one label, if it can.

  Each swap moves a duplicated shard of client c to a client d that lacks its label, taking
  back one of d's shards whose label c lacks, so the number of duplicates falls by >= 1;
  it stops when no such swap exists (greedy, so a fix needing longer swap chains is missed).

  Args:
    assign: (num_clients, k) shard ids of each client.
    shard_label: (num_shards,) label of each shard.
    rng: randomness for the order of fixes and the swap partner.

  Returns:
    The new (num_clients, k) assignment.
  """
  assign = assign.copy()
  lab = shard_label[assign]
  below = np.tri(assign.shape[1], k=-1, dtype=bool)  # [j, j'] = j' < j
  while True:
    dup = ((lab[:, :, None] == lab[:, None, :]) & below).any(axis=2)  # repeats an earlier one
    fixed = False
    for c, j in rng.permutation(np.argwhere(dup)):
      bad = lab[c, j]
      if (lab[c] == bad).sum() < 2:
        continue
      is_bad = lab == bad
      ok = ~np.isin(lab, lab[c]) & (is_bad.sum(axis=1, keepdims=True) - is_bad == 0)
      ok[c] = False
      options = np.argwhere(ok)
      if len(options):
        d, j2 = options[rng.integers(len(options))]
        assign[[c, d], [j, j2]] = assign[[d, c], [j2, j]]
        lab[[c, d], [j, j2]] = lab[[d, c], [j2, j]]
        fixed = True
    if not fixed:
      return assign


def partition(
  dataset: Dataset,
  num_clients: int,
  rng: np.random.Generator,
  *,
  classes_per_client: int = 2,
  equal_size: bool = False,
) -> list[np.ndarray]:
  """Deals k = classes_per_client label-sorted shards to each client.

  1. Sort the train set by label (random order within a label).
  2. Cut it into S = num_clients * k contiguous shards:
     - equal_size=False (default): class-pure shards. Class c gets s_c shards, s_c = 1 +
       the largest-remainder share of S - C proportional to its size n_c (so s_c = S / C on
       balanced classes when C divides S), and is cut into s_c near-equal pieces. Needs
       S >= C (the number of non-empty classes); with fewer shards it falls back to
       equal_size=True.
     - equal_size=True: McMahan's cut of the sorted set into S pieces of equal size
       (differing by <= 1); on unbalanced classes a shard can straddle labels.
     A shard's label is its majority label.
  3. Deal the shards at random, k per client, then swap shards between clients (see
     `make_distinct`) so each client's k shards have k distinct labels where possible.
  So with 10 clients on 10 classes, k=1 gives each client exactly one class (Zhao's 1-class
  non-IID; client sizes = class sizes) and k=2 gives 20 shards, two per class, and two
  distinct classes per client (Zhao's 2-class non-IID). On balanced classes with C | S both
  cuts coincide.

  Args:
    dataset: the data.
    num_clients: number of clients.
    rng: randomness.
    classes_per_client: shards (and, where possible, distinct labels) per client.
    equal_size: cut equal-size shards instead of class-pure ones.

  Returns:
    num_clients int64 index arrays into dataset.train_x.
  """
  k = check_int(classes_per_client, 'partition.classes_per_client', min_value=1)
  y = dataset.train_y
  n, num_classes, num_shards = len(y), dataset.num_classes, num_clients * k
  if num_shards > n:
    raise ConfigError(
      f'config.partition.classes_per_client={k}: num_clients * classes_per_client = '
      f'{num_shards} shards exceed the {n} train examples'
    )
  order = class_sorted(y, rng)
  sorted_y = y[order]
  per_class = np.bincount(y, minlength=num_classes)
  present = per_class > 0
  if equal_size or num_shards < present.sum():
    shard_of = np.arange(n) * num_shards // n
  else:
    shards_per_class = np.zeros(num_classes, np.int64)
    shards_per_class[present] = sizes_from_weights(
      per_class[present].astype(np.float64), num_shards
    )
    first_shard = np.cumsum(shards_per_class) - shards_per_class
    first_row = np.cumsum(per_class) - per_class
    rank = np.arange(n) - first_row[sorted_y]
    shard_of = first_shard[sorted_y] + rank * shards_per_class[sorted_y] // per_class[sorted_y]
  hist = np.bincount(shard_of * num_classes + sorted_y, minlength=num_shards * num_classes)
  shard_label = hist.reshape(num_shards, num_classes).argmax(axis=1)
  assign = make_distinct(rng.permutation(num_shards).reshape(num_clients, k), shard_label, rng)
  client_of_shard = np.empty(num_shards, np.int64)
  client_of_shard[assign.ravel()] = np.repeat(np.arange(num_clients), k)
  return split_by_client(client_of_shard[shard_of], order, num_clients)
