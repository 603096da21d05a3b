"""Test settings: small, deterministic, with a compilation cache shared by the whole session, and a slicejax cache
of the session's own (never the user's)."""

import os
import pathlib
import shutil
import tempfile

# Before jax is imported anywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# Before slicejax is imported anywhere: preprocessed volumes and phantoms go to a fresh folder, removed at the end;
# subprocesses (launch.py) inherit it.
_SESSION_CACHE = None if os.environ.get("SLICEJAX_CACHE") else tempfile.mkdtemp(prefix="slicejax-cache-")
if _SESSION_CACHE:
  os.environ["SLICEJAX_CACHE"] = _SESSION_CACHE

import pytest  # noqa: E402


def pytest_unconfigure(config):
  if _SESSION_CACHE:
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


def pytest_addoption(parser):
  parser.addoption(
      "--hippocampus", default=os.environ.get("SLICEJAX_HIPPOCAMPUS"),
      help="Path to the MSD Task04 hippocampus folder. When given, the real-data tests run, and fail if it is missing.")


@pytest.fixture(scope="session")
def hippocampus_root(request):
  root = request.config.getoption("--hippocampus")
  if not root:
    pytest.skip("no --hippocampus path given (set it, or SLICEJAX_HIPPOCAMPUS, to run the real-data tests)")
  path = pathlib.Path(root)
  if not (path / "dataset.json").is_file():
    pytest.fail(f"--hippocampus={root}: no dataset.json there")
  return path
