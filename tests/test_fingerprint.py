"""Tests for slicejax.data.fingerprint and configs/msd.py: derived settings, and runs on generated datasets that no config
was written for (MSD and nnU-Net v2 layouts, two channels, three classes)."""

import json
import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from slicejax import config as config_lib
from slicejax.data import fingerprint
from slicejax.data import split as split_lib
from slicejax.report import results

REPO = pathlib.Path(__file__).resolve().parent.parent


def write_dataset(root, layout, *, num_cases=8, shape=(16, 16, 8), spacing=(1., 1., 3.), channels=("T2", "ADC"),
                  classes=("background", "a", "b"), seed=0):
  """A generated dataset in the "msd" (4D images, `training` list) or "v2" (channel files) layout; returns root.

  Each case holds an ellipsoid of class 1 around a smaller one of class 2; channel k is `label * (40 + 10 k) + 100`
  plus Gaussian noise of std 5.
  """
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  affine = np.diag(list(spacing) + [1.])
  (root / "imagesTr").mkdir(parents=True)
  (root / "labelsTr").mkdir()
  grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
  training = []
  for i in range(num_cases):
    case = f"case_{i:03d}"
    centre = np.array(shape) / 2 + rng.uniform(-1, 1, 3)
    label = np.zeros(shape, np.uint8)
    for value, radii in ((1, (5, 5, 3)), (2, (2.5, 2.5, 1.5))):
      if value < len(classes):
        label[sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1] = value
    images = [(label * (40. + 10 * k) + rng.normal(0, 5, shape) + 100).astype(np.float32)
              for k in range(len(channels))]
    nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / f"{case}.nii.gz"))
    if layout == "msd":
      nib.save(nib.Nifti1Image(np.stack(images, -1), affine), str(root / "imagesTr" / f"{case}.nii.gz"))
      training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    else:
      for k, image in enumerate(images):
        nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / f"{case}_{k:04d}.nii.gz"))
  if layout == "msd":
    meta = {"name": "Gen", "modality": {str(k): n for k, n in enumerate(channels)},
            "labels": {str(k): n for k, n in enumerate(classes)}, "training": training}
  else:
    meta = {"name": "Gen", "channel_names": {str(k): n for k, n in enumerate(channels)},
            "labels": {n: k for k, n in enumerate(classes)}, "numTraining": num_cases, "file_ending": ".nii.gz"}
  (root / "dataset.json").write_text(json.dumps(meta))
  return root


def _fingerprint(spacings, shapes, channels=("T2",), intensity=(None,)):
  n = len(spacings)
  return fingerprint.Fingerprint(name="x", root="/x", case_ids=tuple(f"c{i}" for i in range(n)),
                                 class_names=("background", "a"), channel_names=channels, ignore_label=None,
                                 shapes=np.array(shapes), spacings=np.array(spacings, np.float64),
                                 intensity=intensity)


