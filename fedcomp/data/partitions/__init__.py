"""Partitions: name -> `partition(dataset, num_clients, rng, **kwargs) -> list[index array]`."""

from fedcomp.data.partitions import dirichlet, hybrid, iid, natural, quantity, shards

PARTITIONS = {
  'iid': iid.partition,
  'shards': shards.partition,
  'dirichlet': dirichlet.partition,
  'quantity': quantity.partition,
  'natural': natural.partition,
  'hovefl': hybrid.partition,
}
