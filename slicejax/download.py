"""Downloads a Medical Segmentation Decathlon task, checks its sum and unpacks it: `DEST/TaskNN_Name/dataset.json`.

    python -m slicejax.download --task=Task04_Hippocampus --dest=data
    python -m slicejax.download --task=Task05_Prostate --dest=data --url=https://MIRROR/Task05_Prostate.tar
    python -m slicejax.download --task=Task09_Spleen --dest=data --sha256=HEX     (replaces the known md5)

The ten tasks (http://medicaldecathlon.com, CC BY-SA 4.0; Antonelli et al., Nature Communications 13, 2022) are
`TaskNN_Name.tar` archives on the public AWS open-data mirror that MONAI's `DecathlonDataset` downloads from, with the
md5 sums published in MONAI's `monai/apps/datasets.py` (`TASKS` below). No data are redistributed with slicejax.

Steps, each safe to interrupt and run again:
  1. `DEST/TaskNN_Name` holding a dataset.json is a finished task: it is reported and nothing is downloaded. The
     same folder without dataset.json is refused (nothing already there is overwritten).
  2. The archive streams to `DEST/.partial/TaskNN_Name.tar.part`. A part left by an earlier run is resumed with an
     HTTP Range request: a 206 answer appends, a 200 (a server that ignores Range) starts again from byte 0, a 416
     for a part that already holds the whole archive skips to step 3. A connection that breaks mid-transfer is resumed
     the same way up to `retries` times in a row. A progress line (bytes, percent, rate) is logged every few seconds.
  3. md5 and/or sha256 of the part, streamed: a mismatch deletes the part and ends with one line naming the file, the
     expected and the actual sum. Without any sum to compare (none given and none known) a warning says so.
  4. The tar is checked member by member (no absolute paths, no `..`, no links leaving the archive's folder, no
     devices) and unpacked, with `tarfile`'s "data" filter where Python has it, into a hidden folder next to
     `DEST/TaskNN_Name`, which is then renamed into place in one step; the part is deleted last.

Network failures, HTTP errors, a wrong sum and an unusable archive raise `DownloadError`, bad flags or a destination
in the way `slicejax.errors.InputError`; the entry point prints either as one line `error: <where>: <what>` on stderr
and exits with status 1 or 2. Only the standard library (urllib, hashlib, tarfile) touches the network and the archive.
"""

import dataclasses
import hashlib
import http.client
import os
import pathlib
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Callable, Optional

from absl import app
from absl import flags
from absl import logging

from slicejax.errors import error_line
from slicejax.errors import exit_with
from slicejax.errors import InputError
from slicejax import files

MIRROR = "https://msd-for-monai.s3-us-west-2.amazonaws.com"
PARTIAL = ".partial"
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Task:
  """One MSD task: its folder name (also the archive's stem), the archive's URL and its published md5 (or None)."""
  name: str
  url: str
  md5: Optional[str]


def _task(name: str, md5: str) -> Task:
  return Task(name, f"{MIRROR}/{name}.tar", md5)


# md5 sums as published in MONAI's monai/apps/datasets.py (DecathlonDataset.md5).
TASKS = {t.name: t for t in (
    _task("Task01_BrainTumour", "240a19d752f0d9e9101544901065d872"),
    _task("Task02_Heart", "06ee59366e1e5124267b774dbd654057"),
    _task("Task03_Liver", "a90ec6c4aa7f6a3d087205e23d4e6397"),
    _task("Task04_Hippocampus", "9d24dba78a72977dbd1d2e110310f31b"),
    _task("Task05_Prostate", "35138f08b1efaef89d7424d2bcc928db"),
    _task("Task06_Lung", "8afd997733c7fc0432f71255ba4e52dc"),
    _task("Task07_Pancreas", "4f7080cfca169fa8066d17ce6eb061e4"),
    _task("Task08_HepaticVessel", "641d79e80ec66453921d997fbf12a29c"),
    _task("Task09_Spleen", "410d4a301da4e5b2f6f86ec3ddba524e"),
    _task("Task10_Colon", "bad7a188931dc2f6acf72b08eb6202d0"),
)}

_HEX_LENGTH = {"md5": 32, "sha256": 64}


class DownloadError(RuntimeError):
  """A download that failed (network, HTTP, checksum, archive). `str(err)` is one line: '<url or file>: <problem>'."""

  def __init__(self, where, problem: str):
    super().__init__(f"{where}: {problem}".replace("\n", " "))


class _Interrupted(Exception):
  """A transfer that stopped early and may be resumed; its message says why."""


# ---------------------------------------------------------------------------------------------------------------------
# Download.

