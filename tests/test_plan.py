"""Annotation plans (`slicejax.modes.plan`): exact budgets, the named allocation and selection, reproducibility, templates
on the image's grid, the study's best cell, and one-line errors."""

import json
import os
import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from slicejax import config as config_lib
from slicejax.data import phantom
from slicejax.errors import InputError
from slicejax.modes import plan as plan_lib
from slicejax.study import grid as study
from slicejax.study.selection import fixed

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """A 6-case phantom (16 x 16 x 4-8 voxels) in the MSD layout; its labels are not used by plans."""
  return phantom.write_phantom(tmp_path_factory.mktemp("plan") / "msd", num_cases=6, shape=(16, 16, 8))


def plan_config(root, **plan):
  config = config_lib.load(str(ROOT / "configs/plan.py"))
  config.data.root = str(root)
  config.plan.update(dict(budget=4, volumes=2, selection="fixed", seed=3), **plan)
  return config


def test_plan_lists_exactly_the_budget_with_the_allocation_and_selection(images):
  built = plan_lib.build(plan_config(images))
  plan = built["plan"]
  assert sum(map(len, plan.values())) == 4 == len(built["rows"])
  assert len(plan) == 2 and all(len(s) == 2 for s in plan.values())
  # The volumes of a study point of seed 3, and fixed's slices from the study's per-volume stream.
  depths = built["images"].depths()
  assert sorted(plan) == study.choose_volumes(list(depths), 2, 3)
  for case, slices in plan.items():
    assert slices == fixed.select(depths[case], 2, study.slice_rng(3, case, 2)).tolist()
  assert [r["order"] for r in built["rows"]] == [1, 2, 3, 4]
  assert [(r["case_id"], r["slice"]) for r in built["rows"]] == [(c, s) for c in sorted(plan) for s in plan[c]]
  assert built["meta"]["ignore_label"] == 3 and built["meta"]["class_names"] == ["background", "core", "rim"]


