"""Tests for slicejax.convert: generated files that mimic each dataset's native layout, converted and read back."""

import json
import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from slicejax.convert import atlas
from slicejax.convert import lits
from slicejax.data import load as data
from slicejax.errors import InputError

REPO = pathlib.Path(__file__).resolve().parent.parent
AFFINE = np.diag([0.8, 0.8, 2.5, 1.])


def _save(path, array, affine=AFFINE):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(array, affine), str(path))


def _lits(src):
  """Two LiTS volumes over two batch folders, uncompressed, float segmentations as in the release."""
  rng = np.random.default_rng(0)
  cases = {}
  for n, batch in ((0, "Training Batch 1"), (28, "Training Batch 2")):
    image = rng.integers(-1000, 1000, (6, 5, 4)).astype(np.int16)
    label = rng.integers(0, 3, (6, 5, 4)).astype(np.float32)
    _save(src / batch / f"volume-{n}.nii", image)
    _save(src / batch / f"segmentation-{n}.nii", label)
    cases[f"lits_{n:03d}"] = (image, label)
  return cases


def test_lits_converts_and_loads(tmp_path):
  cases = _lits(tmp_path / "src")
  assert lits.convert_lits(tmp_path / "src", tmp_path / "dst") == 2
  meta = json.loads((tmp_path / "dst" / "dataset.json").read_text())
  assert meta["labels"] == {"background": 0, "liver": 1, "tumour": 2} and meta["channel_names"] == {"0": "CT"}
  assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz" and "licence" in meta and "source" in meta
  ds = data.load_msd(tmp_path / "dst", normalization="ct")
  assert [v.case_id for v in ds.volumes] == ["lits_000", "lits_028"] and ds.class_names[1:] == ("liver", "tumour")
  for vol in ds.volumes:
    image, label = cases[vol.case_id]
    np.testing.assert_array_equal(vol.label, np.moveaxis(label, 2, 0).astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "dst" / "imagesTr" / f"{vol.case_id}_0000.nii.gz")
                                             .dataobj), image)
    np.testing.assert_allclose(vol.affine, AFFINE)