def test_derived_settings_by_hand():
  # Prostate-like, coarse along NIfTI axis 0: 3.6 mm slices (one case 4.0), 0.6 mm in-plane (one case 0.65).
  spacings = [(3.6, 0.6, 0.6)] * 8 + [(4.0, 0.65, 0.6), (3.6, 0.6, 0.6)]
  shapes = [(20, 100, 90)] * 10
  fp = _fingerprint(spacings, shapes)
  assert fingerprint.slicing_axis(fp) == 0
  assert fingerprint.target_spacing(fp) == (3.6, 0.6, 0.6)
  # Case 8 resamples to (round(20 * 4 / 3.6), round(100 * 0.65 / 0.6), 90) = (22, 108, 90); medians (20, 100, 90),
  # rounded up to multiples of 8 for 4 stages.
  assert fingerprint.in_plane_shape(fp, 0, (3.6, 0.6, 0.6), 4) == (104, 96)
  assert fingerprint.in_plane_shape(fp, 0, (), 1) == (100, 90)
  # 10 cases: 1 validation, 2 test, 7 training; b = round(0.2 * 7) = 1; depth 20 -> rho up to 8.
  assert fingerprint.split(fp) == {"train": 7, "val": 1, "test": 2}
  assert fingerprint.slices_per_volume(fp, 0, ()) == (1, 2, 4, 8)
  assert fingerprint.budgets(fp, 0, (), 7) == (1, 2, 4, 8)
  assert fingerprint.normalization(fp) == "zscore"
  # Isotropic: axis 2; every case at the median spacing: nothing to resample.
  iso = _fingerprint([(1., 1., 1.)] * 3, [(35, 50, 36)] * 3)
  assert fingerprint.slicing_axis(iso) == 2 and fingerprint.target_spacing(iso) == ()
  assert fingerprint.split(iso) == {"train": 2, "val": 0, "test": 1}  # 3 cases: no validation
  assert fingerprint.slices_per_volume(iso, 2, ()) == (1, 2, 4, 8, 16)
  assert fingerprint.budgets(iso, 2, (), 1) == (1, 2, 4, 8)  # 8 = 8 slices x 1 volume of a pool of 1


def test_ct_channel_statistics_are_foreground_percentiles_mean_and_std_of_the_training_pool(tmp_path):
  root = write_dataset(tmp_path / "ct", "v2", num_cases=5, channels=("CT", "T2"))
  ids = [f"case_{i:03d}" for i in range(5)]
  split = split_lib.split_cases(ids, num_train=3, num_val=1, num_test=1, seed=0)  # the derived split of 5 cases
  # The validation and test cases get extreme intensities: none of them may reach the statistics.
  for case in split["val"] + split["test"]:
    path = root / "imagesTr" / f"{case}_0000.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) + 5000, img.affine), path)
  fp = fingerprint.compute(root)
  values = []
  for case in split["train"]:
    label = np.asarray(nib.load(root / "labelsTr" / f"{case}.nii.gz").dataobj)
    image = np.asarray(nib.load(root / "imagesTr" / f"{case}_0000.nii.gz").dataobj, np.float64)
    values.append(image[label > 0])  # fewer than SAMPLES_PER_CASE: every foreground voxel
  values = np.concatenate(values)
  stats = fp.intensity[0]
  np.testing.assert_allclose(stats["percentiles"], np.percentile(values, (0.5, 99.5)), rtol=1e-12)
  np.testing.assert_allclose((stats["mean"], stats["std"]), (values.mean(), values.std()), rtol=1e-12)
  assert fp.intensity[1] is None
  lo, hi = stats["percentiles"]
  assert fingerprint.normalization(fp) == f"ct:{lo:.6g}:{hi:.6g}:{values.mean():.6g}:{values.std():.6g},zscore"
  assert stats["percentiles"][1] < 1000
  # Another split's pool gives that pool's statistics: every case but the first test case trains.
  other = fingerprint.normalization(fp, 4, 0, 1, 0)
  assert other != fingerprint.normalization(fp) and float(other.split(":")[2]) > 1000


def test_msd_config_follows_the_root_and_overrides_win(tmp_path):
  root = write_dataset(tmp_path / "ds", "v2", num_cases=10, shape=(12, 20, 8))
  config = config_lib.load("configs/msd.py:tiny")
  assert config.data.split.train == 180 and config.data.shape == ()  # no root yet: the base values
  config.data.root = str(root)
  config_lib.validate(config)
  assert (config.data.slicing_axis, config.data.target_spacing, config.data.shape) == (2, (), (12, 20))
  assert dict(config.data.split) == {"train": 7, "val": 1, "test": 2, "seed": 0}
  assert (config.study.budgets, config.study.slices_per_volume) == ((1,), (1, 2))
  config.data.slicing_axis = 0  # an override; what depends on it follows
  assert config.data.shape == (20, 8) and config.study.slices_per_volume == (1, 2)
  config.data.split.train = 5
  assert config.data.split.train == 5 and config.study.budgets == (1,)


