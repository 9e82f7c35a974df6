"""The one exception type for failures the user can fix (bad flag, file, row, key, config).

The `z1` command line prints its message (no traceback) and exits 2; library callers catch it
like any exception. Other modules' error types (`CheckpointError`, `DataError`, ...) derive
from it, so one `except Z1Error` covers them all. Messages name the culprit: the flag, file,
row or key, and what would be accepted instead.
"""


class Z1Error(ValueError):
  """A user-fixable failure; the CLI exits 2 with `str(error)` and no traceback."""


class Z1KeyError(Z1Error, KeyError):
  """An unknown name the user gave (preset, benchmark): a Z1Error that `except KeyError` also
  catches; prints its message plainly (KeyError would quote it)."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""
