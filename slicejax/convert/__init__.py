"""Converters from the native layouts of the study's datasets to the nnU-Net v2 layout that `slicejax.data` reads:

    DST/dataset.json   {"name", "channel_names", "labels", "numTraining", "file_ending": ".nii.gz", "reference",
                        "licence", "source"}
    DST/imagesTr/CASE_0000.nii.gz, ...   one 3D file per channel
    DST/labelsTr/CASE.nii.gz             uint8 labels

  python -m slicejax.convert.lits --src=PATH/LiTS17 --dst=PATH/LiTS17_v2     (lits.py)
  python -m slicejax.convert.atlas --src=PATH/ATLAS_2 --dst=PATH/ATLAS_v2    (atlas.py)
  python -m slicejax.convert.dbc --src=PATH/Duke-Breast-Cancer-MRI --segmentations=PATH/segs --dst=PATH/DBC_v2

Every converter finds and checks all of its cases (pairs complete, headers readable, image and label grids equal)
before writing anything; bad input raises `slicejax.errors.InputError`, which the entry points print as one line
`error: <where>: <what>` with exit status 2. Files are written atomically, dataset.json last, so an interrupted
conversion leaves no dataset.json and is simply run again. The data are not redistributed here: each module names
the source to download them from and their terms.
"""

import json
import pathlib

from absl import flags
import numpy as np

from slicejax.data import nifti
from slicejax.errors import exit_with
from slicejax.errors import InputError
from slicejax import files

FILE_ENDING = ".nii.gz"

SRC = flags.DEFINE_string("src", None, "Folder of the dataset as downloaded.")
DST = flags.DEFINE_string("dst", None, "Folder to write the nnU-Net v2 layout into (new or empty).")


def check_destination(dst) -> pathlib.Path:
  """`dst` must be absent or an empty folder (nothing is overwritten)."""
  dst = pathlib.Path(dst)
  if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
    raise InputError(dst, "exists and is not an empty folder; choose a new --dst")
  return dst


def check_pair(image_path, label_path, tolerance: float = 1e-3) -> None:
  """Image and label headers: both readable and 3D, same shape, affines within `tolerance`."""
  image, label = nifti.load(image_path), nifti.load(label_path)
  if len(image.shape) != 3:
    raise InputError(image_path, f"expected a 3D image, got shape {image.shape}")
  if label.shape != image.shape:
    raise InputError(label_path, f"shape {label.shape} differs from the image's {image.shape} ({image_path})")
  nifti.check_affine(label_path, label.affine, image.affine, f"the image's ({image_path})", tolerance)


def as_label(path, data: np.ndarray, allowed) -> np.ndarray:
  """Label voxels -> uint8; values must be integers in `allowed`."""
  rounded = np.round(data)
  if not np.array_equal(data, rounded):
    raise InputError(path, "label holds non-integer values")
  values = sorted(int(v) for v in np.unique(rounded))
  bad = [v for v in values if v not in allowed]
  if bad:
    raise InputError(path, f"label values {bad} outside {sorted(allowed)}")
  return rounded.astype(np.uint8)


def write_case(dst, case_id: str, images, label: np.ndarray, affine: np.ndarray) -> None:
  """Writes one case: `images` a list of `[X, Y, Z]` channels, `label` `[X, Y, Z]` uint8."""
  dst = pathlib.Path(dst)
  for i, image in enumerate(images):
    nifti.save(dst / "imagesTr" / f"{case_id}_{i:04d}{FILE_ENDING}", image, affine)
  nifti.save(dst / "labelsTr" / f"{case_id}{FILE_ENDING}", label, affine)


def write_dataset_json(dst, *, name: str, channel_names, labels, num_training: int, **extra) -> None:
  meta = {"name": name, "channel_names": {str(i): n for i, n in enumerate(channel_names)},
          "labels": {n: i for i, n in enumerate(labels)}, "numTraining": num_training, "file_ending": FILE_ENDING,
          **extra}
  files.atomic_write(pathlib.Path(dst) / "dataset.json", json.dumps(meta, indent=2) + "\n")


def main(convert):
  """An absl entry point running `convert(src, dst)`: bad input -> one line on stderr, exit status 2."""
  def run(argv):
    del argv
    if not SRC.value or not DST.value:
      exit_with("--src and --dst are required")
    try:
      convert(SRC.value, DST.value)
    except InputError as e:
      exit_with(e)
  return run
