"""`get_config(arg)`'s argument, and loading a config file the way `--config` does."""

import importlib.util
import pathlib

import ml_collections


def parse_arg(arg: str, **spec) -> ml_collections.ConfigDict:
  """Parses `get_config`'s argument "flag1,key=value,..." against typed defaults.

  Args:
    arg: comma-separated words; a bare word sets a boolean default to True.
    **spec: name -> default value (its type converts the given string).

  Returns:
    ConfigDict with one entry per name in `spec`.
  """
  out = ml_collections.ConfigDict(spec)
  for word in filter(None, (arg or "").split(",")):
    key, _, value = word.partition("=")
    if key not in spec:
      raise ValueError(f"unknown config argument {key!r}; known: {', '.join(spec)}")
    default = spec[key]
    if not value:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value")
      out[key] = True
    elif isinstance(default, bool):
      out[key] = value.lower() in ("1", "true", "yes")
    else:
      out[key] = type(default)(value)
  return out


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` the way `--config` does, for notebooks and tests."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()
