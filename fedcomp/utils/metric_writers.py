"""Per-round metrics to `metrics.jsonl` (durable, line by line) and TensorBoard event files.

In a multi-process run only process 0 writes (every process computes the same metrics).
"""

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax

JSONL_NAME = 'metrics.jsonl'
TB_DIR = 'tb'


def _to_float(key: str, value: Any) -> float:
  try:
    return float(value)
  except (TypeError, ValueError) as e:
    raise TypeError(f'metric {key!r} is not a scalar: {value!r}') from e


def truncate_after(workdir: str | os.PathLike, round: int) -> int:
  """Rewrites `workdir/metrics.jsonl` keeping rows with 'round' <= `round` (for resuming).

  A last line that does not parse (a write cut off by a crash) is dropped; an unparseable
  line elsewhere raises ValueError. The rewrite is atomic (temp file + rename).

  Args:
    workdir: the run directory.
    round: the last round to keep (the round of the checkpoint being resumed).

  Returns:
    The number of rows kept (0 if the file does not exist).
  """
  path = pathlib.Path(workdir) / JSONL_NAME
  if not path.exists():
    return 0
  lines = path.read_text().splitlines()
  kept = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        break
      raise ValueError(f'{path}:{i + 1} is not JSON: {line[:80]!r}') from e
    if row['round'] <= round:
      kept.append(line + '\n')
  tmp = path.with_suffix('.jsonl.tmp')
  with open(tmp, 'w') as f:
    f.writelines(kept)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return len(kept)


def read_jsonl(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """Returns the rows of `workdir/metrics.jsonl` (an empty list if it does not exist)."""
  path = pathlib.Path(workdir) / JSONL_NAME
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricWriter:
  """Writes one row of scalar metrics per round to metrics.jsonl and TensorBoard.

  Use as a context manager or call `close()`. With `resume_after=r`, rows after round r are
  first dropped from metrics.jsonl and TensorBoard is told to discard events after step r.
  A disabled writer (by default: on every process but process 0 of a multi-process run)
  touches no file and ignores `write`.
  """

  def __init__(
    self,
    workdir: str | os.PathLike,
    *,
    resume_after: int | None = None,
    tensorboard: bool = True,
    enabled: bool | None = None,
  ):
    """Opens the writers (appending to an existing metrics.jsonl).

    Args:
      workdir: the run directory (created if missing).
      resume_after: the round being resumed from, or None for a fresh run.
      tensorboard: also write TensorBoard event files under workdir/tb.
      enabled: whether this writer writes; None: only on process 0 (jax.process_index()).
    """
    self.workdir = pathlib.Path(workdir)
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._file = None
    self._tb = None
    if not self.enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    if resume_after is not None:
      truncate_after(self.workdir, resume_after)
    self._file = open(self.workdir / JSONL_NAME, 'a')  # noqa: SIM115 (closed in close())
    if tensorboard:
      import tensorboardX  # Deferred: ~0.1 s of imports.

      purge_step = None if resume_after is None else resume_after + 1
      self._tb = tensorboardX.SummaryWriter(str(self.workdir / TB_DIR), purge_step=purge_step)

  def write(self, round: int, metrics: Mapping[str, Any]) -> None:
    """Appends `{"round": round, **metrics}` to metrics.jsonl (fsync'd) and to TensorBoard.

    Args:
      round: the round number (TensorBoard step).
      metrics: name (e.g. 'train/loss') -> scalar (python, numpy or jax); stored as float.
    """
    row = {k: _to_float(k, v) for k, v in metrics.items()}
    if not self.enabled:
      return
    self._file.write(json.dumps({'round': int(round), **row}) + '\n')
    self._file.flush()
    os.fsync(self._file.fileno())
    if self._tb is not None:
      for key, value in row.items():
        self._tb.add_scalar(key, value, int(round))
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes both writers (idempotent)."""
    if self._file is not None and not self._file.closed:
      self._file.close()
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
