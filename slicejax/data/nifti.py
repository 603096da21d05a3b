"""Image folders without labels, and NIfTI files written on another file's grid.

Three layouts are read (`index_images`), headers only:
  * an MSD folder: `dataset.json` with `training` (and optionally `test`) entries; only their images are used, so
    label files may be missing; one file per case, 3D `[X, Y, Z]` or 4D `[X, Y, Z, C]`;
  * an nnU-Net v2 raw folder: `dataset.json` with `channel_names` and `file_ending`, images in `imagesTr/` (and
    `imagesTs/`) named `<case>_<cccc><file_ending>`, one 3D file per channel;
  * a plain folder of `.nii.gz` / `.nii` files, one case per file, or nnU-Net v2 channel files `<case>_<cccc>` grouped
    into cases (`folder_cases`).
Class names come from dataset.json's `labels` (MSD `{"0": "background"}` or nnU-Net `{"background": 0}`); a label
named "ignore" is not a class. A plain folder has none.

Axis convention as in `slicejax.data`: the NIfTI array `(X, Y, Z[, C])` has its slicing axis moved to the front, so a
volume is `[D, H, W, C]`; `shape` and `spacing` are in that order, `nifti_shape` and `affine` are the file's own.

`save_like(path, data, reference)` writes an array of the reference file's spatial shape with the reference's
header geometry (affine, sform and qform with their codes, voxel sizes, units), which is what ITK-SNAP, 3D Slicer and
nnU-Net use to overlay it on the image. Bad input raises `InputError` naming the file.
"""

import dataclasses
import pathlib
import re
from typing import Optional

import nibabel as nib
import numpy as np

from slicejax.data import layouts
from slicejax.errors import InputError
from slicejax import files

NIFTI_ENDINGS = (".nii.gz", ".nii")


@dataclasses.dataclass(frozen=True, eq=False)
class ImageCase:
  """One unlabelled case as its header(s) describe it.

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
  """An indexed folder of images (see the module docstring).

  Attributes:
    name: dataset.json's `name`, else the folder's name.
    root: the folder.
    layout: "msd", "nnunet" or "folder".
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


def strip_ending(name: str) -> Optional[str]:
  """`name` without `.nii.gz` / `.nii`, or None when it has neither."""
  for ending in NIFTI_ENDINGS:
    if name.endswith(ending):
      return name[:-len(ending)]
  return None


