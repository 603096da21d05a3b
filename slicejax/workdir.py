"""Keeping a workdir safe: one launch at a time, and one config per run.

Conventions:
- Files are written through `slicejax.files.atomic_write`, so a reader sees the old or the new file, never half of
  one.
- `WorkdirLock` holds `WORKDIR/.lock`, a JSON object `{"pid": int, "host": str, "token": str}`, for as long as a
  launch runs, and removes it when the launch ends, refused or not. A lock whose pid no longer runs on this host is
  stale (its launch was killed) and is taken over. Lock holders on other hosts cannot be checked, so their locks are
  never taken over.
- `check_config` ties a workdir to one resolved config (`WORKDIR/config.json`, a JSON object of nested dicts). A
  rerun with the same config resumes; a different config is refused, or, with `fresh=True`, gets its own subfolder
  `WORKDIR/run_<n>`. Configs are compared as JSON values, so tuples and lists of the same items are equal, and a key
  that a later version of slicejax added counts as equal when the run's config.json lacks it and the new config holds
  its default (`defaults`): an upgrade keeps every run resumable. A run that has trained nothing yet (no row in `results.jsonl`, nothing under `checkpoints/`, e.g. a launch that failed in its
  setup) is no finished run: a different config replaces its config.json and runs there.
"""

import contextlib
import fcntl
import json
import os
import pathlib
import socket
import uuid
from typing import Mapping

from absl import logging

from slicejax.errors import InputError
from slicejax import files

LOCK_NAME = ".lock"
CONFIG_NAME = "config.json"
RESULTS_NAME = "results.jsonl"
# The Holm families its grid plans, {family: comparisons}, written when a launch starts (`comparisons.grid_family_sizes`).
FAMILIES_NAME = "families.json"
CHECKPOINTS_NAME = "checkpoints"
RUN_PREFIX = "run_"
# How many differing keys an error message names before it only counts the rest.
_MAX_NAMED_KEYS = 8
# Paths of the locks this process holds; a lock file with our own pid is stale unless it is one of these.
_HELD = set()



# ---------------------------------------------------------------------------------------------------------------------
# One launch per workdir.
# ---------------------------------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # The process exists but belongs to another user.
  return True


def _read_lock(path: pathlib.Path):
  """Returns the lock file's {"pid", "host", "token"}, or None when it cannot be parsed."""
  try:
    holder = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None
  if not (isinstance(holder, dict) and isinstance(holder.get("pid"), int) and not isinstance(holder["pid"], bool)
          and holder["pid"] > 0 and isinstance(holder.get("host"), str)):
    return None
  return holder


@contextlib.contextmanager
def _guard(folder: pathlib.Path):
  """Serialises lock acquisition and release among the launches on this host (an flock on the folder itself)."""
  fd = os.open(folder, os.O_RDONLY)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as err:
      # Some network file systems refuse flock on a folder; the lock file alone still excludes all but a launch
      # that starts in the same instant as a stale lock is taken over.
      logging.warning("Cannot flock %s (%s); continuing without the acquisition guard.", folder, err)
    yield
  finally:
    os.close(fd)


