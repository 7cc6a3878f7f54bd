"""One human-readable progress line per reported round, with an ETA."""

import datetime
import time
from collections.abc import Callable, Mapping
from typing import Any


class Progress:
  """Formats lines like `round  10/100  loss 0.5312  acc 0.8711  12,345 ex/s  ETA 0:01:02`.

  Rounds are counted 1..total_rounds: `line(r, ...)` reports that round r just finished. The
  ETA uses the mean time per round since the first reported round, which excludes that first
  round's compilation; until a second round is reported it uses the time since construction.
  """

  def __init__(
    self,
    total_rounds: int,
    start_round: int = 0,
    *,
    clock: Callable[[], float] = time.perf_counter,
  ):
    """Starts the clock.

    Args:
      total_rounds: the last round of the run.
      start_round: rounds already done before this process (when resuming).
      clock: seconds-returning clock (injectable for tests).
    """
    self.total_rounds = int(total_rounds)
    self.start_round = int(start_round)
    self._clock = clock
    self._start = clock()
    self._first: tuple[int, float] | None = None

  def eta_seconds(self, round: int) -> float:
    """Returns the estimated seconds left after `round`, from the rounds timed so far."""
    now = self._clock()
    if self._first is None or round <= self._first[0]:
      per_round = (now - self._start) / max(round - self.start_round, 1)
    else:
      per_round = (now - self._first[1]) / (round - self._first[0])
    return per_round * max(self.total_rounds - round, 0)

  def line(self, round: int, metrics: Mapping[str, Any]) -> str:
    """Returns the progress line for the round that just finished.

    Args:
      round: the round just finished (1-based).
      metrics: may hold 'train/loss', 'train/accuracy', 'eval/accuracy',
        'perf/examples_per_sec'; missing ones are left out.

    Returns:
      One line, without a newline.
    """
    if self._first is None:
      self._first = (round, self._clock())
    eta = self.eta_seconds(round)
    width = len(str(self.total_rounds))
    parts = [f'round {round:>{width}}/{self.total_rounds}']
    if 'train/loss' in metrics:
      parts.append(f'loss {float(metrics["train/loss"]):.4f}')
    for key, label in (('train/accuracy', 'train_acc'), ('eval/accuracy', 'eval_acc')):
      if key in metrics:
        parts.append(f'{label} {float(metrics[key]):.4f}')
    if 'perf/examples_per_sec' in metrics:
      parts.append(f'{float(metrics["perf/examples_per_sec"]):,.0f} ex/s')
    parts.append(f'ETA {datetime.timedelta(seconds=_whole_seconds(eta))}')
    return '  '.join(parts)


def _whole_seconds(x: float) -> int:
  return int(x + 0.5)  # builtin round() is shadowed by the `round` arguments above.
