"""Bad input: the one exception type, and the one way a command ends on it.

Anything a user can get wrong (a data file, a dataset.json, a config value) raises `InputError` with a single-line
message that names the file or config key and says what is wrong with it. The commands (`launch.py`,
`python -m slicejax.report`, `.cache`, `.download`, `.convert.*`) end on it with `exit_with`: one line
`error: <where>: <what>` on stderr and exit status 2.
"""

import sys
from typing import NoReturn


class InputError(ValueError):
  """Bad user input. `str(err)` is one line: '<file or key>: <problem>'."""

  def __init__(self, where, problem: str):
    message = f"{where}: {problem}".replace("\n", " ")
    super().__init__(message)


def error_line(message) -> None:
  """Prints `error: <message>` on stderr as one line (runs of whitespace, newlines included, become one space)."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)


def exit_with(message, status: int = 2) -> NoReturn:
  """Ends the program with `error_line(message)` and exit `status` (2: bad input)."""
  error_line(message)
  sys.exit(status)
