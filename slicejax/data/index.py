"""A dataset folder read up to its NIfTI headers, no voxel: the first of the data stage's two steps.

`index_msd` indexes the labelled cases of an MSD or nnU-Net v2 folder (`slicejax.data.cases`) for training, `--check`
and export: per case its paths, shape, spacing, channels and affine, after every check a header allows (missing or
unreadable files, dimensions, image and label shapes, spacing, voxel type, image and label affines, channel
counts). Splits and annotation budgets can thus be checked against the cases' depths before any voxel is read or any
cache file written; `slicejax.data.load.load_volumes` then reads the voxels. `index_images` indexes every image of
a folder, labelled or not (plan and predict), and `read_case` reads one such case's raw voxels.

Labels are 3D integers. A label named "ignore" (nnU-Net v2's ignore label, the highest value) marks voxels that are
not annotated: it is not a class (not in `class_names` nor `num_classes`), its value is `ignore_label` of the index.

Shapes and spacings are in volume order `(D, H, W)`, the slicing axis first (`slicejax.data.nifti`'s axis
convention); `nifti_shape` and `affine` are the file's own. With a target spacing (`index_msd(target_spacing=...)`)
a case's `shape` and `spacing` describe the grid it is resampled to (`slicejax.data.resample`), and its
`original_shape` and `original_spacing` the file's. Bad input raises `InputError` naming the file.
"""

import dataclasses
import pathlib
import time
from typing import Optional

from absl import logging
import numpy as np

from slicejax.data import cases as cases_lib
from slicejax.data import nifti
from slicejax.data import resample as resample_lib
from slicejax.errors import InputError


def _in_volume_order(values, slicing_axis: int) -> tuple:
  """Per-axis values `(X, Y, Z)` in volume order `(D, H, W)`: the slicing axis first."""
  return tuple(values[a] for a in [slicing_axis] + [a for a in range(3) if a != slicing_axis])


def _channel_names(declared, num_channels: int) -> tuple:
  """The channel names dataset.json declares, else "channel_<i>"."""
  return declared or tuple(f"channel_{i}" for i in range(num_channels))


class ClassesAndChannels:
  """`num_classes` and `num_channels` of anything with `class_names` and `channel_names`."""

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_channels(self) -> int:
    return len(self.channel_names)


# ---------------------------------------------------------------------------------------------------------------------
# Labelled cases.
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class CaseInfo:
  """One case as its NIfTI headers describe it; no voxel has been read.

  Attributes:
    case_id: file name without `.nii.gz` (and without nnU-Net v2's channel suffix `_0000`).
    image_paths: the image files: one (3D or 4D), or one 3D file per channel (nnU-Net v2).
    label_path: the label file.
    shape: `(D, H, W)`, the label's shape in volume order once resampled (the image's is `shape + (num_channels,)`).
    spacing: `(sD, sH, sW)` voxel size in mm once resampled.
    num_channels: C, 1 for a 3D image.
    nifti_shape: the array shape `(X, Y, Z[, C])` of the image file (of each channel file: `(X, Y, Z)`).
    affine: `[4, 4]` float64, the image file's voxel-to-world affine.
    original_spacing, original_shape: the file's spacing and shape in volume order (equal to `spacing` and `shape`
      when not resampled).
  """
  case_id: str
  image_paths: tuple
  label_path: pathlib.Path
  shape: tuple
  spacing: tuple
  num_channels: int
  nifti_shape: tuple
  affine: np.ndarray
  original_spacing: tuple
  original_shape: tuple

  @property
  def image_path(self) -> pathlib.Path:
    """The (first) image file."""
    return self.image_paths[0]

  @property
  def depth(self) -> int:
    return self.shape[0]

  @property
  def resampled(self) -> bool:
    return self.shape != self.original_shape or self.spacing != self.original_spacing


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetIndex(ClassesAndChannels):
  """An MSD folder read up to its NIfTI headers (see `index_msd`).

  Attributes:
    name: `name` from dataset.json, else the folder name.
    root: the folder it was read from.
    class_names: class names by label value; `class_names[0]` is the background. Without the ignore label.
    channel_names: image channel names (from `modality` or `channel_names`, else "channel_<i>").
    slicing_axis: the NIfTI axis (0, 1 or 2) that becomes D.
    cases: CaseInfo per case, sorted by case_id.
    ignore_label: the value of nnU-Net v2's ignore label (a label named "ignore", above every class), else None.
    target_spacing: `()` or the `(sX, sY, sZ)` (NIfTI order, 0 = keep) the cases are resampled to.
  """
  name: str
  root: str
  class_names: tuple
  channel_names: tuple
  slicing_axis: int
  cases: tuple
  ignore_label: int | None = None
  target_spacing: tuple = ()

  @property
  def case_ids(self) -> tuple:
    return tuple(c.case_id for c in self.cases)

  def depths(self) -> dict:
    """Returns {case_id: D}, the number of slices along the slicing axis."""
    return {c.case_id: c.depth for c in self.cases}

  def loaded_bytes(self) -> int:
    """Bytes of the arrays `load_volumes` makes of these cases: float16 images and (at least) one byte per label."""
    return sum(int(np.prod(c.shape, dtype=np.int64)) * (2 * c.num_channels + 1) + (
        int(np.prod(c.original_shape, dtype=np.int64)) if c.resampled else 0) for c in self.cases)

  def select(self, case_ids) -> "DatasetIndex":
    """The same index restricted to `case_ids` (any order; kept sorted), e.g. the cases of a split."""
    wanted = set(case_ids)
    missing = sorted(wanted - set(self.case_ids))
    if missing:
      raise InputError(self.root, f"has no case(s) {missing}")
    return dataclasses.replace(self, cases=tuple(c for c in self.cases if c.case_id in wanted))


