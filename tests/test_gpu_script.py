"""bench/gpu.sh: its CPU dry run goes through every step, on a machine without a GPU it stops at once, and it
installs only the wheels it is given; bench/model_axis.py goes on past a failed run."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import zipfile

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"
SCRIPT = BENCH / "gpu.sh"


def _run(tmp_path, *args, **env):
  """Runs gpu.sh with its output, its JAX cache and its pip target under `tmp_path`; returns (process, records)."""
  out = tmp_path / "out"
  full_env = dict(os.environ, PYTHON=sys.executable, OUT=str(out), TMPDIR=str(tmp_path), **env)
  full_env.pop("SLICEJAX_HIPPOCAMPUS", None)  # the data step's skip is part of what the dry run checks
  process = subprocess.run(["bash", str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=600,
                           check=False)
  jsonl = out / "bench_gpu.jsonl"
  records = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
  return process, records


def test_dry_run_runs_every_step(tmp_path):
  process, records = _run(tmp_path, "--dry-run")
  assert process.returncode == 0, process.stderr + (tmp_path / "out" / "bench_gpu.log").read_text()[-3000:]
  by_kind = {}
  for record in records:
    by_kind.setdefault(record["benchmark"], []).append(record)

  [plan] = by_kind["gpu_sh_plan"]
  assert records[0] == plan and plan["dry_run"]
  assert sum(plan["limits_s"].values()) == plan["planned_s"] < plan["budget_s"]
  [setup] = by_kind["gpu_sh_setup"]
  assert setup["backend"] == "cpu" and setup["dry_run"]

  steps = {r["step"]: r for r in by_kind["gpu_sh_step"]}
  assert list(steps) == list(plan["limits_s"])  # every planned step ran or was skipped, in order
  skipped = {"study_hippocampus": "no data: SLICEJAX_HIPPOCAMPUS is unset"}
  if importlib.util.find_spec("torch") is None:
    skipped["vs_torch"] = "no PyTorch"
  assert {name: r["skipped"] for name, r in steps.items() if "skipped" in r} == skipped
  assert all(r["rc"] == 0 for name, r in steps.items() if name not in skipped), steps

  axis = by_kind["model_axis"]
  assert sorted(r["models"] for r in axis) == [1, 8]
  assert all(r["default"] and r["ratio_vs_sequential"] > 0 and r["quick"] for r in axis), axis
  assert [(r["dims"], r["dtype"]) for r in by_kind["mfu"]] == [(3, "bfloat16")]
  assert [r["headroom"] > 0 for r in by_kind["pipeline"]] == [True]
  if "vs_torch" not in skipped:
    assert sorted(r["dims"] for r in by_kind["vs_torch"]) == [2, 3]


def test_stops_at_once_without_gpu(tmp_path):
  process, records = _run(tmp_path, JAX_PLATFORMS="cpu")
  assert process.returncode == 1
  assert process.stderr.strip().splitlines() == [
      "gpu.sh: JAX's backend is cpu, not gpu: stopping (bash bench/gpu.sh --dry-run runs on the CPU)"]
  assert [r["benchmark"] for r in records] == ["gpu_sh_plan", "gpu_sh_setup"]


def _hide_nibabel(folder: pathlib.Path) -> str:
  """A folder for PYTHONPATH whose sitecustomize makes `nibabel` impossible to import, as on a bare GPU image."""
  folder.mkdir()
  (folder / "sitecustomize.py").write_text(
      "import sys\n\n"
      "class _Hide:\n"
      "  def find_spec(self, name, path=None, target=None):\n"
      "    if name == 'nibabel':\n"
      "      raise ModuleNotFoundError(name)\n\n"
      "sys.meta_path.insert(0, _Hide())\n")
  return str(folder)


def _wheel(folder: pathlib.Path, name: str, version: str) -> pathlib.Path:
  """A minimal pure-Python wheel of an empty package `name`."""
  folder.mkdir(exist_ok=True)
  path = folder / f"{name}-{version}-py3-none-any.whl"
  info = f"{name}-{version}.dist-info"
  with zipfile.ZipFile(path, "w") as whl:
    whl.writestr(f"{name}/__init__.py", "")
    whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    whl.writestr(f"{info}/RECORD", f"{name}/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
  return path


def test_missing_package_without_wheel_stops(tmp_path):
  process, _ = _run(tmp_path, JAX_PLATFORMS="cpu", PYTHONPATH=_hide_nibabel(tmp_path / "hide"),
                    WHEELS=str(tmp_path / "no_wheels"))
  assert process.returncode == 1
  assert process.stderr.strip().splitlines() == [
      f"gpu.sh: {sys.executable} lacks nibabel and there is no {tmp_path}/no_wheels/nibabel-*.whl "
      "(bench/README.md: prepare .whl/)"]


def test_missing_package_installed_from_wheel(tmp_path):
  _wheel(tmp_path / "wheels", "nibabel", "9.9.9")
  process, records = _run(tmp_path, JAX_PLATFORMS="cpu", PYTHONPATH=_hide_nibabel(tmp_path / "hide"),
                          WHEELS=str(tmp_path / "wheels"))
  # Installed into the pip target under TMPDIR, then stopped by the backend check (this machine has no GPU).
  assert (tmp_path / "slicejax_gpu_sh_site" / "nibabel" / "__init__.py").is_file()
  assert process.returncode == 1 and "not gpu" in process.stderr
  assert [r["benchmark"] for r in records] == ["gpu_sh_plan", "gpu_sh_setup"]


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
