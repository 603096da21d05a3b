"""End-to-end bad input: `launch.py` must reject it with exit status 2, one line `error: <where>: <problem>` naming
the file or key (besides log records), no traceback, and leave an existing workdir exactly as it was.

A data case copies a valid 12-case phantom in the MSD layout (16 x 16 x 4..8 voxels) and breaks one thing; a config
case sets one bad value that `config_lib.validate` rejects, without a data folder. Each runs
`launch.py --config=configs/hippocampus.py:tiny` (tiny split: 6 train, 1 val, 2 test; 4 steps with 1 warmup; budget 6
at 1 or 2 slices per volume, fixed, plus the reference; a 2-stage U-Net on 48 x 64 slices) in a process of its own,
forked by `tests/launch_forks.py` after one import of jax and slicejax, which would otherwise take most of each
launch's time. The one launch that trains runs as `python launch.py` in a fresh process.
"""

import gzip
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from slicejax import config as config_lib
from slicejax.data import phantom
import launch_forks

pytestmark = pytest.mark.slow  # every test here runs for seconds: launches, subprocesses or whole reports

REPO = pathlib.Path(__file__).resolve().parent.parent
CASE = "phantom_003.nii.gz"
IMAGE = f"imagesTr/{CASE}"
LABEL = f"labelsTr/{CASE}"
SENTINEL_ROW = {"name": "2d_b6_s6_rho1_fixed_seed9", "dims": 2, "budget": 6, "volumes": 6, "slices_per_volume": 1,
                "selection": "fixed", "interpolation": False, "seed": 9, "reference": False, "dice_mean": 0.5}
# A finished run of another config, which no rejected launch may touch.
SENTINEL_CONFIG = {"seed": 9, "train": {"steps": 3}}
# absl's log record prefix, e.g. "E1129 12:59:18.399208 140523023641472 launch.py:70] ".
LOG_RECORD = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")


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
    ("dataset_json_training_not_a_list", _edit_json(lambda meta: meta.update(training="all")), (),
     ("dataset.json", "'training' must be a list")),
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
    ("missing_data_root", None, ("--config.data.root=",), ("config.data.root", "no data folder")),
    ("misspelt_config_key", _keep, ("--config.trian.steps=3",), ("trian", "train")),
] + [(case_id, None, flags, (f"error: {line}",)) for case_id, flags, line in [
    # Config values, each rejected by `config_lib.validate` before anything is read or written; the whole line.
    ("warmup_not_below_steps", ("--config.train.steps=20", "--config.train.warmup_steps=50"),
     "config.train.warmup_steps: must be < config.train.steps (20), got 50"),
    ("zero_batch_size", ("--config.train.batch_size=0",), "config.train.batch_size: must be >= 1, got 0"),
    ("negative_learning_rate", ("--config.train.learning_rate=-1",),
     "config.train.learning_rate: must be > 0, got -1.0"),
    ("final_lr_fraction_above_1", ("--config.train.final_lr_fraction=2",),
     "config.train.final_lr_fraction: must be in [0, 1], got 2.0"),
    ("no_loss", ("--config.train.ce_weight=0", "--config.train.dice_weight=0"),
     "config.train.dice_weight: must be > 0 when config.train.ce_weight is 0 (the loss would be 0)"),
    ("reversed_scale_range", ("--config.train.augment.scale_range=(1.2, 0.8)",),
     "config.train.augment.scale_range: must be two numbers (lo, hi) with 0 < lo <= hi, got (1.2, 0.8)"),
    ("unknown_norm", ("--config.model.norm=banana",),
     "config.model.norm: must be one of instance, group, none, got 'banana'"),
    ("unknown_model", ("--config.model.name=nope",), "config.model.name: must be one of unet, got 'nope'"),
    ("shape_not_divisible", ("--config.data.shape=(47, 64)",), "config.data.shape: must be () or two positive "
     "integers divisible by 2 (2**(config.model.num_stages - 1)), got (47, 64)"),
    ("slicing_axis_out_of_range", ("--config.data.slicing_axis=3",),
     "config.data.slicing_axis: must be in [0, 2], got 3"),
    ("zero_budget", ("--config.study.budgets=(0,)",),
     "config.study.budgets: must be a tuple of positive integers, got (0,)"),
    ("budget_as_text", ("--config.study.budgets=('6',)",),
     "config.study.budgets: must be a tuple of positive integers, got ('6',)"),
    ("unknown_selection", ("--config.study.selections=('nope',)",),
     "config.study.selections: must name modules of slicejax/study/selection (annotated, ensemble, entropy, fixed, hybrid, passive, random, ual), got 'nope'"),
    ("reversed_roi", ("--config.study.roi=(0.6, 0.4)",),
     "config.study.roi: must be () or two fractions (lo, hi) with 0 <= lo < hi <= 1, got (0.6, 0.4)"),
    ("negative_interpolation_weight", ("--config.interpolation.weight=-1",),
     "config.interpolation.weight: must be >= 0, got -1.0"),
    ("three_d_patch_not_divisible", ("--config.study.dims=(2, 3)", "--config.three_d.patch=(48, 50, 48)"),
     "config.three_d.patch: must be divisible along each axis by the product of config.three_d.strides (8, 8, 8), "
     "got (48, 50, 48)"),
    ("unknown_ual_method", ("--config.study.selections=('ual',)", "--config.ual.method=kmedoids"),
     "config.ual.method: must be one of kmeans, kcenter, typiclust, got 'kmedoids'"),
    ("misspelt_strategy", ("--config.model_axis.strategy=vmapp",),
     "config.model_axis.strategy: must be one of auto, vmap, loop, sequential, mesh, got 'vmapp'"),
]]
BY_ID = {c[0]: c[1:] for c in CASES}


