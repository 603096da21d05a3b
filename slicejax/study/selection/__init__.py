"""Slice selection strategies inside one volume; each module here is one strategy.

Every strategy module exposes the same interface, and a config names the module (`selection: "fixed"`):

    NEEDS_EMBEDDINGS: bool
    def select(num_slices, rho, rng, *, embeddings=None, options=None) -> np.ndarray
        # sorted int64 [rho] distinct indices in [0, num_slices)

`num_slices` counts the candidate slices of the volume (the whole extent, or a region-of-interest range that the
caller maps back). `embeddings` is `[num_slices, F]` for strategies that need them; `options` is the experiment
config's block for the strategy.
"""

import importlib

from slicejax.errors import InputError


def get(name: str):
  """Returns the strategy module called `name` (`slicejax.study.selection.<name>`)."""
  if not isinstance(name, str) or not name.isidentifier():
    raise InputError("selection", f"{name!r} is not a selection strategy name")
  try:
    return importlib.import_module(f"slicejax.study.selection.{name}")
  except ModuleNotFoundError as err:
    if err.name != f"slicejax.study.selection.{name}":
      raise
    raise InputError("selection", f"unknown selection strategy {name!r} (a module slicejax/study/selection/{name}.py)")


def check_rho(num_slices: int, rho: int) -> None:
  """Raises InputError unless 1 <= rho <= num_slices."""
  if not 1 <= rho <= num_slices:
    raise InputError("rho", f"cannot pick {rho} slices from a volume of {num_slices} candidate slices")