def _size(n: float) -> str:
  """Bytes for people: '999 B', '12.3 MB'."""
  if n < 1000:
    return f"{n:.0f} B"
  for unit in ("KB", "MB", "GB"):
    n /= 1000
    if n < 1000:
      break
  return f"{n:.1f} {unit}"


def progress_line(name: str, done: int, total: Optional[int], seconds: float, new_bytes: int) -> str:
  """'NAME: 12.3 MB of 27.1 MB (45%), 3.2 MB/s': `done` bytes on disk, `new_bytes` of them fetched in `seconds`."""
  rate = f"{_size(new_bytes / seconds)}/s" if seconds > 0 else "-"
  if total:
    return f"{name}: {_size(done)} of {_size(total)} ({100 * done // total}%), {rate}"
  return f"{name}: {_size(done)}, {rate}"


def _content_range(value: Optional[str]):
  """'bytes a-b/total' -> (a, total) (total None for '*'); 'bytes */total' -> (None, total); else None."""
  match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
  if not match:
    return None
  start, total = match.groups()
  return (int(start) if start is not None else None), (None if total == "*" else int(total))


def _transfer(url: str, part: pathlib.Path, timeout: float, progress_every: float,
              clock: Callable[[], float]) -> int:
  """One request: resumes `part` from its size (Range) or rewrites it; returns the archive's size in bytes.

  Raises `_Interrupted` for a failure worth retrying (network, timeout, a short body, HTTP 5xx) and `DownloadError`
  for one that is not (other HTTP errors, a server answering the wrong range).
  """
  offset = part.stat().st_size if part.exists() else 0
  request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
  try:
    response = urllib.request.urlopen(request, timeout=timeout)
  except urllib.error.HTTPError as err:
    if err.code == 416 and offset:
      _, total = _content_range(err.headers.get("Content-Range")) or (None, None)
      if total == offset:
        logging.info("%s: already complete (%s)", part, _size(offset))
        return offset
      logging.info("%s: the server cannot resume at byte %d; starting again from byte 0", url, offset)
      part.unlink()
      return _transfer(url, part, timeout, progress_every, clock)
    if err.code >= 500:
      raise _Interrupted(f"HTTP {err.code} {err.reason}") from err
    raise DownloadError(url, f"HTTP {err.code} {err.reason}") from err
  except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
    raise _Interrupted(_reason(err)) from err
  with response:
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if response.status == 206:
      start, total = _content_range(response.headers.get("Content-Range")) or (None, None)
      if start != offset:
        raise DownloadError(url, f"asked for bytes from {offset}, the server sent "
                                 f"'{response.headers.get('Content-Range')}'")
      if total is None and length is not None:
        total = offset + length
      mode = "ab"
    else:
      if offset:
        logging.info("%s: the server ignores Range requests; starting again from byte 0", url)
      offset, total, mode = 0, length, "wb"
    logging.info("%s -> %s%s", url, part, f" (resuming at {_size(offset)})" if offset else "")
    done, started = offset, clock()
    last = started
    try:
      f = open(part, mode)
    except OSError as err:
      raise DownloadError(part, f"cannot write: {err.strerror or err}") from err
    with f:
      while True:
        try:
          chunk = response.read(_CHUNK)
        except (http.client.HTTPException, OSError) as err:
          raise _Interrupted(f"{_reason(err)} after {done} bytes") from err
        if not chunk:
          break
        try:
          f.write(chunk)
        except OSError as err:
          raise DownloadError(part, f"cannot write: {err.strerror or err}") from err
        done += len(chunk)
        now = clock()
        if now - last >= progress_every:
          logging.info("%s", progress_line(part.name, done, total, now - started, done - offset))
          last = now
      f.flush()
      os.fsync(f.fileno())
  if total is not None and done != total:
    raise _Interrupted(f"connection closed after {done} of {total} bytes")
  logging.info("%s", progress_line(part.name, done, total, clock() - started, done - offset))
  return done


def _reason(err: BaseException) -> str:
  if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
    err = err.reason if isinstance(err.reason, BaseException) else err
  if isinstance(err, TimeoutError):
    return "timed out"
  text = str(err) or type(err).__name__
  return " ".join(text.split())


