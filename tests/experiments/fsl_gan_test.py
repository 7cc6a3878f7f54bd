"""The fsl_gan experiment end to end on the embedded digits: outputs, the clock, per-part
averaging, placement outcomes, determinism and resume."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fsl_gan as cfg
from fedcomp.errors import ConfigError
from fedcomp.experiments import fsl_gan
from fedcomp.utils.checkpoint import Checkpointer


def config(**overrides):
  c = cfg.get_config('runlocal')
  for k, v in overrides.items():
    c[k] = v
  return c


def final_state(workdir):
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), max_to_keep=1)
  try:
    step = ckpt.latest_round()
    like = fsl_gan._Programs(config(), (8, 8, 1), 5).init_state()
    return step, ckpt.restore(step, like)[0]
  finally:
    ckpt.close()


def rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('fsl'))
  return workdir, fsl_gan.run(config(), workdir)


def test_a_run_writes_quality_samples_and_the_simulated_clock(trained):
  workdir, summary = trained
  assert summary['placement'] == [[0, 0, 1]] * 5 and summary['users_dropped'] == []
  assert np.isfinite(summary['fid']) and 0 < summary['coverage'] <= 1
  for name in ('samples_0002.png', 'summary.json', 'classifier/model.json'):
    assert os.path.exists(os.path.join(workdir, name)), name
  logged = rows(workdir)
  assert [r['round'] for r in logged] == [1, 2]
  # simulated time: per epoch, steps × the slowest user (parts × its devices' factors + 1 hop)
  devices = fsl_gan.user_devices(config())
  ms = summary['part_ms']
  slowest = max(ms[0] * d[0].time_factor + ms[1] * d[0].time_factor + ms[2] * d[1].time_factor
                + 50.0 for d in devices)  # fmt: skip
  assert summary['simulated_s_per_epoch'] == pytest.approx(
    summary['steps_per_epoch'] * slowest / 1e3
  )
  assert logged[1]['simulated_s'] == pytest.approx(2 * summary['simulated_s_per_epoch'])


def test_deterministic_and_a_stopped_run_resumes_to_the_same_end(trained, tmp_path):
  workdir, _ = trained
  again = str(tmp_path / 'again')
  fsl_gan.run(config(epochs=1), again)  # stopped after epoch 1...
  fsl_gan.run(config(), again)  # ...resumed to epoch 2
  (sa, a), (sb, b) = final_state(workdir), final_state(again)
  assert sa == sb == 2
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  timing = ('wall_s', 'simulated_s')  # each run measures its own parts' times
  for ra, rb in zip(rows(workdir), rows(again)):
    assert {k: v for k, v in ra.items() if k not in timing} == {
      k: v for k, v in rb.items() if k not in timing
    }
  # The resumed run kept its first part timings (clock.json): its clock runs on evenly.
  r1, r2 = rows(again)
  assert r2['simulated_s'] == pytest.approx(2 * r1['simulated_s'])


def test_unsplit_trains_exactly_as_split_and_shares_the_classifier(trained, tmp_path):
  """Splitting moves parts between devices, not arithmetic: the unsplit baseline's losses
  and quality equal the split run's; only its clock differs. A classifier_workdir naming
  another fsl_gan run loads that run's classifier (nothing trained or written here)."""
  workdir, summary = trained
  other = str(tmp_path / 'unsplit')
  got = fsl_gan.run(config(mode='unsplit', epochs=1, classifier_workdir=workdir), other)
  assert not os.path.exists(os.path.join(other, 'classifier'))
  assert got['placement'] == [[0, 0, 0]] * 5
  timing = ('wall_s', 'simulated_s')
  first = {k: v for k, v in rows(workdir)[0].items() if k not in timing}
  assert first == {k: v for k, v in rows(other)[0].items() if k not in timing}
  # one device, no hop: steps × the slowest user's parts on its first device
  devices = fsl_gan.user_devices(config())
  slowest = max(sum(got['part_ms']) * d[0].time_factor for d in devices)
  assert got['simulated_s_per_epoch'] == pytest.approx(got['steps_per_epoch'] * slowest / 1e3)


def test_train_examples_trains_on_a_subset(trained, tmp_path):
  workdir, summary = trained
  got = fsl_gan.run(config(train_examples=300, epochs=1, classifier_workdir=workdir),
                    str(tmp_path / 'subset'))  # fmt: skip
  # 300 examples in steps of <= 256 real rows: 2 steps, against the full run's
  assert got['steps_per_epoch'] == 2 < summary['steps_per_epoch']


def test_parts_are_averaged_across_users_by_hand():
  params = {'A': {'w': jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 8.0]])}}
  out = fsl_gan.average_parts(params, np.array([0.2, 0.3, 0.5]))
  want = 0.2 * np.array([1, 2]) + 0.3 * np.array([3, 4]) + 0.5 * np.array([5, 8])
  np.testing.assert_allclose(out['A']['w'], np.stack([want] * 3), rtol=1e-6)


def test_users_that_cannot_host_the_parts_are_dropped_and_unsplit_ignores_capacity():
  small = config()
  small.devices.capacities = (200_000, 800_000, 800_000)
  small.devices.time_factors = (1.0, 1.0, 1.0)
  sizes = (1664, 204928, 823553)
  where, _ = fsl_gan.placements(small, sizes)
  assert all(p.dropped for p in where)
  with pytest.raises(ConfigError, match='every user is dropped'):
    fsl_gan.run(small, '/tmp/never_written_fsl')
  assert not os.path.exists('/tmp/never_written_fsl/checkpoints')
  small.mode = 'unsplit'
  where, _ = fsl_gan.placements(small, sizes)
  assert [p.device_of_part for p in where] == [(0, 0, 0)] * 5


@pytest.mark.parametrize('key,value,match', [
  ('mode', 'cloud', "mode='cloud' is unknown"),
  ('placement', 'fastest', "placement='fastest' is unknown"),
  ('split', 'zipf', "split='zipf' is unknown"),
  ('users', 0, 'users=0 must be a positive integer'),
  ('adam_b1', 1.0, r'adam_b1=1.0 must be in \[0, 1\)'),
])  # fmt: skip
def test_bad_config_fails_in_one_line(key, value, match, tmp_path):
  with pytest.raises(ConfigError, match=match):
    fsl_gan.run(config(**{key: value}), str(tmp_path))
  assert not os.listdir(tmp_path)