class WorkdirLock:
  """Holds `WORKDIR/.lock` while a launch runs: `with WorkdirLock(workdir): ...`.

  Entering creates the workdir if needed and the lock file atomically (O_CREAT | O_EXCL). A lock held by a running
  process on this host, or by any process on another host, raises InputError naming the workdir and the pid. A lock
  whose process has ended (a killed launch) is taken over with a warning. Leaving removes the lock file only if it
  is still the one this object wrote.
  """

  def __init__(self, workdir):
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / LOCK_NAME
    self._token = None

  def __enter__(self) -> "WorkdirLock":
    self.workdir.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    key = str(self.path.resolve())
    with _guard(self.workdir):
      if self.path.exists():
        self._check_holder(_read_lock(self.path), host, key)
        self.path.unlink(missing_ok=True)
      token = uuid.uuid4().hex
      try:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      except FileExistsError as err:
        # Only a launch that bypassed the guard (see `_guard`) gets here.
        raise InputError(str(self.workdir), "in use by another launch that started at the same time") from err
      try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
          f.write(json.dumps({"pid": os.getpid(), "host": host, "token": token}) + "\n")
          f.flush()
          os.fsync(f.fileno())
      except BaseException:
        # A half-written lock would otherwise stay behind and be taken for a stale one by the next launch.
        self.path.unlink(missing_ok=True)
        raise
    self._token = token
    _HELD.add(key)
    logging.info("Locked %s.", self.path)
    return self

  def _check_holder(self, holder, host: str, key: str) -> None:
    """Raises InputError if the existing lock's holder may still run; returns when the lock is stale."""
    if holder is None:
      logging.warning("Taking over %s: it does not name a holder (a launch killed while writing it?).", self.path)
      return
    pid = holder["pid"]
    if holder["host"] != host:
      raise InputError(str(self.workdir), f"in use by a launch on host {holder['host']} (pid {pid}); if it no longer "
                       f"runs, delete {self.path}")
    if pid == os.getpid():
      if key in _HELD:
        raise InputError(str(self.workdir), f"already locked by this process (pid {pid})")
      logging.warning("Taking over stale lock %s: it names this process's pid %d, left by an earlier launch.",
                      self.path, pid)
      return
    if _pid_alive(pid):
      raise InputError(str(self.workdir), f"in use by a running launch (pid {pid}); wait for it to end, stop it, "
                       "or choose another --workdir")
    logging.warning("Taking over stale lock %s: its launch (pid %d) no longer runs.", self.path, pid)

  def __exit__(self, *exc_info) -> None:
    token, self._token = self._token, None
    _HELD.discard(str(self.path.resolve()))
    if not self.workdir.is_dir():
      logging.warning("%s was removed while locked.", self.workdir)
      return
    with _guard(self.workdir):
      holder = _read_lock(self.path)
      if holder is not None and holder.get("token") == token:
        self.path.unlink()
        logging.info("Unlocked %s.", self.path)
      else:
        logging.warning("Leaving %s in place: another launch took it over.", self.path)


# ---------------------------------------------------------------------------------------------------------------------
# One config per run.
# ---------------------------------------------------------------------------------------------------------------------


def flatten(tree, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}; an empty nested dict stays a leaf."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) and value:
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _differences(stored: Mapping, config: Mapping, defaults) -> list:
  """`differing_keys(stored, config)` less the keys `stored` lacks whose values in `config` are their `defaults`
  (keys added to slicejax after the run started)."""
  keys = differing_keys(stored, config)
  if defaults is None:
    return keys
  flat_stored, flat_config, flat_defaults = flatten(stored), flatten(config), flatten(defaults)
  missing = object()
  return [key for key in keys if key in flat_stored or flat_config[key] != flat_defaults.get(key, missing)]


def _same(stored, config: dict, defaults) -> bool:
  """`stored` (a config.json, or None when unreadable) describes the run of `config`."""
  return stored == config or (stored is not None and not _differences(stored, config, defaults))


def differing_keys(a: Mapping, b: Mapping) -> list:
  """Sorted dotted keys whose values differ between two nested JSON-like dicts (present in one only counts)."""
  flat_a, flat_b = flatten(a), flatten(b)
  missing = object()
  return sorted(k for k in flat_a.keys() | flat_b.keys() if flat_a.get(k, missing) != flat_b.get(k, missing))


def _describe(keys: list) -> str:
  named = ", ".join(keys[:_MAX_NAMED_KEYS])
  rest = len(keys) - _MAX_NAMED_KEYS
  return f"{named} and {rest} more" if rest > 0 else named


def _as_json_value(resolved: Mapping) -> dict:
  # What config.json will read back as: tuples become lists, keys become strings.
  return json.loads(json.dumps(resolved, sort_keys=True))


def _stored_config(path: pathlib.Path):
  """The config object in `path`, or None when it cannot be read as one."""
  try:
    stored = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None
  return stored if isinstance(stored, dict) else None


