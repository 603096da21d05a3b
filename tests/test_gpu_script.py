"""bench/gpu.sh: the call of bench/README.md, run as a CPU dry run in a checkout holding only what travels to a GPU
machine (the working tree and the carried wheels and data) with the packages the GPU image lacks hidden, goes through
every step within the command's limit; on a machine without a GPU it stops at once; it installs the wheels of missing
modules only and names a module that no wheel provides; bench/model_axis.py goes on past a failed run."""

import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import zipfile

import pytest

from slicejax.data import phantom

pytestmark = pytest.mark.slow  # every test here runs for seconds: launches, subprocesses or whole reports

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SCRIPT = BENCH / "gpu.sh"
# What the GPU image lacks, by module and distribution; its wheels travel in the carried wheel folder.
NOT_ON_IMAGE = {"nibabel": "nibabel", "ml_collections": "ml_collections", "surface_distance": "surface-distance"}
# The most seconds one command may run on the GPU machine.
COMMAND_LIMIT_S = 600


def _records(out: pathlib.Path) -> list:
  jsonl = out / "bench_gpu.jsonl"
  return [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []


def _run(tmp_path, *args, **env):
  """Runs gpu.sh with its output, its JAX cache and its pip target under `tmp_path`; returns (process, records)."""
  out = tmp_path / "out"
  full_env = dict(os.environ, PYTHON=sys.executable, OUT=str(out), TMPDIR=str(tmp_path), **env)
  full_env.pop("SLICEJAX_HIPPOCAMPUS", None)
  process = subprocess.run(["bash", str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=600,
                           check=False)
  return process, _records(out)


def _hide_installed(folder: pathlib.Path, modules) -> str:
  """A folder for PYTHONPATH whose sitecustomize hides this interpreter's installed copies of `modules`, as on a GPU
  image without them; copies elsewhere on the path (those gpu.sh installs from wheels) import as usual."""
  blocked = set()
  for module in modules:
    spec = importlib.util.find_spec(module)
    origin = pathlib.Path(spec.origin).parent
    blocked.add(str(origin.parent if spec.submodule_search_locations else origin))
  folder.mkdir()
  (folder / "sitecustomize.py").write_text(
      "import importlib.machinery, os, sys\n\n"
      f"HIDDEN, BLOCKED = {sorted(modules)!r}, {sorted(blocked)!r}\n\n"
      "class _HideInstalled:\n"
      "  def find_spec(self, name, path=None, target=None):\n"
      "    if path is not None or name not in HIDDEN:\n"
      "      return None\n"
      "    allowed = [p for p in sys.path if os.path.abspath(p or os.curdir) not in BLOCKED]\n"
      "    spec = importlib.machinery.PathFinder.find_spec(name, allowed)\n"
      "    if spec is None:\n"
      "      raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
      "    return spec\n\n"
      "sys.meta_path.insert(0, _HideInstalled())\n")
  return str(folder)


def _write_wheel(path: pathlib.Path, name: str, version: str, files: dict, metadata: str) -> pathlib.Path:
  """A pure-Python wheel of `files` ({path in the wheel: bytes}); RECORD without hashes, which pip accepts."""
  info = f"{name}-{version}.dist-info"
  contents = {**files, f"{info}/METADATA": metadata.encode(),
              f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
  with zipfile.ZipFile(path, "w") as whl:
    for arcname, data in contents.items():
      whl.writestr(arcname, data)
    whl.writestr(f"{info}/RECORD", "".join(f"{a},,\n" for a in [*contents, f"{info}/RECORD"]))
  return path


def _wheel(folder: pathlib.Path, name: str, version: str) -> pathlib.Path:
  """A wheel of an empty package `name`."""
  folder.mkdir(exist_ok=True)
  return _write_wheel(folder / f"{name}-{version}-py3-none-any.whl", name, version, {f"{name}/__init__.py": b""},
                      f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def _wheel_of_installed(folder: pathlib.Path, distribution: str) -> pathlib.Path:
  """A wheel of an installed pure-Python distribution, packed from its installed files: the stand-in for the wheel
  that travels to the GPU machine."""
  dist = importlib.metadata.distribution(distribution)
  name = dist.metadata["Name"].replace("-", "_")
  files = {str(f): f.locate().read_bytes() for f in dist.files
           if f.parts[0] != ".." and not f.parts[0].endswith(".dist-info") and "__pycache__" not in f.parts}
  folder.mkdir(exist_ok=True)
  return _write_wheel(folder / f"{name}-{dist.version}-py3-none-any.whl", name, dist.version, files,
                      dist.read_text("METADATA"))


def readme_call() -> dict:
  """The call that bench/README.md gives for the GPU machine: command, carry and timeout_s."""
  text = (BENCH / "README.md").read_text()
  field = lambda key: re.search(rf"^ +{key}: +(.+)$", text, re.M).group(1).strip()
  return {"command": field("command"), "carry": json.loads(field("carry")), "timeout_s": int(field("timeout_s"))}


def test_readme_call_dry_run_from_the_wheels_alone(tmp_path):
  """The README's command, with --dry-run, in a checkout of the working tree plus the carried paths: the wheels of
  every package the GPU image lacks (their installed copies hidden) and a hippocampus-sized phantom as the data."""
  call = readme_call()
  assert call["carry"] == [".whl", ".data/hippocampus"]
  for path in call["carry"]:  # ignored paths, so that they travel only when carried
    assert subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--no-index", "-q", f"{path}/x"],
                          check=False).returncode == 0, path
  checkout = tmp_path / "checkout"
  checkout.mkdir()
  for entry in ("bench", "configs", "slicejax"):
    (checkout / entry).symlink_to(ROOT / entry)
  wheels = sorted(_wheel_of_installed(checkout / ".whl", d).name for d in NOT_ON_IMAGE.values())
  # 260 cases as MSD Task04, so that the default grid's split (180 / 20 / 60) and budgets fit.
  data = phantom.cached_phantom(tmp_path / "phantom", num_cases=260, shape=(40, 40, 24))
  (checkout / ".data").mkdir()
  (checkout / ".data" / "hippocampus").symlink_to(data)

  out = tmp_path / "out"
  env = dict(os.environ, PYTHON=sys.executable, OUT=str(out), TMPDIR=str(tmp_path),
             PYTHONPATH=_hide_installed(tmp_path / "hide", NOT_ON_IMAGE))
  for name in ("SLICEJAX_HIPPOCAMPUS", "WHEELS"):
    env.pop(name, None)
  process = subprocess.run(["bash", "-c", call["command"] + " --dry-run"], cwd=checkout, env=env, capture_output=True,
                           text=True, timeout=1800, check=False)
  records = _records(out)
  assert process.returncode == 0, process.stderr + (out / "bench_gpu.log").read_text()[-3000:]
  by_kind = {}
  for record in records:
    by_kind.setdefault(record["benchmark"], []).append(record)

  [plan] = by_kind["gpu_sh_plan"]
  assert records[0] == plan and plan["dry_run"] and plan["scale"] == 4
  assert sum(plan["limits_s"].values()) == plan["planned_s"] <= plan["budget_s"] - plan["setup_s"]
  # On the GPU the budget (the dry run's over its scale) ends the run at least 30 s before the call's timeout, which
  # the command limit allows.
  assert plan["budget_s"] // plan["scale"] + 30 <= call["timeout_s"] <= COMMAND_LIMIT_S

  [setup] = by_kind["gpu_sh_setup"]
  assert setup["backend"] == "cpu" and setup["dry_run"]
  assert setup["installed"] == wheels
  assert {"python", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy", "torch"} <= set(
      setup["versions"])
  for module in NOT_ON_IMAGE:
    assert (tmp_path / "slicejax_gpu_sh_site" / module / "__init__.py").is_file(), module

  steps = {r["step"]: r for r in by_kind["gpu_sh_step"]}
  assert list(steps) == list(plan["limits_s"])  # every planned step ran or was skipped, in order
  skipped = {} if importlib.util.find_spec("torch") else {"vs_torch": "no PyTorch"}
  assert {name: r["skipped"] for name, r in steps.items() if "skipped" in r} == skipped
  assert all(r["rc"] == 0 for name, r in steps.items() if name not in skipped), steps

  axis = by_kind["model_axis"]
  assert sorted(r["models"] for r in axis) == [1, 8]
  assert all(r["default"] and r["ratio_vs_sequential"] > 0 and r["quick"] for r in axis), axis
  if "vs_torch" not in skipped:
    pairs = [(r["dims"], r["dtype"], r["jax_compute_dtype"], r["torch_autocast"]) for r in by_kind["vs_torch"]]
    assert pairs == [(2, "float32", "float32", None), (2, "bfloat16", "bfloat16", "bfloat16"),
                     (3, "float32", "float32", None), (3, "bfloat16", "bfloat16", "bfloat16")]
  # Partial records first, with what was measured before the step's last part; then the complete ones.
  partial, mfu = by_kind["mfu"]
  assert (partial["partial"], "step_s" in partial, partial["xla_forward_flops"] > 0) == (True, False, True)
  assert ((mfu["dims"], mfu["dtype"], "partial" in mfu) == (3, "bfloat16", False)
          and mfu["xla_step_flops"] == partial["xla_step_flops"] > 0 and mfu["step_s"] > 0)
  partial, pipeline = by_kind["pipeline"]
  assert partial["partial"] and partial["sampler_batches_per_s"] > 0 and "headroom" not in partial
  assert pipeline["headroom"] > 0 and "partial" not in pipeline
  [slice_run] = by_kind["study"]
  assert (slice_run["grid"], slice_run["models"], slice_run["groups"], slice_run["quick"]) == (
      "hippocampus", 3, 1, True)
  assert slice_run["step_s"] > 0 and slice_run["eval_s_per_model"] > 0
  partial, whole = by_kind["study_whole_grid"]
  # The default 2D grid: 16 allocations x 3 selections x 3 seeds and the reference, 8 models per group.
  for record in (partial, whole):
    assert (record["models"], record["groups"], record["ual_models"], record["steps"]) == (145, 19, 48, 2000)
    assert record["extrapolated"] and record["from_slice"]["step_s"] == slice_run["step_s"]
  assert partial["partial"] and partial["encoder_s"] is None and "partial" not in whole and whole["encoder_s"] > 0
  expected = (whole["setup_s"] + whole["encoder_s"] + 19 * whole["fixed_s"]
              + 145 * 2000 * slice_run["step_s"] / 3 + 145 * slice_run["eval_s_per_model"])
  assert abs(whole["extrapolated_s"] - expected) < 1e-6 * expected


def test_stops_at_once_without_gpu(tmp_path):
  process, records = _run(tmp_path, JAX_PLATFORMS="cpu")
  assert process.returncode == 1
  assert process.stderr.strip().splitlines() == [
      "gpu.sh: JAX's backend is cpu, not gpu: stopping (bash bench/gpu.sh --dry-run runs on the CPU)"]
  assert [r["benchmark"] for r in records] == ["gpu_sh_plan", "gpu_sh_setup"]


def test_missing_module_without_wheel_stops(tmp_path):
  """Before any step: one line naming the module that the benchmarks import and neither the interpreter nor a wheel
  provides."""
  process, records = _run(tmp_path, JAX_PLATFORMS="cpu", PYTHONPATH=_hide_installed(tmp_path / "hide", ["nibabel"]),
                          WHEELS=str(tmp_path / "no_wheels"))
  assert process.returncode == 1
  assert process.stderr.strip().splitlines() == [
      f"gpu.sh: the benchmarks need nibabel, which {sys.executable} lacks and no wheel in {tmp_path}/no_wheels "
      "provides (bench/README.md: preparing the checkout)"]
  assert [r["benchmark"] for r in records] == ["gpu_sh_plan"]


def test_only_wheels_of_missing_modules_installed(tmp_path):
  _wheel(tmp_path / "wheels", "nibabel", "9.9.9")  # nibabel is installed: its wheel is left alone
  _wheel(tmp_path / "wheels", "slicejax_test_extra", "1.0")
  process, records = _run(tmp_path, JAX_PLATFORMS="cpu", WHEELS=str(tmp_path / "wheels"))
  # Installed into the pip target under TMPDIR, then stopped by the backend check (this machine has no GPU).
  site = tmp_path / "slicejax_gpu_sh_site"
  assert (site / "slicejax_test_extra" / "__init__.py").is_file() and not (site / "nibabel").exists()
  assert process.returncode == 1 and "not gpu" in process.stderr
  assert [r["benchmark"] for r in records] == ["gpu_sh_plan", "gpu_sh_setup"]
  assert records[1]["installed"] == ["slicejax_test_extra-1.0-py3-none-any.whl"]


def test_model_axis_failed_runs_leave_records():
  """With M = 0 every run fails: the baseline's failure leaves a record and the strategy's run still runs."""
  process = subprocess.run([sys.executable, str(BENCH / "model_axis.py"), "--json", "--quick", "--models=0",
                            "--strategies=bogus"], capture_output=True, text=True, timeout=300, check=False)
  records = [json.loads(line) for line in process.stdout.splitlines()]
  assert [(r["strategy"], r["models"], r["rc"]) for r in records] == [("baseline", 0, 1), ("bogus", 0, 1)]
  assert all(r["error"] for r in records)
  assert process.returncode == 1
  assert process.stderr.strip().splitlines()[-1] == (
      "model_axis: 2 run(s) failed (baseline:0, bogus:0); their records carry the error")