def test_lits_bad_input_writes_nothing(tmp_path):
  _lits(tmp_path / "src")
  (tmp_path / "src" / "Training Batch 2" / "segmentation-28.nii").unlink()
  with pytest.raises(InputError, match="has no segmentation-28.nii"):
    lits.convert_lits(tmp_path / "src", tmp_path / "dst")
  assert not (tmp_path / "dst").exists()
  # The entry point: one line, exit status 2.
  result = subprocess.run([sys.executable, "-m", "slicejax.convert.lits", f"--src={tmp_path / 'src'}",
                           f"--dst={tmp_path / 'dst'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and result.stderr.count("\n") == 1 and "segmentation-28" in result.stderr
  assert not (tmp_path / "dst").exists()


def test_atlas_converts_bids_like_derivatives(tmp_path):
  src = tmp_path / "ATLAS_2" / "Training"
  rng = np.random.default_rng(1)
  expected = {}
  for cohort, subject in (("R001", "sub-r001s001"), ("R002", "sub-r002s007")):
    folder = src / cohort / subject / "ses-1" / "anat"
    stem = f"{subject}_ses-1_space-MNI152NLin2009aSym"
    image = rng.normal(0, 1, (5, 6, 4)).astype(np.float32)
    mask = (rng.random((5, 6, 4)) > 0.7).astype(np.float64)
    _save(folder / f"{stem}_T1w.nii.gz", image, np.eye(4))
    _save(folder / f"{stem}_label-L_desc-T1lesion_mask.nii.gz", mask, np.eye(4))
    expected[f"{subject}_ses-1"] = mask
  assert atlas.convert_atlas(tmp_path / "ATLAS_2", tmp_path / "dst") == 2
  ds = data.load_msd(tmp_path / "dst")
  assert ds.channel_names == ("T1",) and ds.class_names == ("background", "lesion")
  for vol in ds.volumes:
    np.testing.assert_array_equal(vol.label, np.moveaxis(expected[vol.case_id], 2, 0))
  # A mask holding a value other than 0 and 1 (in the last case) is refused before anything is written.
  _save(src / "R002" / "sub-r002s007" / "ses-1" / "anat" /
        "sub-r002s007_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz", np.full((5, 6, 4), 2.),
        np.eye(4))
  with pytest.raises(InputError, match=r"label values \[2\] outside \[0, 1\]"):
    atlas.convert_atlas(tmp_path / "ATLAS_2", tmp_path / "dst2")
  assert not (tmp_path / "dst2").exists()


# ---------------------------------------------------------------------------------------------------------------------
# DBC: a DICOM series written with pydicom and Slicer-like .seg.nrrd files.
# ---------------------------------------------------------------------------------------------------------------------


def _write_series(folder, pixels, *, description="ax dyn pre", slice_positions=None, spacing=(0.7, 0.8)):
  """pixels: [Z, rows, columns] uint16 -> one DICOM file per slice (axial, LPS), shuffled file names."""
  pydicom = pytest.importorskip("pydicom")
  from pydicom.dataset import Dataset, FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
  folder.mkdir(parents=True)
  series_uid = generate_uid()
  positions = slice_positions if slice_positions is not None else [2.5 * k for k in range(len(pixels))]
  for k, (plane, z) in enumerate(zip(pixels, positions)):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.SeriesDescription, ds.Modality = series_uid, description, "MR"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-10.0, -20.0, z]
    ds.PixelSpacing = list(spacing)
    ds.Rows, ds.Columns = plane.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = plane.astype(np.uint16).tobytes()
    ds.save_as(str(folder / f"1-{(7 * k) % len(pixels) + 1:03d}.dcm"), enforce_file_format=True)
  return pydicom


def _write_seg_nrrd(path, labels, affine_lps, segments):
  """labels [X, Y, Z] uint8; segments: {value: name}; raw little-endian, as 3D Slicer writes single-layer files."""
  directions = " ".join("(" + ",".join(f"{v:g}" for v in affine_lps[:3, i]) + ")" for i in range(3))
  header = ["NRRD0004", "type: unsigned char", "dimension: 3", "space: left-posterior-superior",
            f"sizes: {' '.join(map(str, labels.shape))}", f"space directions: {directions}", "encoding: raw",
            "endian: little", "space origin: (" + ",".join(f"{v:g}" for v in affine_lps[:3, 3]) + ")"]
  for i, (value, name) in enumerate(segments.items()):
    header += [f"Segment{i}_Name:={name}", f"Segment{i}_LabelValue:={value}", f"Segment{i}_Layer:=0"]
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(("\n".join(header) + "\n\n").encode() + np.asarray(labels, np.uint8).T.tobytes())


def _dbc(tmp_path, slice_positions=None):
  rng = np.random.default_rng(2)
  pixels = rng.integers(0, 1000, (3, 4, 5)).astype(np.uint16)  # [Z, rows, columns]
  patient = tmp_path / "src" / "Breast_MRI_001" / "01-01-1990-study"
  _write_series(patient / "3.000000-ax dyn pre-123", pixels, slice_positions=slice_positions)
  _write_series(patient / "4.000000-ax dyn 1st pass-456", pixels + 7, description="ax dyn 1st pass")
  # LPS affine of the series: X along columns (0.8 mm), Y along rows (0.7 mm), Z 2.5 mm.
  affine_lps = np.array([[0.8, 0, 0, -10.], [0, 0.7, 0, -20.], [0, 0, 2.5, 0.], [0, 0, 0, 1.]])
  breast = np.zeros((5, 4, 3), np.uint8)
  breast[1:4, 1:3] = 1
  dense = np.zeros((5, 4, 3), np.uint8)
  dense[2, 1] = 1
  dense[3, 2, 1] = 2
  segs = tmp_path / "segs"
  _write_seg_nrrd(segs / "Segmentation_Breast_MRI_001_Breast.seg.nrrd", breast, affine_lps, {1: "Breast"})
  _write_seg_nrrd(segs / "Segmentation_Breast_MRI_001_Dense_and_Vessels.seg.nrrd", dense, affine_lps,
                  {1: "Dense", 2: "Vessels"})
  expected = np.where(dense == 2, 3, np.where(dense == 1, 2, breast)).astype(np.uint8)
  return pixels, expected, segs


def test_dbc_dicom_series_and_segmentations(tmp_path):
  from slicejax.convert import dbc
  pixels, expected, segs = _dbc(tmp_path)
  assert dbc.convert_dbc(tmp_path / "src", tmp_path / "dst", segs) == 1
  ds = data.load_msd(tmp_path / "dst")
  assert ds.class_names == ("background", "breast", "FGT", "vessels") and ds.channel_names == ("T1_pre",)
  vol = ds.volumes[0]
  np.testing.assert_array_equal(vol.label, np.moveaxis(expected, 2, 0))
  image = np.asarray(nib.load(tmp_path / "dst" / "imagesTr" / "Breast_MRI_001_0000.nii.gz").dataobj)
  np.testing.assert_array_equal(image, np.transpose(pixels, (2, 1, 0)))  # [X = columns, Y = rows, Z]
  # RAS: X and Y flip sign from LPS.
  np.testing.assert_allclose(vol.affine, [[-0.8, 0, 0, 10.], [0, -0.7, 0, 20.], [0, 0, 2.5, 0.], [0, 0, 0, 1.]])


def test_dbc_inconsistent_slice_spacing_is_one_line_exit_2(tmp_path):
  pytest.importorskip("pydicom")
  _, _, segs = _dbc(tmp_path, slice_positions=[0., 2.5, 6.0])
  result = subprocess.run([sys.executable, "-m", "slicejax.convert.dbc", f"--src={tmp_path / 'src'}",
                           f"--segmentations={segs}", f"--dst={tmp_path / 'dst'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
  assert "inconsistent slice spacing in series 'ax dyn pre': steps from 2.5 to 3.5 mm" in result.stderr
  assert not (tmp_path / "dst").exists()


def test_lits_config_derives_ct_normalisation_from_the_converted_folder(tmp_path):
  from slicejax import config as config_lib
  _lits(tmp_path / "src")
  lits.convert_lits(tmp_path / "src", tmp_path / "dst")
  config = config_lib.load("configs/lits.py:tiny")
  config.data.root = str(tmp_path / "dst")
  config_lib.validate(config)
  assert config.data.normalization.startswith("ct:") and config.data.slicing_axis == 2
