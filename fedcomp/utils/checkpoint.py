"""Orbax checkpoints of a run's state, keyed by round, for crash-safe resume.

Saves are synchronous: the round engine donates the state's buffers to the
next round, so a save must have copied them before the next round starts, and
a `kill -9` right after `save` returns leaves a complete checkpoint. Orbax
writes into a temporary directory and renames it when complete; partial
temporary directories left by a killed run are removed when the manager opens.

Multi-host: every process opens the manager and calls `save` and `restore` (orbax
synchronises them; each array shard is written once, by the process that holds it, and
JSON metadata by process 0), on a directory every process sees (a shared file system or
a bucket). The newest round is process 0's view, broadcast, so that all processes resume
from the same checkpoint.
"""

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


class Checkpointer:
  """Saves and restores {state pytree, JSON metadata} by round.

  Args:
    directory: where checkpoints live (made absolute).
    max_to_keep: how many recent checkpoints to keep.
  """

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,
      ),
    )

  def latest_round(self) -> int | None:
    """The newest saved round, or None (process 0's answer, on every process)."""
    step = self._manager.latest_step()
    if jax.process_count() > 1:  # a collective: every process asks at the same point
      step = -1 if step is None else step
      step = int(multihost_utils.broadcast_one_to_all(np.int32(step)))
      step = None if step < 0 else step
    return step

  def save(self, round_: int, state: Any, meta: dict) -> None:
    """Writes `state` (a pytree of arrays) and `meta` (JSON) for `round_`."""
    self._manager.save(
      round_,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=True,
    )
    self._manager.wait_until_finished()

  def restore(self, round_: int, like: Any) -> tuple[Any, dict]:
    """Reads the checkpoint of `round_` into the structure and shardings of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = self._manager.restore(
      round_,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
      ),
    )
    return out.state, dict(out.meta)

  def close(self) -> None:
    self._manager.close()
