"""End-to-end bad input: `launch.py` must reject it with exit status 2, a one-line `error: <where>: <problem>` naming
the file or key, and leave the workdir's existing files as they were.

Each case copies a valid 12-case phantom in the MSD layout (16 x 16 x 4..8 voxels), breaks one thing and runs
`launch.py --config=configs/hippocampus.py:tiny` on it in a subprocess (tiny split: 6 train, 1 val, 2 test). Every
launch spends seconds importing jax, so the selected cases are launched together, a few at a time, by one fixture.
"""

from concurrent import futures
import gzip
import json
import os
import pathlib
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from slicejax import phantom

REPO = pathlib.Path(__file__).resolve().parent.parent
CASE = "phantom_003.nii.gz"
IMAGE = f"imagesTr/{CASE}"
LABEL = f"labelsTr/{CASE}"
# Launches running at once; each is mostly one CPU core importing libraries.
PARALLEL_LAUNCHES = min(3, os.cpu_count() or 1)
SENTINEL_ROW = {"name": "2d_b6_s6_rho1_fixed_seed9", "dims": 2, "budget": 6, "volumes": 6, "slices_per_volume": 1,
                "selection": "fixed", "interpolation": False, "seed": 9, "reference": False, "dice_mean": 0.5}


# ---------------------------------------------------------------------------------------------------------------------
# Ways to break a valid MSD folder; each takes the folder's root.
# ---------------------------------------------------------------------------------------------------------------------


def _edit_json(edit):
  def breaker(root):
    meta = json.loads((root / "dataset.json").read_text())
    edit(meta)
    (root / "dataset.json").write_text(json.dumps(meta))
  return breaker


def _edit_array(relative, edit, *, affine_shift=0.):
  """Rewrites one NIfTI file with `edit(array)` as its data and its affine translated by `affine_shift` mm."""
  def breaker(root):
    path = root / relative
    img = nib.load(path)
    affine = img.affine.copy()
    affine[:3, 3] += affine_shift
    nib.save(nib.Nifti1Image(edit(np.asarray(img.dataobj)), affine), path)
  return breaker


def _edit_bytes(relative, edit):
  def breaker(root):
    path = root / relative
    path.write_bytes(edit(path.read_bytes()))
  return breaker


def _unlink(relative):
  return lambda root: (root / relative).unlink()


def _set_voxel(value, dtype=None):
  def edit(array):
    array = array.astype(dtype or array.dtype)
    array[0, 0, 0] = value
    return array
  return edit


def _pop(key):
  return lambda meta: meta.pop(key)


def _keep(_):
  pass