def _write_config(folder: pathlib.Path, config: dict) -> None:
  files.atomic_write(folder / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")


def _has_trained(folder: pathlib.Path) -> bool:
  """Whether the run in `folder` has a result row or a checkpoint (anything but a missing or blank results.jsonl
  and a missing or empty checkpoints/ counts)."""
  results, checkpoints = folder / RESULTS_NAME, folder / CHECKPOINTS_NAME
  if results.exists() and (not results.is_file() or results.read_bytes().strip()):
    return True
  return checkpoints.exists() and (not checkpoints.is_dir() or any(checkpoints.iterdir()))


def _replace_untrained(folder: pathlib.Path, stored: dict, config: dict) -> None:
  _write_config(folder, config)
  logging.warning("Replaced %s: it held a different config (keys differ: %s) but its run had trained nothing; the "
                  "run starts there.", folder / CONFIG_NAME, _describe(differing_keys(stored, config)))


def _run_number(path: pathlib.Path):
  suffix = path.name[len(RUN_PREFIX):]
  if path.name.startswith(RUN_PREFIX) and suffix.isdigit() and not suffix.startswith("0"):
    return int(suffix)
  return None


def check_config(workdir, resolved: Mapping, *, fresh: bool = False, defaults: Mapping | None = None) -> pathlib.Path:
  """Ties `workdir` to the resolved config and returns the folder the run writes to.

  Args:
    workdir: the launch's workdir; created if missing.
    resolved: the resolved config as a JSON-serialisable nested dict (e.g. `config.to_dict()` with tuples).
    fresh: when `workdir` holds a run of a different config that has result rows or checkpoints, run in a
      subfolder `workdir/run_<n>` instead of failing: the one that holds this config (so rerunning a `fresh` launch
      resumes it), else the first that holds a config but has trained nothing, else a new one.
    defaults: the defaults of every key, as nested dicts (`config.base()`): a stored config that lacks keys the
      resolved one holds at their defaults still holds this config.

  Returns:
    `workdir` when it has no config.json yet (which is then written), holds this config (a resume), or holds a
    different config but has trained nothing (its config.json is replaced); otherwise, with `fresh`, the `run_<n>`
    subfolder described above, a new one with the lowest free n >= 1.

  Raises:
    InputError: `workdir/config.json` holds a different config and the run there has result rows or checkpoints,
      or config.json cannot be read, and `fresh` is False; the message names the dotted keys that differ.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  config = _as_json_value(resolved)
  path = workdir / CONFIG_NAME
  if not path.exists():
    _write_config(workdir, config)
    logging.info("New run in %s.", workdir)
    return workdir
  stored = _stored_config(path)
  defaults = None if defaults is None else _as_json_value(defaults)
  if _same(stored, config, defaults):
    logging.info("Resuming the run in %s (same config).", workdir)
    return workdir
  # An unreadable config.json may not be ours; it is never replaced.
  if stored is not None and not _has_trained(workdir):
    _replace_untrained(workdir, stored, config)
    return workdir
  if not fresh:
    if stored is None:
      problem = "cannot be read as a JSON config object"
    else:
      problem = f"holds a different config (keys differ: {_describe(_differences(stored, config, defaults))})"
    raise InputError(str(path), f"{problem}; rerun with --fresh to start a new run in a subfolder")

  runs = sorted((n, p) for p in workdir.iterdir() if p.is_dir() and (n := _run_number(p)) is not None)
  stored_runs = [(folder, _stored_config(folder / CONFIG_NAME)) for _, folder in runs]
  for folder, stored in stored_runs:
    if _same(stored, config, defaults):
      logging.info("Resuming the run in %s (same config).", folder)
      return folder
  for folder, stored in stored_runs:
    if stored is not None and not _has_trained(folder):
      _replace_untrained(folder, stored, config)
      return folder
  n = 1
  while True:
    folder = workdir / f"{RUN_PREFIX}{n}"
    try:
      # mkdir is atomic: of two fresh launches, each gets its own folder.
      folder.mkdir()
    except FileExistsError:
      n += 1
      continue
    _write_config(folder, config)
    logging.info("%s holds a different config; new run in %s.", path, folder)
    return folder
