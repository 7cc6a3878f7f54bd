"""A run's working directory: config guard, resume, metrics, checkpoints and summary.

    rd = RunDir(workdir, config_dict, resumable=('total_rounds',))  # refuses another config
    ...                                   # load data, build: data-dependent checks
    rd.record_config()                    # config.json, atomically, once they passed
    start = rd.latest_round() or 0
    state = rd.restore(start, like=state) if start else state
    with rd.metrics(resume_after=start) as writer:
      ... writer.write(r, metrics); rd.save(r, state) ...
    rd.write_json('summary.json', final)

Every JSON file is written to a temporary name and renamed, so a kill at any moment
leaves either the old or the new file, never a truncated one.

Multi-host (fedcomp.core.multihost): every process opens the same RunDir on a directory
they all see; only process 0 writes config.json, JSON files, metrics and TensorBoard
events, while checkpoints are saved and restored by every process (orbax's multi-host
protocol, fedcomp.utils.checkpoint).
"""

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from fedcomp.core import multihost
from fedcomp.errors import ConfigError
from fedcomp.utils.checkpoint import Checkpointer
from fedcomp.utils.metric_writers import MetricWriter, read_jsonl

CONFIG = 'config.json'


def _json_ready(obj: Any) -> Any:
  return json.loads(json.dumps(obj, default=str))


def write_json_atomic(path: str, obj: Any, **kwargs) -> None:
  """Writes JSON to path + '.tmp', fsyncs it and renames it over `path`."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, **kwargs)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def flatten(config: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{dotted key: value} of the leaves of a nested dict."""
  out = {}
  for k, v in config.items():
    if isinstance(v, Mapping) and v:
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _drop(config: dict, dotted: str) -> None:
  *path, last = dotted.split('.')
  for part in path:
    config = config.get(part, {})
    if not isinstance(config, dict):
      return
  config.pop(last, None)


class RunDir:
  """One run's working directory.

  Args:
    workdir: the directory (created).
    config: the run's config as a dict.
    resumable: dotted config keys whose value may change between a run and its
      resumption (e.g. 'total_rounds', 'optimizers.grid').
    max_to_keep: checkpoints kept.

  Raises:
    ConfigError: the workdir holds a run with a different config.
  """

  def __init__(
    self,
    workdir: str,
    config: Mapping[str, Any],
    resumable: Sequence[str] = (),
    max_to_keep: int = 2,
  ):
    self.workdir = os.path.abspath(workdir)
    os.makedirs(self.workdir, exist_ok=True)
    self.config = _json_ready(dict(config))
    self.resumable = tuple(resumable)
    self.max_to_keep = max_to_keep
    self._ckpt = None
    self.primary = multihost.is_primary()  # only process 0 writes files
    self._check_config()

  @classmethod
  def existing(cls, workdir: str) -> 'RunDir':
    """A finished or running run's directory, opened to read it (its own config).

    For chaining runs through workdirs: a teacher for distillation, a model to prune or
    export.
    """
    path = os.path.join(os.path.abspath(workdir), CONFIG)
    if not os.path.exists(path):
      raise ConfigError(f'{workdir} holds no run (no {CONFIG})')
    with open(path) as f:
      return cls(workdir, json.load(f))

  def path(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  def _comparable(self, config: dict) -> dict:
    config = json.loads(json.dumps(config))
    for key in self.resumable:
      _drop(config, key)
    return config

  def _check_config(self) -> None:
    """A workdir holds one run: refuse to resume it with a different config."""
    path = self.path(CONFIG)
    if not os.path.exists(path):
      return
    try:
      with open(path) as f:
        old = json.load(f)
    except json.JSONDecodeError as e:
      raise ConfigError(f'{path} is not valid JSON ({e}); use a new --workdir') from None
    a, b = flatten(self._comparable(old)), flatten(self._comparable(self.config))
    for key in sorted(set(a) | set(b)):
      if a.get(key) != b.get(key):
        raise ConfigError(
          f'config.{key}={b.get(key)!r} differs from {a.get(key)!r} of the run in '
          f'{self.workdir}; use a new --workdir'
        )

  def record_config(self) -> None:
    """Writes config.json (atomically; only when absent or changed in resumable keys).

    Process 0 only (a no-op on the other processes of a multi-process run).
    """
    if not self.primary:
      return
    path = self.path(CONFIG)
    if os.path.exists(path):
      with open(path) as f:
        if json.load(f) == self.config:
          return
    write_json_atomic(path, self.config, indent=2, sort_keys=True)

  # ---------------------------------------------------------------- checkpoints
  @property
  def checkpoints(self) -> Checkpointer:
    if self._ckpt is None:
      self._ckpt = Checkpointer(self.path('checkpoints'), max_to_keep=self.max_to_keep)
    return self._ckpt

  def latest_round(self) -> int | None:
    """The newest checkpointed round, or None."""
    return self.checkpoints.latest_round()

  def restore(self, round_: int, like: Any) -> Any:
    """The state saved at `round_`, in the structure and shardings of `like`."""
    return self.checkpoints.restore(round_, like)[0]

  def save(self, round_: int, state: Any) -> None:
    """Checkpoints `state` (synchronously) as round `round_` (every process calls it)."""
    self.checkpoints.save(round_, state, {'round': round_})

  # ---------------------------------------------------------------- outputs
  def metrics(self, resume_after: int | None = None) -> MetricWriter:
    """A writer of metrics.jsonl and TensorBoard events; rows after `resume_after` dropped.

    On processes other than 0 the writer writes nothing.
    """
    return MetricWriter(self.workdir, resume_after=resume_after, enabled=self.primary)

  def logged(self) -> list[dict]:
    """The rows of metrics.jsonl."""
    return read_jsonl(self.workdir)

  def last_logged(self) -> dict[str, float]:
    """The last row of metrics.jsonl without timing fields ({} if none)."""
    rows = self.logged()
    return {k: v for k, v in (rows[-1] if rows else {}).items() if not k.startswith('perf/')}

  def write_json(self, name: str, obj: Any, **kwargs) -> None:
    """Writes `name` in the workdir atomically (process 0 only).

    Args:
      name: the file name.
      obj: the JSON value.
      **kwargs: json.dump options (indent, sort_keys).
    """
    if self.primary:
      write_json_atomic(self.path(name), obj, **kwargs)

  def close(self) -> None:
    if self._ckpt is not None:
      self._ckpt.close()
      self._ckpt = None
