"""Tests for slicejax.data.resample and resampled loading: grids by hand, exact round trips of blocky labels, nearest
interpolation across coarse slices, scoring on the original grid."""

import json
import pathlib

import nibabel as nib
import numpy as np

from slicejax.data import index as index_lib
from slicejax.data import load as data
from slicejax.data import nifti
from slicejax.data import resample
from slicejax.evaluation import metrics


def test_target_grid_by_hand():
  # 20 x 3.6 mm -> 1.8 mm: 40 voxels; 101 x 0.6 mm -> 1.2 mm: round(50.5) = 50 voxels of 1.212 mm; 0 keeps an axis.
  shape, spacing = resample.target_grid((20, 101, 7), (3.6, 0.6, 0.5), (1.8, 1.2, 0))
  assert shape == (40, 50, 7)
  np.testing.assert_allclose(spacing, (1.8, 101 * 0.6 / 50, 0.5), rtol=1e-12)
  assert resample.target_grid((4, 5, 6), (1., 2., 3.), ()) == ((4, 5, 6), (1., 2., 3.))
  assert resample.coarse_axis((0.6, 0.6, 3.6)) == 2 and resample.coarse_axis((1., 1., 3.)) is None


def test_blocky_labels_round_trip_exactly():
  rng = np.random.default_rng(0)
  blocks = rng.integers(0, 3, (3, 4, 5)).astype(np.uint8)
  # Nearest: 2 x 2 x 2 blocks. Going back, voxel 2j + {0, 1} samples j -/+ 0.25, nearest to j.
  label = blocks.repeat(2, 0).repeat(2, 1).repeat(2, 2)
  down = resample.resample_label(label, (3, 4, 5), (1., 1., 1.), method="nearest")
  np.testing.assert_array_equal(down, blocks)
  np.testing.assert_array_equal(resample.resample_label(down, label.shape, (2., 2., 2.), method="nearest"), label)
  # Per-class linear: 2 x 2 blocks in-plane. Going back, the nearest block weighs 0.75**2 = 0.5625 > 1/2.
  label = blocks.repeat(2, 1).repeat(2, 2)
  down = resample.resample_label(label, (3, 4, 5), (1., 1., 1.))
  np.testing.assert_array_equal(down, blocks)
  back = resample.resample_label(down, label.shape, (1., 2., 2.))
  np.testing.assert_array_equal(back, label)
  assert back.dtype == np.uint8


def test_coarse_axis_is_resampled_by_nearest_neighbour():
  # 0.6 x 0.6 x 3.6 mm: along the coarse axis 2 slices become 4 without blending (values stay 0 and 10).
  image = np.zeros((8, 8, 2, 1))
  image[:, :, 1] = 10.
  out = resample.resample_image(image, (4, 4, 4), (0.6, 0.6, 3.6))
  assert out.shape == (4, 4, 4, 1) and out.dtype == np.float32
  np.testing.assert_allclose(out[..., 0], np.repeat([[[0., 0., 10., 10.]]], 4, 0).repeat(4, 1), atol=1e-5)
  # Isotropic: cubic splines everywhere; a constant stays constant.
  np.testing.assert_allclose(resample.resample_image(np.full((4, 6, 5, 2), 3.), (8, 3, 5), (1., 1., 1.)), 3.,
                             rtol=1e-6)