def load(path) -> nib.spatialimages.SpatialImage:
  """The NIfTI image at `path` (header read, voxels not yet); InputError if missing or unreadable."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise InputError(path, "missing")
  try:
    image = nib.load(str(path))
  except Exception as e:  # nibabel raises many types for damaged files; all mean the same to the user.
    raise InputError(path, f"cannot read NIfTI: {type(e).__name__}: {e}") from e
  if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
    raise InputError(path, f"not a NIfTI file ({type(image).__name__})")
  return image


def read_array(path, dtype=np.float64) -> np.ndarray:
  """The voxels of a NIfTI file (scaling applied) as `dtype`; InputError if unreadable or not finite."""
  try:
    data = np.asarray(load(path).get_fdata(dtype=np.float64) if np.issubdtype(dtype, np.floating)
                      else np.asanyarray(load(path).dataobj))
  except InputError:
    raise
  except Exception as e:
    raise InputError(path, f"cannot read NIfTI voxels (corrupt or truncated file): {type(e).__name__}: {e}") from e
  if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
    raise InputError(path, "holds NaN or Inf voxels")
  return data.astype(dtype, copy=False)


def _header(path, slicing_axis: int) -> tuple:
  """(spatial shape, affine, spacing in volume order, channels) of one image file."""
  image = load(path)
  shape = tuple(int(s) for s in image.shape)
  if len(shape) not in (3, 4) or min(shape) < 1:
    raise InputError(path, f"image must be 3D [X, Y, Z] or 4D [X, Y, Z, C], got shape {shape}")
  zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
  if not all(np.isfinite(z) and z > 0 for z in zooms):
    raise InputError(path, f"voxel spacing {zooms} must be positive")
  order = [slicing_axis] + [a for a in range(3) if a != slicing_axis]
  return shape[:3], np.asarray(image.affine, np.float64), tuple(zooms[a] for a in order), (
      shape[3] if len(shape) == 4 else 1)


def _case(case_id, paths, slicing_axis: int, num_channels=None) -> ImageCase:
  shape, affine, spacing, channels = _header(paths[0], slicing_axis)
  for other in paths[1:]:
    other_shape, other_affine, _, other_channels = _header(other, slicing_axis)
    if other_shape != shape or other_channels != 1:
      raise InputError(other, f"shape {other_shape} differs from channel 0's {shape} ({paths[0].name})")
    if not np.allclose(other_affine, affine, atol=1e-3):
      raise InputError(other, f"affine differs from channel 0's ({paths[0].name})")
  channels = len(paths) if len(paths) > 1 else channels
  if num_channels is not None and channels != num_channels:
    raise InputError(paths[0], f"has {channels} channel(s), the dataset declares {num_channels}")
  order = [slicing_axis] + [a for a in range(3) if a != slicing_axis]
  return ImageCase(case_id=case_id, paths=tuple(paths), shape=tuple(shape[a] for a in order), spacing=spacing,
                   num_channels=channels, nifti_shape=shape, affine=affine)


def _nnunet_cases(root: pathlib.Path, meta: dict, json_path) -> dict:
  ending = meta["file_ending"]
  channels = len(meta["channel_names"])
  pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
  found = {}
  for folder in ("imagesTr", "imagesTs"):
    for path in sorted((root / folder).glob(f"*{ending}")) if (root / folder).is_dir() else ():
      match = pattern.match(path.name)
      if not match:
        raise InputError(path, f"not named <case>_<cccc>{ending} (nnU-Net v2 raw layout)")
      found.setdefault(match.group(1), {})[int(match.group(2))] = path
  cases = {}
  for case_id, by_channel in found.items():
    if sorted(by_channel) != list(range(channels)):
      raise InputError(root / "imagesTr", f"case {case_id} has channel files {sorted(by_channel)}, dataset.json "
                       f"declares {channels} channel(s) (0..{channels - 1})")
    cases[case_id] = [by_channel[i] for i in range(channels)]
  if not cases:
    raise InputError(root, f"no images named <case>_0000{ending} in imagesTr/ or imagesTs/")
  return cases


def _msd_cases(root: pathlib.Path, meta: dict, json_path) -> dict:
  entries = list(meta.get("training") or [])
  entries += [{"image": e} if isinstance(e, str) else e for e in meta.get("test") or []]
  cases = {}
  for i, entry in enumerate(entries):
    image = entry.get("image") if isinstance(entry, dict) else None
    if not isinstance(image, str):
      raise InputError(json_path, f"entry {i} of 'training'/'test' has no string 'image'")
    path = root / image
    case_id = strip_ending(path.name) or path.name
    if case_id in cases:
      raise InputError(json_path, f"case '{case_id}' is listed twice")
    cases[case_id] = [path]
  if not cases:
    raise InputError(json_path, "lists no images in 'training' or 'test'")
  return cases


_CHANNEL_FILE = re.compile(r"^(.+)_(\d{4})$")


def folder_cases(root: pathlib.Path) -> dict:
  """case id -> its files, in a folder without dataset.json: one case per file, or nnU-Net v2 channel files grouped
  into cases when every file is named `<case>_<cccc>` and the cases all have the channels 0..C-1 (with several
  cases, or a single channel: `case_0000`, `case_0001`, ... of one name are read as cases otherwise).

  Raises:
    InputError: the folder holds no NIfTI file.
  """
  files_ = {strip_ending(p.name): p for p in sorted(root.iterdir()) if strip_ending(p.name)
            and not p.name.startswith(".")}
  if not files_:
    raise InputError(root, "holds no dataset.json and no .nii.gz / .nii files")
  matches = {stem: _CHANNEL_FILE.match(stem) for stem in files_}
  if all(matches.values()):
    grouped = {}
    for stem, match in matches.items():
      grouped.setdefault(match.group(1), {})[int(match.group(2))] = files_[stem]
    channel_sets = {tuple(sorted(by_channel)) for by_channel in grouped.values()}
    (channels,) = channel_sets if len(channel_sets) == 1 else ((),)
    if channels and channels == tuple(range(len(channels))) and (len(grouped) > 1 or len(channels) == 1):
      return {case: [by_channel[i] for i in channels] for case, by_channel in grouped.items()}
  return {stem: [path] for stem, path in files_.items()}


def index_images(root, *, slicing_axis: int = 2) -> ImageSet:
  """Indexes the images of an MSD, nnU-Net v2 raw or plain NIfTI folder (see the module docstring).

  Args:
    root: the folder.
    slicing_axis: NIfTI axis (0, 1 or 2) that becomes D.

  Returns:
    An ImageSet whose cases are sorted by case_id.

  Raises:
    InputError: naming the file for anything missing, unreadable or inconsistent.
  """
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise InputError(root, "not a folder")
  json_path = root / "dataset.json"
  class_names, ignore, channel_names = None, None, None
  if json_path.is_file():
    meta = layouts.read_json(json_path)
    if "labels" in meta:
      class_names, ignore = layouts.parse_labels(json_path, meta["labels"])
    if layouts.detect_layout(json_path, meta)[0] == layouts.NNUNET:
      if not isinstance(meta.get("file_ending"), str) or not isinstance(meta.get("channel_names"), dict):
        raise InputError(json_path, "lacks 'file_ending' or 'channel_names' (read as nnU-Net v2: "
                                    f"{layouts.detect_layout(json_path, meta)[1]})")
      layout, paths = "nnunet", _nnunet_cases(root, meta, json_path)
      names = meta["channel_names"]
      channel_names = tuple(str(names[k]) for k in sorted(names, key=int))
    else:
      layout, paths = "msd", _msd_cases(root, meta, json_path)
      if isinstance(meta.get("modality"), dict):
        channel_names = tuple(str(meta["modality"][k]) for k in sorted(meta["modality"], key=int))
    name = str(meta.get("name", root.name))
  else:
    layout, name = "folder", root.name
    paths = folder_cases(root)
  cases = []
  num_channels = len(channel_names) if channel_names else None
  for case_id in sorted(paths):
    case = _case(case_id, paths[case_id], slicing_axis, num_channels)
    num_channels = case.num_channels
    cases.append(case)
  channel_names = channel_names or tuple(f"channel_{i}" for i in range(num_channels))
  return ImageSet(name=name, root=str(root), layout=layout, class_names=class_names, ignore_label=ignore,
                  channel_names=channel_names, slicing_axis=slicing_axis, cases=tuple(cases))


def read_case(case: ImageCase, slicing_axis: int) -> np.ndarray:
  """The raw voxels of one case as `[D, H, W, C]` float64 (volume order)."""
  if len(case.paths) == 1:
    image = read_array(case.paths[0])
    image = image if image.ndim == 4 else image[..., None]
  else:
    image = np.stack([read_array(p) for p in case.paths], axis=-1)
  if image.shape[:3] != case.nifti_shape:
    raise InputError(case.paths[0], f"changed since it was indexed: shape {image.shape[:3]}, was {case.nifti_shape}")
  return np.moveaxis(image, slicing_axis, 0)


def check_affine(path, affine: np.ndarray, reference_affine: np.ndarray, reference: str, tolerance: float) -> None:
  """The one affine check of slicejax: InputError naming `path` if any entry differs from `reference_affine`'s by
  more than `tolerance`; `reference` completes "affine differs from ..." (e.g. "the image's (x.nii.gz)")."""
  difference = float(np.max(np.abs(np.asarray(affine) - np.asarray(reference_affine))))
  if difference > tolerance:
    raise InputError(path, f"affine differs from {reference} by {difference:.3g} > tolerance {tolerance:g}")


def check_same_grid(path, reference_path, *, tolerance: float = 1e-3) -> nib.spatialimages.SpatialImage:
  """Loads the 3D file at `path` and checks that its shape and affine are those of `reference_path`'s image."""
  image, reference = load(path), load(reference_path)
  if tuple(image.shape) != tuple(reference.shape[:3]):
    raise InputError(path, f"shape {tuple(image.shape)} differs from its image's {tuple(reference.shape[:3])} "
                     f"({reference_path})")
  check_affine(path, image.affine, reference.affine, f"its image's ({reference_path})", tolerance)
  return image