def _index_case(case_id, image_paths, label_path, json_path, slicing_axis: int, affine_tolerance: float,
                target_spacing) -> CaseInfo:
  """Reads and checks the headers of one case (one image file, 3D or 4D, or one 3D file per channel)."""
  label_shape, label_affine, _ = nifti.header(label_path, json_path)
  if len(label_shape) != 3:
    raise InputError(label_path, f"label must be 3D [X, Y, Z], got shape {label_shape}")
  num_channels, affine, zooms = 0, None, None
  for image_path in image_paths:
    image_shape, image_affine, image_zooms = nifti.header(image_path, json_path)
    if len(image_paths) > 1 and len(image_shape) != 3:
      raise InputError(image_path, f"a channel file must be 3D [X, Y, Z], got shape {image_shape}")
    if len(image_shape) not in (3, 4):
      raise InputError(image_path, f"image must be 3D [X, Y, Z] or 4D [X, Y, Z, C], got shape {image_shape}")
    if image_shape[:3] != label_shape:
      raise InputError(label_path, f"label shape {label_shape} differs from image shape {image_shape[:3]} "
                       f"({image_path})")
    if min(image_shape) < 1:
      raise InputError(image_path, f"image has no voxels, shape {image_shape}")
    if not all(np.isfinite(z) and z > 0 for z in image_zooms):
      raise InputError(image_path, f"voxel spacing {image_zooms} must be positive")
    if affine is None:
      affine, zooms, nifti_shape = image_affine, image_zooms, image_shape
    else:
      nifti.check_affine(image_path, image_affine, affine, f"the first channel's ({image_paths[0].name})",
                         affine_tolerance)
    num_channels += image_shape[3] if len(image_shape) == 4 else 1
  nifti.check_affine(label_path, label_affine, affine, f"the image's ({image_paths[0].name})", affine_tolerance)
  new_shape, new_spacing = resample_lib.target_grid(label_shape, zooms, target_spacing)
  return CaseInfo(case_id=case_id, image_paths=tuple(image_paths), label_path=label_path,
                  shape=_in_volume_order(new_shape, slicing_axis), spacing=_in_volume_order(new_spacing, slicing_axis),
                  num_channels=num_channels, nifti_shape=nifti_shape if len(image_paths) == 1 else label_shape,
                  affine=affine, original_spacing=_in_volume_order(zooms, slicing_axis),
                  original_shape=_in_volume_order(label_shape, slicing_axis))


