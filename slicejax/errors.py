"""The one exception type for bad input.

Anything a user can get wrong (a data file, a dataset.json, a config value) raises `InputError` with a single-line
message that names the file or config key and says what is wrong with it. `launch.py` turns it into exit status 2.
"""


class InputError(ValueError):
  """Bad user input. `str(err)` is one line: '<file or key>: <problem>'."""

  def __init__(self, where, problem: str):
    message = f"{where}: {problem}".replace("\n", " ")
    super().__init__(message)