def test_sparse_config_takes_the_data_settings_and_keeps_its_split_and_grid(tmp_path):
  root = write_dataset(tmp_path / "ds", "v2", num_cases=10, shape=(12, 20, 8))
  config = config_lib.load("configs/sparse.py")
  config.data.root = str(root)
  config_lib.validate(config)
  assert (config.data.slicing_axis, config.data.target_spacing, config.data.shape) == (2, (), (12, 20))
  assert dict(config.data.split) == {"train": 0, "val": 0, "test": 1, "seed": 0}
  assert (config.study.budgets, config.study.selections) == ((), ("annotated",))
  config.data.slicing_axis = 0
  assert config.data.shape == (20, 8)


@pytest.mark.parametrize("layout", ["msd", "v2"])
@pytest.mark.slow
def test_launch_on_a_dataset_no_config_was_written_for(tmp_path, layout):
  root = write_dataset(tmp_path / layout, layout)
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/msd.py:tiny", f"--config.data.root={root}",
       f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "derived: slicing_axis 2, target_spacing () (kept), shape (16, 16)" in result.stdout
  rows = results.read_rows(workdir / "results.jsonl")
  # 8 cases: 5 / 1 / 2; b = round(0.2 * 5) = 1 slice; tiny keeps rho (1, 2), and 1 / 2 is no whole volume.
  assert [r["name"] for r in rows] == ["2d_b1_s1_rho1_random_seed0"]
  saved = json.loads((workdir / "config.json").read_text())["data"]
  assert saved["split"] == {"train": 5, "val": 1, "test": 2, "seed": 0} and saved["shape"] == [16, 16]


def test_the_quick_recipe_scales_training_encoder_and_evaluations():
  from slicejax import config as config_lib  # configs/msd.py:quick as launch.py loads it
  quick, full = config_lib.load("configs/msd.py:quick"), config_lib.load("configs/msd.py")
  assert (quick.train.steps, quick.train.batch_size, quick.model.features) == (100, 4, 8)
  assert (quick.ual.encoder.steps, quick.eval.curve_points, quick.eval.curve_volumes) == (50, 2, 2)
  assert not quick.eval.surface_metrics and full.eval.surface_metrics
  assert quick.study.selections == full.study.selections == ("random", "fixed", "ual")
  assert quick.study.seeds == (0,) and quick.study.reference
  assert full.train.steps == 2000 and full.ual.encoder.steps == 400


def test_coarse_target_spacing_caps_the_median_plane():
  # Two cases of 256 x 200 x 20 at 0.5 x 0.5 x 3 mm: slicing along the coarse axis 2; the plane becomes 128 x 100.
  fp = fingerprint.Fingerprint(
      name="n", root="r", case_ids=("a", "b"), class_names=("background", "x"), channel_names=("MRI",),
      ignore_label=None, shapes=np.array([[256, 200, 20]] * 2), spacings=np.array([[0.5, 0.5, 3.0]] * 2),
      intensity=(None,))
  assert fingerprint.coarse_target_spacing(fp, 128) == (1.0, 1.0, 3.0)  # one factor, 2: the plane keeps its aspect
  assert fingerprint.coarse_target_spacing(fp, 512) == ()


def test_an_undeclared_label_value_is_refused_not_counted_as_foreground(tmp_path):
  from slicejax.errors import InputError  # the one-line refusal
  root = write_dataset(tmp_path / "ct", "v2", num_cases=5, channels=("CT",))
  path = root / "labelsTr" / "case_001.nii.gz"
  img = nib.load(path)
  label = np.asarray(img.dataobj).copy()
  label[0, 0, 0] = 7
  nib.save(nib.Nifti1Image(label, img.affine), path)
  with pytest.raises(InputError, match=r"case_001.nii.gz: label values \[7\] are not declared"):
    fingerprint.compute(root)