# (id, breaker, extra flags, substrings the error line must hold: the file or key, then a word of the problem). A
# breaker of None runs without a data folder.
CASES = [
    ("missing_dataset_json", _unlink("dataset.json"), (), ("dataset.json", "missing")),
    ("dataset_json_not_json", lambda root: (root / "dataset.json").write_text('{"labels": '), (),
     ("dataset.json", "not valid JSON")),
    ("dataset_json_lacks_training", _edit_json(_pop("training")), (), ("dataset.json", "lacks 'training'")),
    ("dataset_json_lacks_labels", _edit_json(_pop("labels")), (), ("dataset.json", "lacks 'labels'")),
    ("image_missing", _unlink(IMAGE), (), (IMAGE, "missing")),
    ("label_missing", _unlink(LABEL), (), (LABEL, "missing")),
    ("corrupt_gzip", _edit_bytes(IMAGE, lambda raw: raw[:len(raw) // 2]), (), (IMAGE, "corrupt")),
    ("truncated_nifti", _edit_bytes(IMAGE, lambda raw: gzip.compress(gzip.decompress(raw)[:400])), (),
     (IMAGE, "truncated")),
    ("shapes_differ", _edit_array(LABEL, lambda a: a[:, :12]), (), (LABEL, "shape")),
    ("affines_differ", _edit_array(LABEL, lambda a: a, affine_shift=1.), (), (LABEL, "affine differs")),
    ("undeclared_label_value", _edit_array(LABEL, _set_voxel(7)), (), (LABEL, "not declared")),
    ("non_integer_label", _edit_array(LABEL, _set_voxel(0.5, np.float32)), (), (LABEL, "non-integer")),
    ("nan_voxels", _edit_array(IMAGE, _set_voxel(np.nan)), (), (IMAGE, "NaN")),
    ("inf_voxels", _edit_array(IMAGE, _set_voxel(np.inf)), (), (IMAGE, "Inf")),
    ("image_2d", _edit_array(IMAGE, lambda a: a[:, :, 0]), (), (IMAGE, "must be 3D")),
    ("image_5d", _edit_array(IMAGE, lambda a: a[..., None, None]), (), (IMAGE, "must be 3D")),
    ("empty_training", _edit_json(lambda meta: meta.update(training=[])), (), ("dataset.json", "empty")),
    ("budget_exceeds_pool", _keep, ("--config.study.budgets=(1000,)",), ("study.budgets", "exceeds")),
    ("rho_exceeds_depth", _keep, ("--config.study.budgets=(18,)", "--config.study.slices_per_volume=(9,)"),
     ("study.slices_per_volume", "exceeds")),
    ("s_exceeds_pool", _keep, ("--config.study.budgets=(7,)", "--config.study.slices_per_volume=(1,)"),
     ("study.budgets", "no allocation with s <= 6")),
    ("unknown_selection", _keep, ("--config.study.selections=('nope',)",), ("selection", "'nope'")),
    ("unknown_model", _keep, ("--config.model.name=nope",), ("config.model.name", "unknown model")),
    ("missing_data_root", None, ("--config.data.root=",), ("config.data.root", "no data folder")),
    ("misspelt_config_key", _keep, ("--config.trian.steps=3",), ("trian", "train")),
]
BY_ID = {c[0]: c[1:] for c in CASES}
MISSPELT = "misspelt_config_key"


def _snapshot(folder: pathlib.Path) -> dict:
  return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run_case(case_id: str, folder: pathlib.Path, template: pathlib.Path) -> dict:
  """Builds the case's input and workdir in `folder` and launches it; returns the result and workdir snapshots."""
  breaker, flags, _ = BY_ID[case_id]
  if breaker is not None:
    root = folder / "msd"
    shutil.copytree(template, root)
    breaker(root)
    flags = (f"--config.data.root={root}",) + flags
  # A workdir holding a finished results row and an unrelated file, which a rejected launch must leave as they are.
  workdir = folder / "wd"
  workdir.mkdir()
  (workdir / "results.jsonl").write_text(json.dumps(SENTINEL_ROW) + "\n")
  (workdir / "keep.txt").write_text("left alone\n")
  before = _snapshot(workdir)
  result = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/hippocampus.py:tiny", f"--workdir={workdir}", *flags],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=300)
  return {"result": result, "before": before, "after": _snapshot(workdir)}


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict:
  """Case id -> outcome of `_run_case`, for the cases selected in this session."""
  wanted = sorted({item.callspec.params["case"] for item in request.session.items
                   if item.module is request.module and hasattr(item, "callspec")})
  template = phantom.write_phantom(tmp_path_factory.mktemp("template") / "msd", num_cases=12, shape=(16, 16, 8))
  folders = [tmp_path_factory.mktemp(case_id) for case_id in wanted]
  with futures.ThreadPoolExecutor(PARALLEL_LAUNCHES) as pool:
    done = pool.map(_run_case, wanted, folders, [template] * len(wanted))
    return dict(zip(wanted, done))


def _last_line(text: str) -> str:
  lines = [line for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else ""


def _assert_rejected(outcome, expected):
  result = outcome["result"]
  last = _last_line(result.stderr)
  assert result.returncode == 2, f"exit status {result.returncode}; stderr ends:\n{result.stderr[-2000:]}"
  assert last.startswith("error: "), last
  for part in expected:
    assert part in last, f"{part!r} not in {last!r}"
  for path, data in outcome["before"].items():
    assert outcome["after"].get(path) == data, f"{path} changed or vanished"


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_bad_input_is_rejected_in_one_line_and_workdir_kept(outcomes, case):
  _assert_rejected(outcomes[case], BY_ID[case][2])