def fetch(url: str, part, *, timeout: float = 60.0, retries: int = 5, retry_wait: float = 2.0,
          progress_every: float = 5.0, clock: Callable[[], float] = time.monotonic) -> int:
  """Streams `url` into the file `part`, resuming what is already there; returns the archive's size in bytes.

  Args:
    url: http(s) URL of the archive.
    part: the partial file; its folder must exist. Bytes already in it are kept if the server resumes (206).
    timeout: seconds to wait for the connection and for each read.
    retries: resumptions allowed after failures in a row (a try that adds bytes resets the count).
    retry_wait: seconds before the first resumption, doubling with each failure in a row.
    progress_every: seconds between progress lines.
    clock: monotonic clock in seconds (tests).

  Raises:
    DownloadError: the download failed; `part` keeps what arrived, and a later call resumes from there.
  """
  part = pathlib.Path(part)
  failures = 0
  while True:
    before = part.stat().st_size if part.exists() else 0
    try:
      return _transfer(url, part, timeout, progress_every, clock)
    except _Interrupted as err:
      after = part.stat().st_size if part.exists() else 0
      failures = 1 if after > before else failures + 1
      if failures > retries:
        kept = f" ({part} keeps {_size(after)}; run again to resume)" if after else ""
        raise DownloadError(url, f"{err}{kept}") from err
      wait = retry_wait * 2 ** (failures - 1)
      logging.warning("%s: %s; resuming in %.0f s", url, err, wait)
      time.sleep(wait)


# ---------------------------------------------------------------------------------------------------------------------
# Checksums.

def file_sums(path, algorithms=("md5", "sha256")) -> dict:
  """{algorithm: hex digest} of the file at `path`, read in 1 MiB chunks."""
  hashes = {a: hashlib.new(a) for a in algorithms}
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      for h in hashes.values():
        h.update(chunk)
  return {a: h.hexdigest() for a, h in hashes.items()}


def verify(path, expected: dict) -> None:
  """Compares the sums in `expected` ({"md5": hex, "sha256": hex}, None values ignored) with the file's.

  Raises:
    DownloadError: one line naming the file, the expected and the actual sum; the file is deleted first.
  """
  path = pathlib.Path(path)
  expected = {a: v.lower() for a, v in expected.items() if v}
  actual = file_sums(path, tuple(expected))
  for algorithm, want in expected.items():
    if actual[algorithm] != want:
      path.unlink()
      raise DownloadError(path, f"{algorithm} mismatch: expected {want}, got {actual[algorithm]} (the file was "
                                "deleted; run again to download it afresh)")
  if expected:
    logging.info("%s: %s verified", path, " and ".join(expected))


# ---------------------------------------------------------------------------------------------------------------------
# Extraction.

def _inside(name: str) -> bool:
  """Whether an archive path stays inside the folder it is unpacked into (relative, no `..`)."""
  path = pathlib.PurePosixPath(name)
  return bool(name) and not path.is_absolute() and not re.match(r"^[A-Za-z]:", name) and ".." not in path.parts


def check_members(archive, tar: tarfile.TarFile) -> None:
  """Refuses an archive with a member that would land, or link, outside the folder it is unpacked into.

  Raises:
    DownloadError: naming `archive` and the first offending member.
  """
  for member in tar.getmembers():
    if not _inside(member.name):
      raise DownloadError(archive, f"member '{member.name}' would be written outside the destination; refused")
    if member.issym():
      # A symlink's target is relative to the folder holding it.
      target = str(pathlib.PurePosixPath(member.name).parent / member.linkname)
      if not _inside(os.path.normpath(target)):
        raise DownloadError(archive, f"link '{member.name}' -> '{member.linkname}' leaves the destination; refused")
    elif member.islnk():
      if not _inside(member.linkname):
        raise DownloadError(archive, f"link '{member.name}' -> '{member.linkname}' leaves the destination; refused")
    elif not (member.isfile() or member.isdir()):
      raise DownloadError(archive, f"member '{member.name}' is a device or pipe; refused")


def extract(archive, target, name: str) -> pathlib.Path:
  """Unpacks the tar `archive` and moves its `name` folder (or its top level) to `target` in one rename.

  Args:
    archive: a tar file (plain or compressed), holding `name/dataset.json` (or dataset.json at its top).
    target: the folder to create; it must not exist.
    name: the task's folder name inside the archive.

  Returns:
    `target`.

  Raises:
    DownloadError: unreadable or unsafe archive, or no dataset.json in it; nothing is left at `target`.
  """
  archive, target = pathlib.Path(archive), pathlib.Path(target)
  scratch = target.parent / f".{target.name}.extract-{uuid.uuid4().hex}"
  try:
    try:
      with tarfile.open(archive, "r:*") as tar:
        check_members(archive, tar)
        scratch.mkdir()
        if hasattr(tarfile, "data_filter"):
          tar.extractall(scratch, filter="data")
        else:
          tar.extractall(scratch)
    except (tarfile.TarError, EOFError) as err:
      raise DownloadError(archive, f"cannot unpack: {' '.join(str(err).split())}") from err
    source = scratch / name if (scratch / name / "dataset.json").is_file() else scratch
    if not (source / "dataset.json").is_file():
      raise DownloadError(archive, f"holds neither {name}/dataset.json nor dataset.json")
    if target.exists():
      raise InputError(target, "appeared while unpacking; nothing was overwritten")
    os.rename(source, target)
    files.fsync_dir(target.parent)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return target