def _check_index_settings(slicing_axis, affine_tolerance, max_cases, target_spacing) -> None:
  if slicing_axis not in (0, 1, 2) or isinstance(slicing_axis, bool):
    raise InputError("slicing_axis", f"must be 0, 1 or 2, got {slicing_axis!r}")
  if not affine_tolerance >= 0:
    raise InputError("affine_tolerance", f"must be >= 0, got {affine_tolerance!r}")
  if max_cases is not None and not (isinstance(max_cases, int) and max_cases > 0):
    raise InputError("max_cases", f"must be a positive integer or None, got {max_cases!r}")
  if target_spacing and not (len(target_spacing) == 3 and all(
      isinstance(s, (int, float)) and np.isfinite(s) and s >= 0 for s in target_spacing)):
    raise InputError("target_spacing", f"must be () or three numbers >= 0 (mm, NIfTI axes; 0 keeps an axis), got "
                     f"{target_spacing!r}")


def index_msd(root, *, slicing_axis: int = 2, affine_tolerance: float = 1e-3, max_cases=None,
              target_spacing=()) -> DatasetIndex:
  """Reads dataset.json and the NIfTI headers of every training case, without reading any voxel.

  Args:
    root: an MSD or nnU-Net v2 folder: `dataset.json`, `imagesTr/` and `labelsTr/` (see `slicejax.data.cases`).
    slicing_axis: NIfTI axis (0, 1 or 2) that becomes D.
    affine_tolerance: largest allowed absolute difference between an image's and its label's affine entries.
    max_cases: index only the first `max_cases` cases in case_id order.
    target_spacing: `()` to keep each file's grid, or `(sX, sY, sZ)` mm in NIfTI axis order to resample to (an entry
      0 keeps that axis); the cases' `shape` and `spacing` then describe the resampled grid.

  Returns:
    A DatasetIndex whose cases are sorted by case_id.

  Raises:
    InputError: naming the file (or setting) for anything a header shows to be wrong (see the module docstring).
  """
  target_spacing = tuple(target_spacing or ())
  _check_index_settings(slicing_axis, affine_tolerance, max_cases, target_spacing)
  start = time.perf_counter()
  root = pathlib.Path(root)
  json_path = root / "dataset.json"
  listing = cases_lib.find_cases(root, labelled=True)
  declared = listing.channel_names
  cases = []
  num_channels = len(declared) if declared else None
  for case_id, (image_paths, label_path) in list(listing.cases.items())[:max_cases]:
    case = _index_case(case_id, image_paths, label_path, json_path, slicing_axis, affine_tolerance, target_spacing)
    if num_channels is None:
      num_channels = case.num_channels
    if case.num_channels != num_channels:
      key = "channel_names" if listing.layout == cases_lib.NNUNET else "modality"
      expected = f"'{key}' in {json_path.name} lists" if declared else "earlier cases have"
      raise InputError(image_paths[0], f"image has {case.num_channels} channel(s) but {expected} {num_channels}")
    cases.append(case)
  logging.info("Indexed %d cases of %s in %.2fs.", len(cases), root, time.perf_counter() - start)
  return DatasetIndex(name=listing.name, root=str(root), class_names=listing.class_names,
                      channel_names=_channel_names(declared, num_channels), slicing_axis=slicing_axis,
                      cases=tuple(cases), ignore_label=listing.ignore_label, target_spacing=target_spacing)


# ---------------------------------------------------------------------------------------------------------------------
# Images, labelled or not.
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ImageCase:
  """One case's images as their header(s) describe them; no label.

  Attributes:
    case_id: the file name without ending (and without the channel suffix `_cccc` of nnU-Net files).
    paths: the image files: one (3D or 4D) file, or one 3D file per channel (nnU-Net).
    shape: `(D, H, W)` in volume order.
    spacing: `(sD, sH, sW)` in mm.
    num_channels: C.
    nifti_shape: the spatial shape `(X, Y, Z)` of the files.
    affine: `[4, 4]` float64, the (first) image file's affine.
  """
  case_id: str
  paths: tuple
  shape: tuple
  spacing: tuple
  num_channels: int
  nifti_shape: tuple
  affine: np.ndarray

  @property
  def depth(self) -> int:
    return self.shape[0]


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSet:
  """An indexed folder of images (`index_images`).

  Attributes:
    name: dataset.json's `name`, else the folder's name.
    root: the folder.
    layout: "msd", "nnunet" or "folder" (`slicejax.data.cases.Listing.layout`).
    class_names: class names by label value (background first), or None when the folder declares none.
    ignore_label: the value of a label named "ignore" in dataset.json, or None.
    channel_names: one name per channel.
    slicing_axis: the NIfTI axis that became D.
    cases: ImageCase per case, sorted by case_id.
  """
  name: str
  root: str
  layout: str
  class_names: Optional[tuple]
  ignore_label: Optional[int]
  channel_names: tuple
  slicing_axis: int
  cases: tuple

  def depths(self) -> dict:
    return {c.case_id: c.depth for c in self.cases}

  def by_id(self) -> dict:
    return {c.case_id: c for c in self.cases}