def _snapshot(folder: pathlib.Path) -> dict:
  return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _launch(workdir: pathlib.Path, flags, cache: pathlib.Path) -> subprocess.CompletedProcess:
  # The cache (preprocessed volumes) goes to the test's own folder, not the user's.
  return subprocess.run(
      [sys.executable, "launch.py", "--config=configs/hippocampus.py:tiny", f"--workdir={workdir}", *flags],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu", SLICEJAX_CACHE=str(cache)), capture_output=True, text=True,
      timeout=300)


def _prepare_case(case_id: str, folder: pathlib.Path, template: pathlib.Path):
  """Builds the case's input and workdir in `folder`; returns (its launch, the workdir, the workdir's snapshot)."""
  breaker, flags, _ = BY_ID[case_id]
  if breaker is not None:
    root = folder / "msd"
    shutil.copytree(template, root)
    breaker(root)
    flags = (f"--config.data.root={root}",) + flags
  # A workdir holding a finished run of another config and an unrelated file, which a rejected launch must leave
  # as they are.
  workdir = folder / "wd"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(SENTINEL_CONFIG) + "\n")
  (workdir / "results.jsonl").write_text(json.dumps(SENTINEL_ROW) + "\n")
  (workdir / "keep.txt").write_text("left alone\n")
  launch = launch_forks.Launch(("--config=configs/hippocampus.py:tiny", f"--workdir={workdir}", *flags),
                               {"SLICEJAX_CACHE": folder / "cache"})
  return launch, workdir, _snapshot(workdir)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> pathlib.Path:
  return phantom.write_phantom(tmp_path_factory.mktemp("template") / "msd", num_cases=12, shape=(16, 16, 8))


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory, template) -> dict:
  """Case id -> {"result", "before", "after"} (the launch and its workdir's snapshots), for the cases selected."""
  wanted = sorted({item.callspec.params["case"] for item in request.session.items
                   if item.module is request.module and hasattr(item, "callspec")})
  prepared = [_prepare_case(case_id, tmp_path_factory.mktemp(case_id), template) for case_id in wanted]
  results = launch_forks.run([launch for launch, _, _ in prepared])
  return {case_id: {"result": result, "before": before, "after": _snapshot(workdir)}
          for case_id, result, (_, workdir, before) in zip(wanted, results, prepared)}


def _message_lines(stderr: str) -> list:
  """The lines of stderr that are not absl log records."""
  return [line for line in stderr.splitlines() if line.strip() and not LOG_RECORD.match(line)]


def _assert_rejected(outcome, expected):
  result = outcome["result"]
  assert result.returncode == 2, f"exit status {result.returncode}; stderr ends:\n{result.stderr[-2000:]}"
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  lines = _message_lines(result.stderr)
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  for part in expected:
    assert part in lines[0], f"{part!r} not in {lines[0]!r}"
  assert outcome["after"] == outcome["before"], "the workdir changed"


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_bad_input_is_rejected_in_one_line_and_workdir_kept(outcomes, case):
  _assert_rejected(outcomes[case], BY_ID[case][2])


def test_refused_launch_then_corrected_one_runs_in_the_same_workdir(tmp_path, template):
  # The workdir of an earlier launch that failed after writing its config.json: nothing trained there.
  workdir = tmp_path / "wd"
  workdir.mkdir()
  failed = config_lib.load("configs/hippocampus.py:tiny")
  failed.data.root = str(template)
  failed.train.learning_rate = 1.0
  (workdir / "config.json").write_text(failed.to_json_best_effort())
  (workdir / "results.jsonl").write_text("")
  before = _snapshot(workdir)
  flags = (f"--config.data.root={template}",)

  refused = _launch(workdir, flags + ("--config.train.warmup_steps=50",), tmp_path / "cache")
  _assert_rejected({"result": refused, "before": before, "after": _snapshot(workdir)},
                   ("error: config.train.warmup_steps: must be < config.train.steps (4), got 50",))

  corrected = _launch(workdir, flags + ("--config.train.warmup_steps=2",), tmp_path / "cache")
  assert corrected.returncode == 0, corrected.stderr[-3000:]
  assert f"Replaced {workdir}/config.json: it held a different config (keys differ: train.learning_rate, " \
         "train.warmup_steps)" in corrected.stderr
  config = json.loads((workdir / "config.json").read_text())
  assert (config["train"]["learning_rate"], config["train"]["warmup_steps"]) == (3e-3, 2)
  rows = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
  assert [r["name"] for r in rows] == ["2d_b6_s6_rho1_fixed_seed0", "2d_b6_s3_rho2_fixed_seed0", "2d_reference_seed0"]
