"""Test settings: small, deterministic, compiled cheaply and once (a compilation cache shared by the whole session),
with a slicejax cache of the session's own (never the user's)."""

import os
import pathlib
import shutil
import tempfile

# Before jax is imported anywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# XLA:CPU's cheapest backend compile settings (as `bench/gpu.sh --dry-run` uses them), for this process and the
# launches it starts: the suite's tiny programs spend most of their time compiling. With these and the forked launches
# of tests/launch_forks.py the suite's CPU time fell from 18.0 to 10.6 minutes (BENCHMARKS.md, "Test suite"). They
# change how LLVM optimises the generated code, not the HLO or its order of operations: every value the tests pin,
# measured with the default settings, is the same with these.
CHEAP_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
_flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join([_flags] + [f for f in CHEAP_COMPILE if f.split("=")[0] not in _flags]).strip()
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
