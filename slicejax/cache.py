"""The cache is the user's: list what it holds and prune it.

    python -m slicejax.cache                                   # list: kind, dataset, entries, size, age
    python -m slicejax.cache --prune --older_than_days=30      # remove entries unused for 30 days
    python -m slicejax.cache --prune --dataset=Task04          # remove the entries of datasets matching "Task04"
    python -m slicejax.cache --prune --kind=jax                # remove compiled programs

The folder is `$SLICEJAX_CACHE`, else the user cache (`slicejax.data.cache_entries.default_cache_dir`), or `--dir`.
It holds:
  * `volumes/`: preprocessed volumes, one `.npz` per case and settings, recording the dataset folder they came from
    (entries written before that record show the dataset as "?");
  * `encoder/`: trained UAL slice encoders and their embeddings, one folder per dataset pool and encoder config
    (their manifest names the cases);
  * `phantoms/`: generated phantom datasets;
  * `jax/`: JAX's persistent compilation cache.
Every entry is keyed by its content and settings, so a pruned entry is simply rebuilt when a run needs it again. An
entry's age is the time since it was last written or read (its modification or access time, the later).
"""

import dataclasses
import json
import os
import pathlib
import shutil
import sys
import time

from absl import app
from absl import flags
import numpy as np

from slicejax import console
from slicejax.data import cache_entries
from slicejax.errors import exit_with
from slicejax.errors import InputError

KINDS = ("volumes", "encoder", "phantoms", "jax")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One cache entry: its `kind`, `path` (a file or a folder), `dataset` (where it came from, or "?"), `bytes` and
  `age_days`."""
  kind: str
  path: pathlib.Path
  dataset: str
  bytes: int
  age_days: float


def _size(path: pathlib.Path) -> int:
  if path.is_file():
    return path.stat().st_size
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _age_days(path: pathlib.Path, now: float) -> float:
  paths = [path] + (list(path.rglob("*")) if path.is_dir() else [])
  last = max(max(p.stat().st_mtime, p.stat().st_atime) for p in paths)
  return max(0.0, (now - last) / 86400)


def _dataset(kind: str, path: pathlib.Path) -> str:
  if kind == "volumes":
    stat = path.stat()
    try:
      with np.load(path) as entry:
        return str(entry["dataset"]) if "dataset" in entry.files else "?"
    except (OSError, ValueError, KeyError):
      return "?"
    finally:  # listing the cache is no use of an entry: its age stays
      os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  if kind == "encoder":
    try:
      cases = json.loads((path / "manifest.json").read_text())["case_ids"]
      return f"{len(cases)} cases from {cases[0]}" if cases else "?"
    except (OSError, ValueError, KeyError, IndexError):
      return "?"
  if kind == "phantoms":
    return path.name
  return "compiled programs"


def entries(folder, now: float | None = None) -> list[Entry]:
  """Every entry of the cache `folder`, by kind then path."""
  folder, now = pathlib.Path(folder), time.time() if now is None else now
  out = []
  for kind in KINDS:
    parent = folder / kind
    if not parent.is_dir():
      continue
    children = sorted(parent.glob("*.npz")) if kind == "volumes" else sorted(parent.iterdir())
    for path in children:
      if path.name.startswith("."):
        continue
      out.append(Entry(kind=kind, path=path, dataset=_dataset(kind, path), bytes=_size(path),
                       age_days=_age_days(path, now)))
  return out


def select(found, *, older_than_days: float | None = None, dataset: str = "", kind: str = "") -> list[Entry]:
  """The entries that every given condition matches: unused for more than `older_than_days`, a dataset containing
  the text `dataset`, of `kind`."""
  return [e for e in found if (older_than_days is None or e.age_days > older_than_days)
          and (not dataset or dataset in e.dataset) and (not kind or e.kind == kind)]


def table(found) -> list[str]:
  """Lines of the listing: one per (kind, dataset) with entries, size and the youngest and oldest age."""
  groups = {}
  for e in found:
    groups.setdefault((e.kind, e.dataset), []).append(e)
  lines = [f"{'kind':<9} {'entries':>7} {'size':>9} {'age (days)':>12}  dataset"]
  for (kind, dataset), members in groups.items():
    ages = [e.age_days for e in members]
    lines.append(f"{kind:<9} {len(members):>7} {_human(sum(e.bytes for e in members)):>9} "
                 f"{min(ages):>5.1f}-{max(ages):<6.1f}  {dataset}")
  lines.append(f"total: {len(found)} entries, {_human(sum(e.bytes for e in found))}")
  return lines


def _human(n: int) -> str:
  for unit in ("B", "KB", "MB", "GB"):
    if n < 1024 or unit == "GB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} GB"


def prune(chosen) -> int:
  """Removes the entries `chosen`; returns the bytes freed."""
  freed = 0
  for e in chosen:
    if e.path.is_dir():
      shutil.rmtree(e.path, ignore_errors=True)
    else:
      e.path.unlink(missing_ok=True)
    freed += e.bytes
  return freed


_DIR = flags.DEFINE_string("dir", None, "The cache folder; default $SLICEJAX_CACHE or the user cache.")
_PRUNE = flags.DEFINE_bool("prune", False, "Remove the entries the conditions select (at least one is needed).")
_OLDER = flags.DEFINE_float("older_than_days", None, "Entries unused for more than this many days.")
_DATASET = flags.DEFINE_string("dataset", "", "Entries whose dataset contains this text.")
_KIND = flags.DEFINE_enum("kind", "", ("",) + KINDS, "Entries of this kind.")


def main(argv):
  del argv
  console.set_output(sys.stdout)
  folder = pathlib.Path(_DIR.value).expanduser() if _DIR.value else cache_entries.default_cache_dir()
  try:
    if not folder.is_dir():
      raise InputError(str(folder), "no cache folder here (nothing cached yet, or a wrong --dir)")
    if _OLDER.value is not None and _OLDER.value < 0:
      raise InputError("--older_than_days", f"must be >= 0, got {_OLDER.value}")
    found = entries(folder)
    chosen = select(found, older_than_days=_OLDER.value, dataset=_DATASET.value, kind=_KIND.value)
    if not _PRUNE.value:
      for line in table(chosen):
        console.say(line)
      return
    if _OLDER.value is None and not _DATASET.value and not _KIND.value:
      raise InputError("--prune", "say what to remove: --older_than_days, --dataset and/or --kind")
  except InputError as err:
    exit_with(err)
  console.say(f"removed {len(chosen)} of {len(found)} entries, {_human(prune(chosen))} freed from {folder}")


if __name__ == "__main__":
  app.run(main)