def _image_header(path, slicing_axis: int) -> tuple:
  """(spatial shape, affine, spacing in volume order, channels) of one image file."""
  shape, affine, zooms = nifti.header(path)
  if len(shape) not in (3, 4) or min(shape) < 1:
    raise InputError(path, f"image must be 3D [X, Y, Z] or 4D [X, Y, Z, C], got shape {shape}")
  if not all(np.isfinite(z) and z > 0 for z in zooms):
    raise InputError(path, f"voxel spacing {zooms} must be positive")
  return shape[:3], affine, _in_volume_order(zooms, slicing_axis), shape[3] if len(shape) == 4 else 1


def _image_case(case_id, paths, slicing_axis: int, num_channels=None) -> ImageCase:
  shape, affine, spacing, channels = _image_header(paths[0], slicing_axis)
  for other in paths[1:]:
    other_shape, other_affine, _, other_channels = _image_header(other, slicing_axis)
    if other_shape != shape or other_channels != 1:
      raise InputError(other, f"shape {other_shape} differs from channel 0's {shape} ({paths[0].name})")
    if not np.allclose(other_affine, affine, atol=1e-3):
      raise InputError(other, f"affine differs from channel 0's ({paths[0].name})")
  channels = len(paths) if len(paths) > 1 else channels
  if num_channels is not None and channels != num_channels:
    raise InputError(paths[0], f"has {channels} channel(s), the dataset declares {num_channels}")
  return ImageCase(case_id=case_id, paths=tuple(paths), shape=_in_volume_order(shape, slicing_axis), spacing=spacing,
                   num_channels=channels, nifti_shape=shape, affine=affine)


def index_images(root, *, slicing_axis: int = 2) -> ImageSet:
  """Indexes the images of an MSD, nnU-Net v2 raw or plain NIfTI folder, labelled or not (`slicejax.data.cases`).

  Args:
    root: the folder.
    slicing_axis: NIfTI axis (0, 1 or 2) that becomes D.

  Returns:
    An ImageSet whose cases are sorted by case_id.

  Raises:
    InputError: naming the file for anything missing, unreadable or inconsistent.
  """
  root = pathlib.Path(root).expanduser()
  listing = cases_lib.find_cases(root, labelled=False)
  declared = listing.channel_names
  cases = []
  num_channels = len(declared) if declared else None
  for case_id in sorted(listing.cases):
    case = _image_case(case_id, listing.cases[case_id][0], slicing_axis, num_channels)
    num_channels = case.num_channels
    cases.append(case)
  return ImageSet(name=listing.name, root=str(root), layout=listing.layout, class_names=listing.class_names,
                  ignore_label=listing.ignore_label, channel_names=_channel_names(declared, num_channels),
                  slicing_axis=slicing_axis, cases=tuple(cases))


def read_case(case: ImageCase, slicing_axis: int) -> np.ndarray:
  """The raw voxels of one case as `[D, H, W, C]` float64 (volume order)."""
  if len(case.paths) == 1:
    image = nifti.read_array(case.paths[0])
    image = image if image.ndim == 4 else image[..., None]
  else:
    image = np.stack([nifti.read_array(p) for p in case.paths], axis=-1)
  if image.shape[:3] != case.nifti_shape:
    raise InputError(case.paths[0], f"changed since it was indexed: shape {image.shape[:3]}, was {case.nifti_shape}")
  return nifti.to_volume_order(image, slicing_axis)
