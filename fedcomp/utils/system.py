"""Process statistics and a simple stopwatch."""

import resource
import sys
import time
from collections.abc import Callable


def peak_rss_mib() -> float:
  """Returns this process's peak resident set size in MiB (getrusage ru_maxrss)."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # Linux reports KiB, macOS bytes.
  return rss / (1024 * 1024) if sys.platform == 'darwin' else rss / 1024


class Stopwatch:
  """Measures elapsed wall time; `lap()` returns the time since the previous lap.

  Usable as a context manager: `with Stopwatch() as sw: ...; sw.elapsed`.
  """

  def __init__(self, clock: Callable[[], float] = time.perf_counter):
    """Starts timing.

    Args:
      clock: seconds-returning clock (injectable for tests).
    """
    self._clock = clock
    self._start = self._last = clock()
    self._stop: float | None = None

  @property
  def elapsed(self) -> float:
    """Seconds since start (frozen once the context manager exits)."""
    return (self._clock() if self._stop is None else self._stop) - self._start

  def lap(self) -> float:
    """Returns the seconds since the previous lap (or the start) and starts a new lap."""
    now = self._clock()
    lap, self._last = now - self._last, now
    return lap

  def __enter__(self) -> 'Stopwatch':
    self._start = self._last = self._clock()
    self._stop = None
    return self

  def __exit__(self, *exc) -> None:
    self._stop = self._clock()
