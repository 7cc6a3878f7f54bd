"""Tests for fedcomp.utils.progress and fedcomp.utils.system."""

from fedcomp.utils.progress import Progress
from fedcomp.utils.system import Stopwatch, peak_rss_mib


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_line_format_and_eta_excludes_first_round():
  clock = FakeClock()
  p = Progress(100, clock=clock)
  clock.now += 30.0  # Round 1: compile.
  first = p.line(1, {'train/loss': 2.0})
  assert first == 'round   1/100  loss 2.0000  ETA 0:49:30'  # 30 s/round x 99 left.
  clock.now += 9 * 0.5  # Rounds 2-10 at 0.5 s each.
  metrics = {
    'train/loss': 0.53124,
    'train/accuracy': 0.1,
    'eval/accuracy': 0.87106,
    'perf/examples_per_sec': 12345.4,
  }
  assert p.line(10, metrics) == (
    'round  10/100  loss 0.5312  train_acc 0.1000  eval_acc 0.8711  12,345 ex/s  ETA 0:00:45'
  )
  assert 'train_acc 0.1000' in p.line(10, {'train/accuracy': 0.1})


def test_resume_start_round():
  clock = FakeClock()
  p = Progress(10, start_round=6, clock=clock)
  clock.now += 8.0  # Rounds 7 and 8.
  assert p.line(8, {}) == 'round  8/10  ETA 0:00:08'
  clock.now += 1.0
  assert p.line(9, {}).endswith('ETA 0:00:01')
  assert p.line(10, {}).endswith('ETA 0:00:00')


def test_stopwatch_and_rss():
  clock = FakeClock()
  sw = Stopwatch(clock)
  clock.now += 2.0
  assert sw.lap() == 2.0
  clock.now += 1.0
  assert (sw.lap(), sw.elapsed) == (1.0, 3.0)
  with Stopwatch(clock) as sw:
    clock.now += 5.0
  clock.now += 1.0
  assert sw.elapsed == 5.0
  assert 1.0 < peak_rss_mib() < 1e6
