"""Logging set-up shared by the launchers."""

import logging as py_logging

from absl import logging

# Libraries that narrate every checkpoint write at INFO.
QUIET = ('orbax', 'tensorstore', 'etils')


class QuietLibraries(py_logging.Filter):
  """Drops INFO records of the QUIET libraries (warnings and errors pass)."""

  def filter(self, record):
    return record.levelno >= 30 or not any(f'/{lib}/' in record.pathname for lib in QUIET)


def quiet_libraries() -> None:
  """Installs QuietLibraries on absl's handler."""
  logging.get_absl_handler().addFilter(QuietLibraries())
