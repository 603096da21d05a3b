"""The cache of preprocessed volumes: where the cache folder is, and the content-keyed entries in its `volumes/`.

Each preprocessed case is stored as one uncompressed `.npz` file in `CACHE/volumes/`: the float16 image, the label
in the smallest unsigned type that holds its values, the sorted label values and the entry's key (and the label on
the original grid when resampled). The key (and, shortened, the file name) hashes every NIfTI file's bytes
(SHA-256), the preprocessing settings and the format version, so work folders, datasets and processes can share one
folder (`default_cache_dir()`). Each entry is written atomically: it is complete or absent, and concurrent writers of
an entry write the same bytes twice. Because the `.npz` members are stored, not compressed, each is a plain array at
an offset of the file, which `read_entry(mapped=True)` leaves there (`mapped.MappedArray`s, read a part at a time
when used) for datasets larger than memory. A load that is refused takes back the entries it wrote
(`taken_back_if_refused`).
"""

import contextlib
import hashlib
import json
import os
import pathlib
import zipfile

from absl import logging
import numpy as np

from slicejax.data import mapped as mapped_lib
from slicejax.errors import InputError
from slicejax import files

# Bumped whenever the cached arrays or their meaning change, so old entries miss.
_CACHE_FORMAT = 4  # 4: resampled ignore-label files keep their unannotated voxels ignored


def default_cache_dir() -> pathlib.Path:
  """The cache folder shared by every run of this user: `$SLICEJAX_CACHE` if set, else `$XDG_CACHE_HOME/slicejax`,
  else `~/.cache/slicejax` (not created here). Entries are keyed by content (see the module docstring)."""
  if os.environ.get("SLICEJAX_CACHE"):
    return pathlib.Path(os.environ["SLICEJAX_CACHE"]).expanduser()
  xdg = os.environ.get("XDG_CACHE_HOME", "")
  # The XDG base directory spec says to ignore a relative path.
  base = pathlib.Path(xdg) if os.path.isabs(xdg) else pathlib.Path.home() / ".cache"
  return base / "slicejax"


def smallest_int(lo: int, hi: int):
  """The smallest of uint8, uint16 and int32 that holds every integer in [lo, hi]."""
  return next(t for t in (np.uint8, np.uint16, np.int32) if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)


def cache_key(image_raws, label_raw: bytes, settings: dict) -> str:
  """The key of a case's entry: its image files' bytes `image_raws`, its label file's `label_raw`, the
  preprocessing `settings` and the format version."""
  parts = {"image": [hashlib.sha256(raw).hexdigest() for raw in image_raws],
           "label": hashlib.sha256(label_raw).hexdigest(), "settings": settings, "format": _CACHE_FORMAT}
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def entry_path(folder: pathlib.Path, case_id: str, key: str) -> pathlib.Path:
  return folder / f"{case_id}.{key[:32]}.npz"


def read_entry(path: pathlib.Path, key: str, case, mapped: bool = False):
  """Returns (image, label, original label or None, label values) of the entry at `path` if it has the right key and
  the shapes of `case` (a `slicejax.data.index.CaseInfo`), else None. With `mapped` the three arrays are
  `mapped.MappedArray`s of the entry, read on access."""
  if not path.is_file():
    return None
  try:
    with np.load(path) as entry:
      if str(entry["key"]) != key:
        return None
      label_values = entry["label_values"]
      if mapped:
        arrays = mapped_lib.open_npz(path)
        image, label, original = arrays["image"], arrays["label"], arrays.get("original_label")
      else:
        image, label = entry["image"], entry["label"]
        original = entry["original_label"] if "original_label" in entry.files else None
  except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
    logging.warning("Ignoring unreadable cache entry %s: %s", path, e)
    return None
  if (image.shape != case.shape + (case.num_channels,) or image.dtype != np.float16 or label.shape != case.shape
      or (original is None) == case.resampled or (original is not None and original.shape != case.original_shape)):
    logging.warning("Ignoring cache entry %s: its arrays do not match %s's header", path, case.image_path)
    return None
  return image, label, original, label_values


def write_entry(path: pathlib.Path, key: str, image: np.ndarray, label: np.ndarray, original, label_values,
                dataset: str = ""):
  # One file per entry, written atomically: an entry is complete or absent, never half written. `dataset` (the
  # folder the case came from) is for people listing the cache (`slicejax.cache`), not part of the key.
  dtype = smallest_int(label_values[0], label_values[-1])
  arrays = dict(key=np.array(key), image=image, label=label.astype(dtype), label_values=label_values,
                dataset=np.array(dataset))
  if original is not None:
    arrays["original_label"] = original.astype(dtype)
  files.atomic_writer(path, lambda f: np.savez(f, **arrays))


@contextlib.contextmanager
def taken_back_if_refused(folder):
  """Yields a list for the paths of the entries written into `folder` (a cache's `volumes/`, or None) inside the
  block. If the block raises InputError (a refused dataset), those entries and the folders that did not exist
  before are removed again, so the cache is left as it was found: entries are content-keyed, so an entry the block
  wrote was not there before."""
  created = [] if folder is None else [p for p in (folder.parent, folder) if not p.exists()]
  written = []
  try:
    yield written
  except InputError:
    for path in written:
      path.unlink(missing_ok=True)
    for path in reversed(created):
      if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    raise