# ---------------------------------------------------------------------------------------------------------------------
# One task.

def _check_sum(algorithm: str, value: Optional[str]) -> Optional[str]:
  if value and not re.fullmatch(rf"[0-9a-fA-F]{{{_HEX_LENGTH[algorithm]}}}", value):
    raise InputError(f"--{algorithm}", f"'{value}' is not {_HEX_LENGTH[algorithm]} hexadecimal digits")
  return value.lower() if value else None


def download_task(task: str, dest, *, url: Optional[str] = None, md5: Optional[str] = None,
                  sha256: Optional[str] = None, **fetch_options) -> pathlib.Path:
  """Downloads, verifies and unpacks one MSD task into `dest/<task>`; returns that folder.

  Args:
    task: a key of `TASKS`, e.g. "Task04_Hippocampus".
    dest: the folder that receives `<task>/` (created if missing) and the partial download `.partial/`.
    url: the archive's URL instead of the registry's (another mirror); the registry's md5 still applies.
    md5, sha256: expected sums (hex); either replaces the registry's md5. With none at all the archive is unverified.
    **fetch_options: passed to `fetch` (timeout, retries, retry_wait, progress_every).

  Raises:
    InputError: an unknown task, a malformed sum or URL, `dest` or `dest/<task>` in the way.
    DownloadError: network, HTTP, checksum or archive failure.
  """
  if task not in TASKS:
    raise InputError("--task", f"unknown task '{task}'; one of {', '.join(TASKS)}")
  md5, sha256 = _check_sum("md5", md5), _check_sum("sha256", sha256)
  expected = {"md5": md5, "sha256": sha256} if md5 or sha256 else {"md5": TASKS[task].md5}
  url = url or TASKS[task].url
  if urllib.parse.urlsplit(url).scheme not in ("http", "https") or not urllib.parse.urlsplit(url).netloc:
    raise InputError("--url", f"'{url}' is not an http(s) URL")
  dest = pathlib.Path(dest)
  target = dest / task
  if (target / "dataset.json").is_file():
    logging.info("%s: already there (it holds dataset.json); nothing downloaded", target)
    return target
  if target.exists() or target.is_symlink():
    raise InputError(target, "exists without dataset.json (an incomplete copy?); move it away or choose another "
                             "--dest (nothing is overwritten)")
  if dest.exists() and not dest.is_dir():
    raise InputError(dest, "is not a folder")
  partial = dest / PARTIAL
  partial.mkdir(parents=True, exist_ok=True)
  part = partial / f"{task}.tar.part"
  try:
    fetch(url, part, **fetch_options)
  except DownloadError:
    if not any(partial.iterdir()):
      partial.rmdir()
    raise
  if not any(expected.values()):
    logging.warning("%s: no checksum known or given; the archive is not verified", part)
  verify(part, expected)
  try:
    extract(part, target, task)
  except DownloadError:
    part.unlink(missing_ok=True)  # An archive that cannot be unpacked is not worth resuming.
    raise
  part.unlink()
  if not any(partial.iterdir()):
    partial.rmdir()
  logging.info("%s: ready", target)
  return target


# ---------------------------------------------------------------------------------------------------------------------
# Entry point.

_TASK = flags.DEFINE_string("task", None, f"MSD task: {', '.join(TASKS)}.")
_DEST = flags.DEFINE_string("dest", None, "Folder that receives TASK/ (and the partial download in .partial/).")
_URL = flags.DEFINE_string("url", None, "The archive's URL, instead of the public mirror's.")
_MD5 = flags.DEFINE_string("md5", None, "Expected md5 of the archive, instead of the published one.")
_SHA256 = flags.DEFINE_string("sha256", None, "Expected sha256 of the archive (replaces the published md5).")
_TIMEOUT = flags.DEFINE_float("timeout", 60.0, "Seconds to wait for the connection and for each read.")
_RETRIES = flags.DEFINE_integer("retries", 5, "Resumptions after failures in a row before giving up.")


def run(task, dest, **options) -> int:
  """`download_task` for a command line: returns the exit status, printing a failure as one line on stderr."""
  try:
    if not task or not dest:
      raise InputError("--task and --dest", "required")
    download_task(task, dest, **options)
  except InputError as err:
    error_line(err)
    return 2
  except DownloadError as err:
    error_line(err)
    return 1
  return 0


def main(argv):
  if len(argv) > 1:
    exit_with(f"unexpected arguments {' '.join(argv[1:])}")
  sys.exit(run(_TASK.value, _DEST.value, url=_URL.value, md5=_MD5.value, sha256=_SHA256.value,
               timeout=_TIMEOUT.value, retries=_RETRIES.value))


if __name__ == "__main__":
  app.run(main)
