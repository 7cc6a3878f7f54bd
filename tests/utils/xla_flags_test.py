"""Default XLA flags."""

from fedcomp.utils.xla_flags import DEFAULT_FLAGS, set_default_xla_flags


def test_adds_defaults_and_keeps_user_flags():
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  flags = set_default_xla_flags(env)
  assert flags.startswith('--xla_force_host_platform_device_count=8 ')
  assert all(f in flags for f in DEFAULT_FLAGS)
  assert set_default_xla_flags(env) == flags  # idempotent


def test_two_host_devices_per_core_as_a_power_of_two_up_to_eight():
  for cores, want in ((1, 2), (2, 4), (3, 4), (4, 8), (6, 8), (64, 8)):
    flags = set_default_xla_flags({}, cores=cores).split()
    assert f'--xla_force_host_platform_device_count={want}' in flags, (cores, flags)
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}  # the user's count stays
  assert '_count=1 ' in set_default_xla_flags(env, cores=8)
  assert '_count=8' not in env['XLA_FLAGS']


def test_user_choice_wins():
  name = DEFAULT_FLAGS[0].split('=')[0]
  env = {'XLA_FLAGS': f'{name}=true'}
  flags = set_default_xla_flags(env).split()
  assert flags[0] == f'{name}=true' and f'{name}=false' not in flags
  assert flags[1 : len(DEFAULT_FLAGS)] == list(DEFAULT_FLAGS[1:])


def test_tests_run_with_the_defaults():
  import os

  assert all(f in os.environ['XLA_FLAGS'] for f in DEFAULT_FLAGS)
