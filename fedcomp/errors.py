"""Errors that end a run with a one-line message instead of a traceback."""


class ConfigError(ValueError):
  """Bad user input, reported in one line before anything expensive starts."""


class TrainingDivergedError(RuntimeError):
  """The training loss became NaN or infinite; the last good checkpoint is kept."""
