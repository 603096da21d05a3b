"""Test settings: small, deterministic, and with a compilation cache shared by the whole session."""

import os
import pathlib

# Before jax is imported anywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # noqa: E402


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