def image(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
  """A NIfTI-1 image of `array` (`[X, Y, Z]` or `[X, Y, Z, C]`, NIfTI order) on `affine`: sform and qform both
  `affine` (code 1, scanner coordinates), spatial units mm."""
  out = nib.Nifti1Image(array, affine)
  out.header.set_sform(affine, code=1)
  out.header.set_qform(affine, code=1)
  out.header.set_xyzt_units("mm")
  return out


def save(path, array: np.ndarray, affine: np.ndarray) -> pathlib.Path:
  """Writes `image(array, affine)` to `path` (`.nii.gz` or `.nii`), atomically."""
  return _save(path, image(array, affine))


def like(data: np.ndarray, reference) -> nib.Nifti1Image:
  """A NIfTI-1 image of `data` (`[X, Y, Z]` or `[X, Y, Z, K]`) on `reference`'s grid.

  The reference's sform and qform (with their codes), voxel sizes and units are kept; data type and scaling are
  those of `data` (slope 1, intercept 0).
  """
  header = reference.header
  out = nib.Nifti1Image(np.asarray(data), reference.affine)
  sform, sform_code = header.get_sform(coded=True)
  qform, qform_code = header.get_qform(coded=True)
  out.header.set_sform(reference.affine if sform is None else sform, code=int(sform_code) if sform is not None else 1)
  out.header.set_qform(reference.affine if qform is None else qform, code=int(qform_code) if qform is not None else 1)
  zooms = tuple(header.get_zooms()[:3]) + ((1.0,) if np.ndim(data) == 4 else ())
  out.header.set_zooms(zooms)
  out.header.set_xyzt_units(*header.get_xyzt_units())
  out.header.set_data_dtype(np.asarray(data).dtype)
  out.header.set_slope_inter(1.0, 0.0)
  return out


def save_like(path, data: np.ndarray, reference) -> pathlib.Path:
  """Writes `data` on `reference`'s grid (`like`) to `path` (`.nii.gz` or `.nii`), atomically."""
  path = pathlib.Path(path)
  if tuple(np.shape(data)[:3]) != tuple(reference.shape[:3]):
    raise ValueError(f"data shape {np.shape(data)} differs from the reference's {reference.shape[:3]}")
  return _save(path, like(data, reference))


def _save(path, nifti_image) -> pathlib.Path:
  """The one NIfTI writer: `nifti_image` to `path` through a temporary file of the same ending, renamed into place."""
  path = pathlib.Path(path)
  suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
  path.parent.mkdir(parents=True, exist_ok=True)
  # nibabel chooses gzip from the file name, so the temporary file keeps the ending.
  return files.atomic_save(path, lambda name: nib.save(nifti_image, name), suffix)
