"""Writing files so that a reader never sees half of one: the one atomic-write helper of slicejax.

`atomic_write(path, data)` writes a temporary file next to the target (same file system, unique name, the usual
umask permissions), flushes and fsyncs it, renames it into place and fsyncs the folder, so that after a crash the
path holds the old content or the new one, never a mix. `atomic_writer(path)` does the same around a callback that
writes to an open binary file (numpy arrays, NIfTI images).
"""

import contextlib
import os
import pathlib
import uuid
from typing import Callable, Union


def temporary_sibling(path, suffix: str = ".tmp") -> pathlib.Path:
  """A fresh, unused name next to `path` (hidden, unique), on the same file system so `os.replace` is atomic."""
  path = pathlib.Path(path)
  return path.parent / f".{path.name}.{uuid.uuid4().hex}{suffix}"


def fsync_dir(folder) -> None:
  """Makes renames inside `folder` durable; file systems that refuse to fsync a folder only cost durability."""
  try:
    fd = os.open(folder, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def _replacing(path: pathlib.Path, suffix: str):
  tmp = temporary_sibling(path, suffix)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  fsync_dir(path.parent)


def atomic_writer(path, write: Callable, suffix: str = ".tmp") -> pathlib.Path:
  """Calls `write(file)` on a new binary file next to `path`, fsyncs it and renames it to `path`.

  Args:
    path: the target; its folder must exist.
    write: writes the whole content to the open binary file it is given.
    suffix: the temporary file's suffix (some writers choose the format from it, e.g. ".nii.gz").

  Returns:
    `path` as a pathlib.Path.
  """
  path = pathlib.Path(path)
  with _replacing(path, suffix) as tmp:
    with open(tmp, "xb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
  return path


def atomic_write(path, data: Union[str, bytes]) -> pathlib.Path:
  """Replaces the file at `path` with `data` (str is written as UTF-8) atomically; returns the path."""
  payload = data.encode("utf-8") if isinstance(data, str) else data
  return atomic_writer(path, lambda f: f.write(payload))


def atomic_save(path, save: Callable[[str], None], suffix: str) -> pathlib.Path:
  """Like `atomic_writer` for libraries that write to a file name (`save(name)`, e.g. `nibabel.save`)."""
  path = pathlib.Path(path)
  with _replacing(path, suffix) as tmp:
    save(str(tmp))
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
  return path