def test_plan_is_reproducible_and_templates_carry_the_geometry(images, tmp_path):
  config = plan_config(images)
  first = plan_lib.run(config, tmp_path / "a")
  plan_lib.run(config, tmp_path / "b")
  for name in ("plan.json", "plan.csv"):
    assert (tmp_path / "a" / name).read_text().replace(str(tmp_path / "a"), "") == \
        (tmp_path / "b" / name).read_text().replace(str(tmp_path / "b"), "")
  assert (tmp_path / "a" / "contact_sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  for case, slices in first["plan"].items():
    image = nib.load(images / "imagesTr" / f"{case}.nii.gz")
    template = nib.load(tmp_path / "a" / "templates" / f"{case}.nii.gz")
    np.testing.assert_array_equal(template.affine, image.affine)
    assert template.shape == image.shape and template.header.get_zooms() == image.header.get_zooms()
    assert template.header["sform_code"] == image.header["sform_code"]
    assert template.header["qform_code"] == image.header["qform_code"]
    data = np.asarray(template.dataobj)
    assert data.dtype == np.uint8
    expected = np.full(image.shape, 3, np.uint8)
    expected[:, :, slices] = 0  # slicing axis 2
    np.testing.assert_array_equal(data, expected)


@pytest.mark.slow
def test_ual_plans_need_no_labels_and_respect_the_budget(images, tmp_path):
  plain = tmp_path / "plain"
  plain.mkdir()
  for path in sorted((images / "imagesTr").glob("*.nii.gz")):
    (plain / path.name).write_bytes(path.read_bytes())
  config = plan_config(plain, selection="ual", classes=("background", "tissue"))
  config.ual.encoder.update(features=(4, 8), steps=2, batch_size=8, embedding_dim=8, projection_dim=8)
  config.data.cache_dir = str(tmp_path / "cache")
  built = plan_lib.build(config)
  assert sum(map(len, built["plan"].values())) == 4 and len(built["plan"]) == 2
  assert built["meta"]["ignore_label"] == 2
  assert built["plan"] == plan_lib.build(config)["plan"]


def test_best_cell_of_a_study(images, tmp_path):
  rows = [dict(dims=2, budget=4, volumes=v, slices_per_volume=4 // v, selection=sel, interpolation=False, seed=seed,
               reference=False, dice_mean=dice)
          for v, sel, seed, dice in [(2, "fixed", 0, 0.5), (2, "fixed", 1, 0.7), (4, "random", 0, 0.8),
                                     (4, "random", 1, 0.2), (1, "random", 0, 0.55), (1, "random", 1, 0.6)]]
  rows.append(dict(dims=2, budget=8, volumes=4, slices_per_volume=2, selection="fixed", interpolation=False, seed=0,
                   reference=False, dice_mean=0.99))
  (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  built = plan_lib.build(plan_config(images, from_study=str(tmp_path), volumes=1, selection="random"))
  # Means at budget 4: fixed s=2 0.6, random s=4 0.5, random s=1 0.575.
  assert (built["meta"]["volumes"], built["meta"]["slices_per_volume"], built["meta"]["selection"]) == (2, 2, "fixed")
  assert built["meta"]["from_study"]["dice_mean"] == pytest.approx(0.6)
  with pytest.raises(InputError, match="no sparse results at budget 5"):
    plan_lib.build(plan_config(images, from_study=str(tmp_path), budget=5))


@pytest.mark.parametrize("overrides, message", [
    (["--config.plan.volumes=3"], "config.plan.volumes: 3 volumes do not split budget 4"),
    (["--config.plan.budget=40", "--config.plan.volumes=10"], "config.plan.volumes: 10 volumes exceed the 6"),
    (["--config.plan.selection=best"], "config.plan.selection: must name modules of slicejax/study/selection"),
])
@pytest.mark.slow
def test_bad_plans_exit_2_with_one_line(images, tmp_path, overrides, message):
  result = subprocess.run(
      [sys.executable, str(ROOT / "launch.py"), "--mode=plan", f"--config={ROOT / 'configs/plan.py'}",
       f"--config.data.root={images}", "--config.plan.budget=4", "--config.plan.volumes=2", *overrides,
       f"--workdir={tmp_path / 'out'}"], capture_output=True, text=True, env=os.environ)
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: {message}")
  assert len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "out").exists()


def test_a_folder_without_classes_asks_for_them(images, tmp_path):
  plain = tmp_path / "plain"
  plain.mkdir()
  path = next((images / "imagesTr").glob("*.nii.gz"))
  (plain / path.name).write_bytes(path.read_bytes())
  with pytest.raises(InputError, match="config.plan.classes"):
    plan_lib.build(plan_config(plain, budget=2, volumes=1))


@pytest.mark.parametrize("selection", ["random", "fixed"])
def test_blank_slices_are_never_planned(images, tmp_path, selection):
  # Every image with its first two and last slices blanked (all zero): those are outside the nonzero region.
  blank = tmp_path / "blank"
  blank.mkdir()
  for path in sorted((images / "imagesTr").glob("*.nii.gz")):
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    data[:, :, :2] = 0
    data[:, :, -1] = 0
    nib.save(nib.Nifti1Image(data, img.affine, img.header), blank / path.name)
  built = plan_lib.build(plan_config(blank, classes=("background", "core", "rim"), budget=18, volumes=6,
                                     selection=selection))
  depths = built["images"].depths()
  assert built["meta"]["offered"] == {case: [2, depth - 1] for case, depth in sorted(depths.items())}
  for case, slices in built["plan"].items():
    assert len(slices) == 3 and all(2 <= s < depths[case] - 1 for s in slices), (case, slices)
    assert built["meta"]["cases"][case]["offered"] == [2, depths[case] - 1]
  # Fixed interval over the offered slices: the same as over a volume of that many slices, shifted.
  if selection == "fixed":
    for case, slices in built["plan"].items():
      want = fixed.select(depths[case] - 3, 3, study.slice_rng(3, case, 3)) + 2
      assert slices == want.tolist()


def test_a_plain_folder_of_channel_files_groups_them_into_cases(tmp_path):
  from slicejax.data import index as index_lib  # the reader of image folders
  root = phantom.write_phantom(tmp_path / "msd", num_cases=3, shape=(16, 16, 8), num_channels=2)
  folder = tmp_path / "channels"
  folder.mkdir()
  for path in sorted((root / "imagesTr").glob("*.nii.gz")):
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    for c in range(2):
      nib.save(nib.Nifti1Image(data[..., c], img.affine), folder / f"{path.name[:-7]}_{c:04d}.nii.gz")
  images = index_lib.index_images(folder)
  assert [c.case_id for c in images.cases] == ["phantom_000", "phantom_001", "phantom_002"]
  assert [c.num_channels for c in images.cases] == [2, 2, 2]
  # The same cases and voxels as the 4D originals.
  original = index_lib.index_images(root)
  np.testing.assert_array_equal(index_lib.read_case(images.cases[1], 2), index_lib.read_case(original.cases[1], 2))
  # Numbered cases of one name are cases, not channels of one case.
  numbered = tmp_path / "numbered"
  numbered.mkdir()
  for i, path in enumerate(sorted(folder.glob("*_0000.nii.gz"))):
    (numbered / f"scan_{i:04d}.nii.gz").write_bytes(path.read_bytes())
  assert [c.case_id for c in index_lib.index_images(numbered).cases] == ["scan_0000", "scan_0001", "scan_0002"]
