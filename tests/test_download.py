"""MSD task download against an HTTP server on 127.0.0.1 serving a generated archive: full run, resumption after a
cut connection (same run and next run), a server that ignores Range, checksum mismatch, unsafe archives, reruns."""

import hashlib
import http.server
import io
import json
import re
import subprocess
import sys
import tarfile
import threading
import time

import nibabel as nib
import numpy as np
import pytest

from slicejax import download
from slicejax.download import DownloadError

TASK = "Task04_Hippocampus"
PATH = f"/{TASK}.tar"
IMAGE = np.arange(4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3)
LABEL = (IMAGE % 3).astype(np.uint8)
DATASET = {"name": "Hippocampus", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior"},
           "numTraining": 1, "training": [{"image": "./imagesTr/hippocampus_001.nii.gz",
                                           "label": "./labelsTr/hippocampus_001.nii.gz"}]}


def _add(tar, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _nifti(array) -> bytes:
  return nib.Nifti1Image(array, np.diag([1.0, 1.0, 2.0, 1.0])).to_bytes()


def _archive(extra=()) -> bytes:
  """A tiny MSD-like tar: TASK/dataset.json, one image and one label (gzip-less .nii.gz names are fine here)."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w") as tar:
    _add(tar, f"{TASK}/dataset.json", json.dumps(DATASET).encode())
    _add(tar, f"{TASK}/imagesTr/hippocampus_001.nii", _nifti(IMAGE))
    _add(tar, f"{TASK}/labelsTr/hippocampus_001.nii", _nifti(LABEL))
    for member in extra:
      tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
  return buffer.getvalue()


ARCHIVE = _archive()
MD5 = hashlib.md5(ARCHIVE).hexdigest()
SHA256 = hashlib.sha256(ARCHIVE).hexdigest()


class Server:
  """Serves `files` {path: bytes} with Range support; `cut_after` cuts the next body after that many bytes,
  `ignore_range` answers 200 to every request, `stall` waits that many seconds before answering. `requests` logs
  (path, Range header) per request."""

  def __init__(self):
    self.files = {PATH: ARCHIVE}
    self.cut_after = None
    self.ignore_range = False
    self.stall = 0.0
    self.requests = []
    state = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_GET(self):
        state.requests.append((self.path, self.headers.get("Range")))
        time.sleep(state.stall)
        data = state.files.get(self.path)
        if data is None:
          self.send_error(404)
          return
        start, wanted = 0, self.headers.get("Range")
        if wanted and not state.ignore_range:
          start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))
          if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
          self.send_response(206)
          self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
          self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.cut_after is not None:
          body, state.cut_after = body[:state.cut_after], None
          self.close_connection = True
        try:
          self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # The client gave up first (the timeout test).
          pass

      def log_message(self, *args):
        del args

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}{PATH}"
    self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    self.thread.start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def server():
  s = Server()
  yield s
  s.close()


def _fast(**options):
  return {"timeout": 5.0, "retries": 0, "retry_wait": 0.0, **options}


def _check_extracted(folder):
  assert json.loads((folder / "dataset.json").read_text()) == DATASET
  np.testing.assert_array_equal(nib.load(folder / "imagesTr" / "hippocampus_001.nii").get_fdata(), IMAGE)
  np.testing.assert_array_equal(np.asarray(nib.load(folder / "labelsTr" / "hippocampus_001.nii").dataobj), LABEL)


def test_registry_lists_the_ten_tasks_on_the_mirror():
  assert list(download.TASKS) == [
      "Task01_BrainTumour", "Task02_Heart", "Task03_Liver", "Task04_Hippocampus", "Task05_Prostate", "Task06_Lung",
      "Task07_Pancreas", "Task08_HepaticVessel", "Task09_Spleen", "Task10_Colon"]
  for name, task in download.TASKS.items():
    assert task.url == f"https://msd-for-monai.s3-us-west-2.amazonaws.com/{name}.tar"
    assert re.fullmatch(r"[0-9a-f]{32}", task.md5)


def test_progress_line():
  assert (download.progress_line("x.tar", 12_300_000, 27_100_000, 2.0, 6_400_000)
          == "x.tar: 12.3 MB of 27.1 MB (45%), 3.2 MB/s")
  assert download.progress_line("x.tar", 999, None, 0.0, 0) == "x.tar: 999 B, -"


def test_full_download_verifies_and_extracts(server, tmp_path):
  target = download.download_task(TASK, tmp_path, url=server.url, md5=MD5, sha256=SHA256.upper(), **_fast())
  assert target == tmp_path / TASK
  _check_extracted(target)
  assert server.requests == [(PATH, None)]
  assert sorted(p.name for p in tmp_path.iterdir()) == [TASK]  # .partial and the scratch folder are gone.


def test_cut_connection_resumes_in_the_same_run(server, tmp_path):
  server.cut_after = 1000
  part = tmp_path / "a.tar.part"
  assert download.fetch(server.url, part, **_fast(retries=1)) == len(ARCHIVE)
  assert server.requests == [(PATH, None), (PATH, "bytes=1000-")]
  assert part.read_bytes() == ARCHIVE


def test_cut_connection_resumes_on_the_next_run(server, tmp_path):
  server.cut_after = 1000
  with pytest.raises(DownloadError) as err:
    download.download_task(TASK, tmp_path, url=server.url, md5=MD5, **_fast())
  part = tmp_path / ".partial" / f"{TASK}.tar.part"
  assert str(err.value) == (f"{server.url}: connection closed after 1000 of {len(ARCHIVE)} bytes ({part} keeps "
                            "1.0 KB; run again to resume)")
  assert part.read_bytes() == ARCHIVE[:1000]
  assert not (tmp_path / TASK).exists()
  _check_extracted(download.download_task(TASK, tmp_path, url=server.url, md5=MD5, **_fast()))
  assert server.requests == [(PATH, None), (PATH, "bytes=1000-")]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
  server.ignore_range = True
  part = tmp_path / ".partial" / f"{TASK}.tar.part"
  part.parent.mkdir()
  part.write_bytes(b"stale bytes of another file" * 10)
  _check_extracted(download.download_task(TASK, tmp_path, url=server.url, md5=MD5, **_fast()))
  assert server.requests == [(PATH, "bytes=270-")]


def test_complete_part_is_not_fetched_again(server, tmp_path):
  part = tmp_path / ".partial" / f"{TASK}.tar.part"
  part.parent.mkdir()
  part.write_bytes(ARCHIVE)
  _check_extracted(download.download_task(TASK, tmp_path, url=server.url, sha256=SHA256, **_fast()))
  assert server.requests == [(PATH, f"bytes={len(ARCHIVE)}-")]  # Answered 416 with the same size.


def test_checksum_mismatch_is_one_line_and_extracts_nothing(server, tmp_path, capsys):
  wrong = "0" * 32
  status = download.run(TASK, tmp_path, url=server.url, md5=wrong, **_fast())
  part = tmp_path / ".partial" / f"{TASK}.tar.part"
  assert status == 1
  assert capsys.readouterr().err == (f"error: {part}: md5 mismatch: expected {wrong}, got {MD5} (the file was "
                                     "deleted; run again to download it afresh)\n")
  assert not part.exists()
  assert [p.name for p in tmp_path.iterdir()] == [".partial"]


def test_http_error_and_timeout_are_one_line(server, tmp_path):
  with pytest.raises(DownloadError, match=r"^http://127\.0\.0\.1:\d+/missing\.tar: HTTP 404 Not Found$"):
    download.fetch(server.url.replace(PATH, "/missing.tar"), tmp_path / "a.part", **_fast())
  server.stall = 0.5
  with pytest.raises(DownloadError, match=r"^http://127\.0\.0\.1:\d+/Task04_Hippocampus\.tar: timed out$"):
    download.download_task(TASK, tmp_path, url=server.url, **_fast(timeout=0.1))
  assert list(tmp_path.iterdir()) == []


def _member(name, kind=tarfile.REGTYPE, linkname=""):
  info = tarfile.TarInfo(name)
  info.type, info.linkname, info.size = kind, linkname, 1 if kind == tarfile.REGTYPE else 0
  return info


def test_unsafe_archive_is_refused(server, tmp_path):
  dest = tmp_path / "data"
  server.files[PATH] = evil = _archive([_member("../evil")])
  with pytest.raises(DownloadError, match=r"member '\.\./evil' would be written outside the destination; refused"):
    download.download_task(TASK, dest, url=server.url, md5=hashlib.md5(evil).hexdigest(), **_fast())
  assert not (tmp_path / "evil").exists()
  assert sorted(p.name for p in dest.iterdir()) == [".partial"]
  assert not any((dest / ".partial").iterdir())  # The unusable archive is not kept for resuming.


@pytest.mark.parametrize("member, refused", [
    (_member("/etc/evil"), True),
    (_member(f"{TASK}/a/../../../evil"), True),
    (_member(f"{TASK}/link", tarfile.SYMTYPE, "../../outside"), True),
    (_member(f"{TASK}/link", tarfile.SYMTYPE, "/etc/passwd"), True),
    (_member(f"{TASK}/hard", tarfile.LNKTYPE, "../outside"), True),
    (_member(f"{TASK}/fifo", tarfile.FIFOTYPE), True),
    (_member(f"{TASK}/link", tarfile.SYMTYPE, "imagesTr/hippocampus_001.nii"), False),
    (_member(f"{TASK}/imagesTr/link", tarfile.SYMTYPE, "../dataset.json"), False),
])
def test_check_members(member, refused):
  with tarfile.open(fileobj=io.BytesIO(_archive([member]))) as tar:
    if refused:
      with pytest.raises(DownloadError, match="refused$"):
        download.check_members("a.tar", tar)
    else:
      download.check_members("a.tar", tar)


def test_rerun_on_a_complete_folder_downloads_nothing(server, tmp_path):
  download.download_task(TASK, tmp_path, url=server.url, md5=MD5, **_fast())
  (tmp_path / TASK / "notes.txt").write_text("mine")
  assert download.download_task(TASK, tmp_path, url=server.url, md5=MD5, **_fast()) == tmp_path / TASK
  assert len(server.requests) == 1
  assert (tmp_path / TASK / "notes.txt").read_text() == "mine"


def test_incomplete_folder_in_the_way_is_refused(server, tmp_path, capsys):
  (tmp_path / TASK / "imagesTr").mkdir(parents=True)
  assert download.run(TASK, tmp_path, url=server.url, **_fast()) == 2
  assert capsys.readouterr().err.startswith(f"error: {tmp_path / TASK}: exists without dataset.json")
  assert server.requests == []
  assert sorted(p.name for p in tmp_path.iterdir()) == [TASK]


def test_entry_point_rejects_bad_flags_in_one_line(tmp_path):
  result = subprocess.run([sys.executable, "-m", "slicejax.download", "--task=Task04_Hippocampus",
                           f"--dest={tmp_path}", "--md5=xyz"], capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  assert result.stderr == "error: --md5: 'xyz' is not 32 hexadecimal digits\n"
  assert list(tmp_path.iterdir()) == []