def _prostate_like(root):
  """Two cases, two channels (4D, MSD layout), 0.6 x 0.6 x 3.6 mm, labels constant on 2 x 2 in-plane blocks."""
  root = pathlib.Path(root)
  (root / "imagesTr").mkdir(parents=True)
  (root / "labelsTr").mkdir()
  affine = np.diag([0.6, 0.6, 3.6, 1.])
  rng = np.random.default_rng(1)
  training, labels = [], {}
  for i in range(2):
    case = f"prostate_{i:02d}"
    label = rng.integers(0, 3, (6, 5, 4)).astype(np.uint8).repeat(2, 0).repeat(2, 1)  # [12, 10, 4]
    image = np.stack([label * 30. + rng.normal(0, 1, label.shape), rng.normal(0, 1, label.shape)], -1)
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(root / "imagesTr" / f"{case}.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / f"{case}.nii.gz"))
    training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    labels[case] = label
  meta = {"modality": {"0": "T2", "1": "ADC"}, "labels": {"0": "background", "1": "PZ", "2": "TZ"},
          "training": training}
  (root / "dataset.json").write_text(json.dumps(meta))
  return root, labels


def test_prostate_like_volume_resampled_scores_dice_one_on_its_original_grid(tmp_path):
  root, labels = _prostate_like(tmp_path / "prostate")
  index = index_lib.index_msd(root, slicing_axis=2, target_spacing=(1.2, 1.2, 0))
  case = index.cases[0]
  assert case.shape == (4, 6, 5) and case.original_shape == (4, 12, 10) and case.resampled
  np.testing.assert_allclose(case.spacing, (3.6, 1.2, 1.2))
  cache = tmp_path / "cache"
  for cache_dir in (None, cache, cache):  # cold, then written to and read from the cache
    ds = data.load_volumes(index, cache_dir=cache_dir)
    for vol in ds.volumes:
      truth = np.moveaxis(labels[vol.case_id], 2, 0)
      assert vol.image.shape == (4, 6, 5, 2) and vol.label.shape == (4, 6, 5)
      np.testing.assert_array_equal(vol.original_label, truth)
      np.testing.assert_allclose(vol.original_spacing, (3.6, 0.6, 0.6), rtol=1e-7)  # float32 in the header
      assert vol.original_shape == (12, 10, 4)
      # A perfect prediction on the resampled grid, scored where the files are.
      prediction, truth_back, spacing = resample.on_original_grid(vol.label, vol)
      np.testing.assert_array_equal(truth_back, truth)
      np.testing.assert_array_equal(metrics.dice_per_class(prediction, truth_back, 3), [1., 1.])
      assert spacing == vol.original_spacing
  # Predictions are written on the files' grid with their affine.
  vol = ds.volumes[0]
  on_files = nifti.to_nifti_order(resample.to_original(vol.label, vol), vol.slicing_axis)
  label_file = nifti.load(root / "labelsTr" / f"{vol.case_id}.nii.gz")
  written = nib.load(nifti.save_like(tmp_path / "p.nii.gz", on_files, label_file))
  np.testing.assert_array_equal(np.asarray(written.dataobj), labels[vol.case_id])
  np.testing.assert_array_equal(written.affine, vol.affine)


def test_not_resampled_volumes_carry_no_original_label(tmp_path):
  root, _ = _prostate_like(tmp_path / "prostate")
  for target in ((), (0.6, 0.6, 3.6)):
    vol = data.load_msd(root, target_spacing=target).volumes[0]
    assert vol.original_label is None and vol.original_spacing is None and not vol.resampled
    prediction, truth, spacing = resample.on_original_grid(vol.label, vol)
    assert truth is vol.label and spacing == vol.spacing


def test_source_planes_follow_the_resampling():
  # 20 file planes at 2 mm resampled to 10 at 4 mm: plane i is centred at file coordinate 2 i + 0.5.
  linear = resample.source_planes(20, 10, coarse=False)
  assert linear[1] == (2, 3) and linear[4] == (8, 9) and linear[0] == (0, 1)
  # Nearest along a coarse axis: one plane each, the one `_resize` reads.
  ramp = np.arange(20.0)[:, None, None]
  nearest = resample.source_planes(20, 10, coarse=True)
  assert [p for (p,) in nearest] == [int(v) for v in resample._resize(ramp, (10, 1, 1), (0,), 0)[:, 0, 0]]


def test_an_ignore_label_is_not_resampled_as_a_class():
  # Planes 2, 3, 8 and 9 of 20 annotated (class 1 in a square, 0 around), the rest ignore (3); isotropic 2 mm.
  label = np.full((20, 8, 8), 3, np.uint8)
  for plane in (2, 3, 8, 9):
    label[plane] = 0
    label[plane, 2:6, 2:6] = 1
  out = resample.resample_label(label, (10, 8, 8), (2.0, 2.0, 2.0), ignore=3)
  annotated = [i for i in range(10) if np.all(out[i] != 3)]
  assert annotated == [1, 4] and np.all(out[[0, 2, 3, 5, 6, 7, 8, 9]] == 3)
  np.testing.assert_array_equal(out[1], label[2])
  # Only plane 2 annotated: resampled plane 1 mixes an unannotated plane in, so it is not annotated.
  label[3] = 3
  assert np.all(resample.resample_label(label, (10, 8, 8), (2.0, 2.0, 2.0), ignore=3)[1] == 3)
