"""Reading Medical Segmentation Decathlon (MSD) and nnU-Net v2 folders into per-case volumes.

Layouts read, both `ROOT/dataset.json` with `imagesTr/` and `labelsTr/`:
  * MSD: `labels` ({"0": "background", "1": ...}), `training` (a list of {"image": "./imagesTr/x.nii.gz",
    "label": "./labelsTr/x.nii.gz"}; without it the cases are the files of `labelsTr/`), an optional `modality`
    ({"0": "T2", ...}) and an optional `name`. Images are 3D `[X, Y, Z]` or 4D multi-channel `[X, Y, Z, C]`
    (channels last).
  * nnU-Net v2 (recognised by `channel_names` or `file_ending`): `channel_names` ({"0": "CT", ...}), `labels`
    ({"background": 0, "x": 1, ...}), `file_ending` (".nii.gz" or ".nii"), no case list: every
    `labelsTr/x{file_ending}` is a case whose channel i is the 3D file `imagesTr/x_{i:04d}{file_ending}`.
Labels are 3D integers. Either spelling of `labels` is read in both layouts. A label named "ignore" (nnU-Net v2's
ignore label, the highest value) marks voxels that are not annotated: it is not a class (not in `class_names` nor
`num_classes`), its value is `ignore_label` of the index and dataset, and label maps keep it as it is.

Resampling. With a target spacing (`index_msd(target_spacing=...)`), each case is resampled after normalisation
(`slicejax.data.resample`: images by cubic splines, labels per-class linear, anisotropic volumes in-plane and
through-plane separately); its `shape` and `spacing` describe the new grid, and `Volume.original_label` keeps the
label on the files' grid, where predictions are scored (`resample.to_original` maps them there).

Axis convention. The NIfTI data array `(X, Y, Z[, C])` has its slicing axis `a` (0, 1 or 2) moved to the front with
`np.moveaxis(arr, a, 0)`; the two remaining spatial axes keep their order. Labels become `[D, H, W]` and images
`[D, H, W, C]` with `C >= 1` (a 3D image gets `C = 1`). `to_nifti_order` is the inverse. Spacing (mm) is reported in
the same `(D, H, W)` order; the file's affine is kept unchanged, so a prediction in `to_nifti_order` written on the
case's file (`slicejax.data.nifti.save_like`) has the original axis order, affine and array shape.

Two steps. `index_msd` reads `dataset.json` and only the NIfTI headers, no voxels: per case its paths, shape,
spacing, channels and affine, after every check a header allows (missing or unreadable files, dimensions, image and
label shapes, spacing, voxel type, image and label affines, channel counts). Splits and annotation budgets can thus be
checked against the cases' depths before any voxel is read or any cache file written. `load_volumes` then reads the
voxels of an index's cases and runs the checks that need them (NaN or Inf images, non-integer labels, label values
not declared in dataset.json); `load_msd` does both. Bad input raises `slicejax.errors.InputError` naming the file.

Intensities are normalised per volume and per channel (the files' scales differ by orders of magnitude), in float64:
  * "zscore": `(x - mean) / max(std, 1e-8)` with mean and std over all voxels of the channel;
  * "ct": clip to `ct_window = (lo, hi)` in Hounsfield units, then map linearly to [-1, 1]
    (`2 * (x - lo) / (hi - lo) - 1`), so one HU value means the same number in every volume;
  * "ct:LO:HI:MEAN:STD" (nnU-Net's CT scheme, with the dataset's foreground statistics from
    `slicejax.config.fingerprint`): clip to [LO, HI], then `(x - MEAN) / STD`;
  * one of these per channel, separated by commas (e.g. "ct:-17:201:99:40,zscore"); a single item applies to all;
then rounded once to float16, which `Volume.image` holds (half the host memory of float32; device arrays are built
in float32 from it). float16 keeps 11 significant bits, a relative error of at most 2**-11 (about 3 significant
digits): at most 2**-12 on "ct" values in [-1, 1] (0.25 HU of a 2000 HU window), and z-scores never come near
float16's largest value 65504 (|z| <= sqrt(N - 1) over N voxels). Labels are held as uint8 (uint16 for more than
256 classes).

Cache. With `cache_dir`, each preprocessed case is stored as one uncompressed `.npz` file in `cache_dir/volumes/`:
the float16 image, the label in the smallest unsigned type that holds its values, the sorted label values and the
entry's key (and the label on the original grid when resampled). The key (and, shortened, the file name) hashes
every NIfTI file's bytes (SHA-256), the preprocessing
settings and the format version, so work folders, datasets and processes can share one folder (`default_cache_dir()`).
Each entry is written atomically: it is complete or absent, and concurrent writers of an entry write the same bytes
twice. A load from the cache gives exactly the arrays of a load without it. The label values are checked against
dataset.json on cached entries too, as dataset.json is not part of the key. `load_volumes(mapped=True)` leaves the
arrays in the entries (the `.npz` members are stored, not compressed, so each is a plain array at an offset of the
file): a volume's image and labels are `mapped.MappedArray`s, read a part at a time when used, for datasets larger
than memory; the entry's key travels with the volume (`Volume.key`).
"""

import dataclasses
import gzip
import hashlib
import json
import os
import pathlib
import re
import time
import zipfile
import zlib

from absl import logging
import nibabel as nib
from nibabel import filebasedimages
from nibabel import spatialimages
from nibabel import wrapstruct
import numpy as np

from slicejax.data import layouts
from slicejax.data import mapped as mapped_lib
from slicejax.data import nifti
from slicejax.data.normalize import normalize_float64, parse_normalization
from slicejax.data import phantom
from slicejax.data import resample as resample_lib
from slicejax.errors import InputError
from slicejax import files

IGNORE_NAME = layouts.IGNORE_NAME  # nnU-Net v2's ignore label: voxels not annotated, not a class
_FILE_ENDINGS = nifti.NIFTI_ENDINGS
# Bumped whenever the cached arrays or their meaning change, so old entries miss.
_CACHE_FORMAT = 4  # 4: resampled ignore-label files keep their unannotated voxels ignored
_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI2_HEADER_SIZE = 540
# Everything nibabel, gzip and zlib raise for a damaged file; caught while decoding a header or a whole data block.
_DECODE_ERRORS = (OSError, EOFError, zlib.error, ValueError, filebasedimages.ImageFileError,
                  spatialimages.HeaderDataError, wrapstruct.WrapStructError)


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
  """One case, in `[D, H, W]` order (see the module docstring).

  Attributes:
    case_id: file name without `.nii.gz`, e.g. "hippocampus_001".
    image: `[D, H, W, C]` float16, normalised per channel.
    label: `[D, H, W]` uint8 class indices (uint16 for more than 256 classes); voxels of the dataset's ignore label
      (`Dataset.ignore_label`) keep that value.
    spacing: `(sD, sH, sW)` voxel size in mm (the target spacing when resampled).
    affine: `[4, 4]` float64, the image file's voxel-to-world affine (NIfTI axis order, original grid).
    slicing_axis: the NIfTI axis (0, 1 or 2) that became D.
    original_label: None when the volume was not resampled; else the label `[D0, H0, W0]` on the file's own grid,
      against which predictions are scored (`resample.to_original` maps a prediction there).
    original_spacing: None when not resampled; else the file's `(sD, sH, sW)`.
    key: the content key of the volume's cache entry (its files' bytes and the preprocessing), None when loaded
      without a cache. The arrays are numpy arrays, or `mapped.MappedArray`s read on access (`load_volumes(mapped=)`).
  """
  case_id: str
  image: np.ndarray
  label: np.ndarray
  spacing: tuple
  affine: np.ndarray
  slicing_axis: int
  original_label: np.ndarray | None = None
  original_spacing: tuple | None = None
  key: str | None = None

  @property
  def depth(self) -> int:
    return self.label.shape[0]

  @property
  def resampled(self) -> bool:
    return self.original_label is not None

  @property
  def original_shape(self) -> tuple:
    """The spatial shape `(X, Y, Z)` of the NIfTI files this volume came from."""
    grid = self.original_label if self.resampled else self.label
    return tuple(to_nifti_order(np.empty(grid.shape, np.bool_), self.slicing_axis).shape)


class _ClassesAndChannels:
  """`num_classes` and `num_channels` of anything with `class_names` and `channel_names`."""

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_channels(self) -> int:
    return len(self.channel_names)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset(_ClassesAndChannels):
  """A loaded MSD folder.

  Attributes:
    name: `name` from dataset.json, else the folder name.
    root: the folder it was read from.
    class_names: class names by label value; `class_names[0]` is the background. Without the ignore label.
    channel_names: image channel names (from `modality` or `channel_names`, else "channel_<i>").
    volumes: the cases, sorted by case_id.
    ignore_label: the value of nnU-Net v2's ignore label (a label named "ignore", above every class), else None.
  """
  name: str
  root: str
  class_names: tuple
  channel_names: tuple
  volumes: tuple
  ignore_label: int | None = None

  def by_id(self) -> dict:
    """Returns {case_id: Volume}."""
    return {v.case_id: v for v in self.volumes}


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
class DatasetIndex(_ClassesAndChannels):
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


def to_volume_order(array: np.ndarray, slicing_axis: int) -> np.ndarray:
  """NIfTI `[X, Y, Z, ...]` -> `[D, H, W, ...]` by moving `slicing_axis` to the front."""
  return np.moveaxis(array, slicing_axis, 0)


def to_nifti_order(array: np.ndarray, slicing_axis: int) -> np.ndarray:
  """`[D, H, W, ...]` -> NIfTI `[X, Y, Z, ...]`; the inverse of `to_volume_order`."""
  return np.moveaxis(array, 0, slicing_axis)


def default_cache_dir() -> pathlib.Path:
  """The cache folder shared by every run of this user: `$SLICEJAX_CACHE` if set, else `$XDG_CACHE_HOME/slicejax`,
  else `~/.cache/slicejax` (not created here). Entries are keyed by content (see the module docstring)."""
  if os.environ.get("SLICEJAX_CACHE"):
    return pathlib.Path(os.environ["SLICEJAX_CACHE"]).expanduser()
  xdg = os.environ.get("XDG_CACHE_HOME", "")
  # The XDG base directory spec says to ignore a relative path.
  base = pathlib.Path(xdg) if os.path.isabs(xdg) else pathlib.Path.home() / ".cache"
  return base / "slicejax"



def cache_dir(config) -> pathlib.Path:
  """Where preprocessed volumes, the phantom and UAL encoders are cached: `config.data.cache_dir` or the user cache
  (`default_cache_dir`), shared by every workdir; entries are keyed by content and settings."""
  return pathlib.Path(config.data.cache_dir).expanduser() if config.data.cache_dir else default_cache_dir()


def dataset_root(config) -> pathlib.Path:
  """The dataset folder of `config.data`: `data.root`, or the phantom generated (once) into the cache."""
  cfg = config.data
  if cfg.source == "phantom":
    return phantom.cached_phantom(cache_dir(config), num_cases=cfg.phantom.num_cases, shape=tuple(cfg.phantom.shape),
                                  num_channels=cfg.phantom.num_channels, seed=cfg.phantom.seed)
  if not cfg.root:
    raise InputError("config.data.root", cfg.get("missing_root_hint") or "set it to the dataset folder")
  root = pathlib.Path(cfg.root).expanduser()
  if cfg.get("download_task") and not root.exists():
    raise InputError(str(root), f"no dataset here: run `python -m slicejax.download --task={cfg.download_task} "
                                f"--dest={root.parent}` to fetch it, or pass --config.data.root=PATH to your copy")
  return root

def _smallest_int(lo: int, hi: int):
  """The smallest of uint8, uint16 and int32 that holds every integer in [lo, hi]."""
  return next(t for t in (np.uint8, np.uint16, np.int32) if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)


# ---------------------------------------------------------------------------------------------------------------------
# dataset.json and the headers.
# ---------------------------------------------------------------------------------------------------------------------


def _read_json(path: pathlib.Path) -> dict:
  meta = layouts.read_json(path)
  if "labels" not in meta:
    raise InputError(path, "lacks 'labels'")
  return meta


def _case_id(image_path: str) -> str:
  name = pathlib.PurePosixPath(image_path).name
  return nifti.strip_ending(name) or name


def _training_pairs(json_path: pathlib.Path, training) -> list:
  """MSD `training` list -> [(case_id, (image_path,), label_path)] sorted by case_id."""
  if not isinstance(training, list):
    raise InputError(json_path, "'training' must be a list")
  if not training:
    raise InputError(json_path, "'training' is empty: no cases to load")
  root = json_path.parent
  pairs = {}
  for i, entry in enumerate(training):
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("image", "label")):
      raise InputError(json_path, f"training[{i}] must have string 'image' and 'label' entries")
    case_id = _case_id(entry["image"])
    if case_id in pairs:
      raise InputError(json_path, f"case '{case_id}' is listed twice in 'training'")
    pairs[case_id] = ((root / entry["image"],), root / entry["label"])
  return [(c, *pairs[c]) for c in sorted(pairs)]


def _discovered_pairs(json_path: pathlib.Path, meta: dict, file_ending: str, channel_names) -> list:
  """Cases found in `labelsTr/` -> [(case_id, image paths, label_path)] sorted by case_id.

  nnU-Net v2 (`channel_names` given): channel i of case x is `imagesTr/x_{i:04d}{file_ending}`. MSD without a
  `training` list: one (3D or 4D) image `imagesTr/x{file_ending}` per case.
  """
  root = json_path.parent
  labels_dir = root / "labelsTr"
  if not labels_dir.is_dir():
    raise InputError(labels_dir, f"missing (and {json_path.name} has no 'training' list, so cases are read from it)")
  names = layouts.listed_files(labels_dir, file_ending)
  if not names:
    others = sorted(p.name for p in labels_dir.iterdir() if not p.name.startswith("."))
    hint = f"; found e.g. '{others[0]}': does 'file_ending' in {json_path.name} match the files?" if others else ""
    raise InputError(labels_dir, f"no label files ending in '{file_ending}'{hint}")
  if isinstance(meta.get("numTraining"), int) and meta["numTraining"] != len(names):
    raise InputError(labels_dir, f"holds {len(names)} label files but {json_path.name} says numTraining "
                     f"{meta['numTraining']}")
  pairs = []
  for name in names:
    case_id = name[:-len(file_ending)]
    if channel_names is None:
      images = (root / "imagesTr" / f"{case_id}{file_ending}",)
    else:
      images = tuple(root / "imagesTr" / f"{case_id}_{i:04d}{file_ending}" for i in range(len(channel_names)))
    for i, path in enumerate(images):
      if not path.is_file():
        what = f"channel {i} ('{channel_names[i]}') of case '{case_id}'" if channel_names else f"case '{case_id}'"
        raise InputError(path, f"missing: the image of {what} (label {labels_dir.name}/{name})")
    pairs.append((case_id, images, labels_dir / name))
  return pairs


def _layout(json_path: pathlib.Path, meta: dict) -> tuple:
  """Returns (channel names or None, file_ending, channels in separate files, cases) of dataset.json `meta`."""
  layout, why = layouts.detect_layout(json_path, meta)
  v2 = layout == layouts.NNUNET
  logging.info("%s: %s layout (%s)", json_path.parent, layout, why)
  if v2:
    if "channel_names" not in meta:
      raise InputError(json_path, f"has 'file_ending' but lacks 'channel_names' (read as {layouts.NNUNET}: {why})")
    channel_names = layouts.index_map(json_path, "channel_names", meta["channel_names"])
    file_ending = meta.get("file_ending")
    if not isinstance(file_ending, str):
      raise InputError(json_path, f"lacks 'file_ending', e.g. \".nii.gz\" (read as {layouts.NNUNET}: {why})")
  else:
    channel_names = layouts.index_map(json_path, "modality", meta["modality"]) if "modality" in meta else None
    file_ending = ".nii.gz"
  if file_ending not in _FILE_ENDINGS:
    raise InputError(json_path, f"'file_ending' {file_ending!r} is not supported; NIfTI only: {_FILE_ENDINGS}")
  if "training" in meta and not v2:
    return channel_names, file_ending, False, _training_pairs(json_path, meta["training"])
  separate = v2
  return channel_names, file_ending, separate, _discovered_pairs(json_path, meta, file_ending,
                                                                 channel_names if separate else None)


def _nifti_class(head: bytes):
  """The NIfTI-1 or NIfTI-2 image class, from the first (decompressed) bytes of a file."""
  return nib.Nifti2Image if int.from_bytes(head[:4], "little") == _NIFTI2_HEADER_SIZE else nib.Nifti1Image


def _cannot_read(path, e: Exception) -> InputError:
  return InputError(path, f"cannot read NIfTI (corrupt or truncated file): {type(e).__name__}: {e}")


def _read_header(path: pathlib.Path, json_path: pathlib.Path) -> tuple:
  """Reads the header of a NIfTI file, not its voxels.

  Returns:
    (array shape, affine `[4, 4]` float64, zooms); InputError if the file is missing, unreadable or damaged, or its
    voxel type is not a real number.
  """
  try:
    with open(path, "rb") as f:
      compressed = f.read(2) == _GZIP_MAGIC
  except FileNotFoundError as e:
    raise InputError(path, f"missing (listed in {json_path})") from e
  except OSError as e:
    raise InputError(path, f"cannot read: {e}") from e
  try:
    # Streaming through gzip decompresses only the header's bytes.
    with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
      header_class = _nifti_class(f.read(4)).header_class
      f.seek(0)
      header = header_class.from_fileobj(f)
    shape = tuple(int(s) for s in header.get_data_shape())
    affine = np.asarray(header.get_best_affine(), np.float64)
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    dtype = header.get_data_dtype()
  except _DECODE_ERRORS as e:
    raise _cannot_read(path, e) from e
  if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
    raise InputError(path, f"unsupported voxel type {dtype}")
  return shape, affine, zooms


def _index_case(case_id, image_paths, label_path, json_path, slicing_axis: int, affine_tolerance: float,
                target_spacing) -> CaseInfo:
  """Reads and checks the headers of one case (one image file, 3D or 4D, or one 3D file per channel)."""
  label_shape, label_affine, _ = _read_header(label_path, json_path)
  if len(label_shape) != 3:
    raise InputError(label_path, f"label must be 3D [X, Y, Z], got shape {label_shape}")
  num_channels, affine, zooms = 0, None, None
  for image_path in image_paths:
    image_shape, image_affine, image_zooms = _read_header(image_path, json_path)
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
  order = [slicing_axis] + [a for a in range(3) if a != slicing_axis]
  new_shape, new_spacing = resample_lib.target_grid(label_shape, zooms, target_spacing)
  return CaseInfo(case_id=case_id, image_paths=tuple(image_paths), label_path=label_path,
                  shape=tuple(new_shape[a] for a in order), spacing=tuple(new_spacing[a] for a in order),
                  num_channels=num_channels, nifti_shape=nifti_shape if len(image_paths) == 1 else label_shape,
                  affine=affine, original_spacing=tuple(zooms[a] for a in order),
                  original_shape=tuple(label_shape[a] for a in order))


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
    root: an MSD or nnU-Net v2 folder: `dataset.json`, `imagesTr/` and `labelsTr/` (see the module docstring).
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
  meta = _read_json(json_path)
  class_names, ignore_label = layouts.parse_labels(json_path, meta["labels"])
  channel_names, _, separate, pairs = _layout(json_path, meta)
  cases = []
  num_channels = len(channel_names) if channel_names else None
  for case_id, image_paths, label_path in pairs[:max_cases]:
    case = _index_case(case_id, image_paths, label_path, json_path, slicing_axis, affine_tolerance, target_spacing)
    if num_channels is None:
      num_channels = case.num_channels
    if case.num_channels != num_channels:
      key = "channel_names" if separate else "modality"
      expected = f"'{key}' in {json_path.name} lists" if channel_names else "earlier cases have"
      raise InputError(image_paths[0], f"image has {case.num_channels} channel(s) but {expected} {num_channels}")
    cases.append(case)
  logging.info("Indexed %d cases of %s in %.2fs.", len(cases), root, time.perf_counter() - start)
  return DatasetIndex(name=str(meta.get("name", root.name)), root=str(root), class_names=class_names,
                      channel_names=channel_names or tuple(f"channel_{i}" for i in range(num_channels)),
                      slicing_axis=slicing_axis, cases=tuple(cases), ignore_label=ignore_label,
                      target_spacing=target_spacing)


# ---------------------------------------------------------------------------------------------------------------------
# Decoding and checking the voxels of one case.
# ---------------------------------------------------------------------------------------------------------------------


def _decode_nifti(path: pathlib.Path, raw: bytes) -> np.ndarray:
  """File bytes -> data array with scaling applied; InputError if damaged."""
  try:
    if raw[:2] == _GZIP_MAGIC:
      # Decompressing everything up front (and checking the CRC) catches a damaged data block, not just the header.
      raw = gzip.decompress(raw)
    return np.asanyarray(_nifti_class(raw).from_bytes(raw).dataobj)
  except _DECODE_ERRORS as e:
    raise _cannot_read(path, e) from e


def _check_label_values(path, values: np.ndarray, num_classes: int, ignore_label=None) -> None:
  undeclared = [v for v in values.tolist() if not (0 <= v < num_classes or v == ignore_label)]
  if undeclared:
    ignore = "" if ignore_label is None else f" and {ignore_label} ('{IGNORE_NAME}')"
    raise InputError(path, f"label values {undeclared} are not declared in dataset.json 'labels' "
                     f"(0..{num_classes - 1}{ignore})")


def _as_int_label(path, data: np.ndarray) -> np.ndarray:
  """Label voxels -> int32; float labels are accepted when every voxel holds an exact integer."""
  if np.issubdtype(data.dtype, np.floating):
    if not np.all(np.isfinite(data)):
      raise InputError(path, "label holds NaN or Inf values")
    if not np.array_equal(data, np.round(data)):
      bad = data[data != np.round(data)]
      raise InputError(path, f"label holds non-integer values, e.g. {float(bad.flat[0])!r}")
  if data.size and (data.min() < np.iinfo(np.int32).min or data.max() > np.iinfo(np.int32).max):
    raise InputError(path, "label values out of int32 range")
  return data.astype(np.int32)


def _decode_case(case: CaseInfo, image_raws, label_raw: bytes, slicing_axis: int, normalization: str,
                 ct_window, ignore_label=None) -> tuple:
  """Decodes, checks, normalises and resamples one case.

  Returns:
    (image `[D, H, W, C]` float16, label `[D, H, W]` int32, original label `[D0, H0, W0]` int32 or None), on the
    case's (resampled) grid; the original label only when resampled.
  """
  channels = []
  image_shape = case.nifti_shape
  for path, raw in zip(case.image_paths, image_raws):
    image = _decode_nifti(path, raw)
    if image.shape != image_shape:
      raise InputError(path, f"changed since it was indexed: shape {image.shape}, its header said {image_shape}")
    if np.issubdtype(image.dtype, np.floating) and not np.all(np.isfinite(image)):
      raise InputError(path, "image holds NaN or Inf voxels")
    channels.append(image if image.ndim == 4 else image[..., None])
  label = _decode_nifti(case.label_path, label_raw)
  if label.shape != case.nifti_shape[:3]:
    raise InputError(case.label_path, f"changed since it was indexed: shape {label.shape}, its header said "
                     f"{case.nifti_shape[:3]}")
  label = np.ascontiguousarray(to_volume_order(_as_int_label(case.label_path, label), slicing_axis))
  image = np.concatenate(channels, axis=-1) if len(channels) > 1 else channels[0]
  image = normalize_float64(to_volume_order(image, slicing_axis), normalization, ct_window)
  if not case.resampled:
    return np.ascontiguousarray(image.astype(np.float16)), label, None
  image = resample_lib.resample_image(image, case.shape, case.original_spacing).astype(np.float16)
  resampled = resample_lib.resample_label(label, case.shape, case.original_spacing, ignore=ignore_label)
  return image, resampled, label


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessed cache.
# ---------------------------------------------------------------------------------------------------------------------


def _cache_key(image_raws, label_raw: bytes, settings: dict) -> str:
  parts = {"image": [hashlib.sha256(raw).hexdigest() for raw in image_raws],
           "label": hashlib.sha256(label_raw).hexdigest(), "settings": settings, "format": _CACHE_FORMAT}
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _cache_path(folder: pathlib.Path, case_id: str, key: str) -> pathlib.Path:
  return folder / f"{case_id}.{key[:32]}.npz"


def _read_cache(path: pathlib.Path, key: str, case: CaseInfo, mapped: bool = False):
  """Returns (image, label, original label or None, label values) of the entry at `path` if it has the right key and
  shapes, else None. With `mapped` the three arrays are `mapped.MappedArray`s of the entry, read on access."""
  if not path.is_file():
    return None
  try:
    with np.load(path) as entry:
      if str(entry["key"]) != key:
        return None
      label_values = entry["label_values"]
      if mapped:
        arrays = mapped_lib.open_npz(path)
        image, label, original = arrays["image"], arrays["label"], arrays.get("original_label")
      else:
        image, label = entry["image"], entry["label"]
        original = entry["original_label"] if "original_label" in entry.files else None
  except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
    logging.warning("Ignoring unreadable cache entry %s: %s", path, e)
    return None
  if (image.shape != case.shape + (case.num_channels,) or image.dtype != np.float16 or label.shape != case.shape
      or (original is None) == case.resampled or (original is not None and original.shape != case.original_shape)):
    logging.warning("Ignoring cache entry %s: its arrays do not match %s's header", path, case.image_path)
    return None
  return image, label, original, label_values


def _write_cache(path: pathlib.Path, key: str, image: np.ndarray, label: np.ndarray, original, label_values,
                 dataset: str = ""):
  # One file per entry, written atomically: an entry is complete or absent, never half written. `dataset` (the
  # folder the case came from) is for people listing the cache (`slicejax.cache`), not part of the key.
  dtype = _smallest_int(label_values[0], label_values[-1])
  arrays = dict(key=np.array(key), image=image, label=label.astype(dtype), label_values=label_values,
                dataset=np.array(dataset))
  if original is not None:
    arrays["original_label"] = original.astype(dtype)
  files.atomic_writer(path, lambda f: np.savez(f, **arrays))


# ---------------------------------------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------------------------------------


def _as_type(array, dtype):
  """`array` as `dtype`; a mapped array of that type stays mapped."""
  return array if array.dtype == dtype else np.asarray(array).astype(dtype)


def _read_bytes(path: pathlib.Path, json_path: pathlib.Path) -> bytes:
  try:
    return path.read_bytes()
  except FileNotFoundError as e:
    raise InputError(path, f"missing (listed in {json_path})") from e
  except OSError as e:
    raise InputError(path, f"cannot read: {e}") from e


def _check_normalization(normalization, ct_window) -> None:
  items = parse_normalization(normalization)
  if ("ct",) in items and not (len(ct_window) == 2 and float(ct_window[0]) < float(ct_window[1])):
    raise InputError("ct_window", f"must be (lo, hi) with lo < hi, got {ct_window!r}")


def load_volumes(index: DatasetIndex, *, normalization: str = "zscore", ct_window=(-1000., 1000.),
                 cache_dir=None, mapped: bool = False) -> Dataset:
  """Reads, checks, normalises and (with `index.target_spacing`) resamples the voxels of every case of `index`.

  Args:
    index: from `index_msd`, possibly narrowed with `DatasetIndex.select`.
    normalization: "zscore", "ct", or one item per channel (see `parse_normalization` and the module docstring).
    ct_window: `(lo, hi)` clipping window for "ct".
    cache_dir: optional cache folder, e.g. `default_cache_dir()`; entries go in its `volumes/` folder, created if
      missing.
    mapped: the volumes' arrays stay in their cache entries (`mapped.MappedArray`, read on access) instead of memory,
      for datasets larger than memory; needs `cache_dir`. The same values either way.

  Returns:
    A Dataset whose volumes follow `index.cases`: images `[D, H, W, C]` float16, labels `[D, H, W]` uint8 (uint16
    for more than 256 classes; the ignore label's voxels keep its value), on the resampled grid, with the labels on
    the files' grid in `Volume.original_label` when resampled. The same arrays whether they come from the files or
    from the cache.

  Raises:
    InputError: naming the file (or setting) for any bad input; see the module docstring.
  """
  _check_normalization(normalization, ct_window)
  if mapped and cache_dir is None:
    raise ValueError("mapped volumes live in the cache: pass cache_dir")
  start = time.perf_counter()
  json_path = pathlib.Path(index.root) / "dataset.json"
  settings = {"slicing_axis": index.slicing_axis, "normalization": normalization}
  if any(item == ("ct",) for item in parse_normalization(normalization)):
    settings["ct_window"] = [float(w) for w in ct_window]
  if index.target_spacing:
    settings["target_spacing"] = [float(s) for s in index.target_spacing]
  folder = None if cache_dir is None else pathlib.Path(cache_dir) / "volumes"
  highest = index.num_classes - 1 if index.ignore_label is None else max(index.num_classes - 1, index.ignore_label)
  label_dtype = _smallest_int(0, highest)

  # A refused dataset leaves the cache as it found it: entries written by this call are removed again when a later
  # case is refused (entries are content-keyed, so an entry this call wrote was not there before).
  created = [] if folder is None else [p for p in (folder.parent, folder) if not p.exists()]
  written = []
  try:
    volumes, hits = _load_cases(index, folder, settings, json_path, normalization, ct_window, label_dtype, mapped,
                                written)
  except InputError:
    for path in written:
      path.unlink(missing_ok=True)
    for path in reversed(created):
      if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    raise
  logging.info("Loaded %d cases from %s in %.2fs (%d from cache).", len(volumes), index.root,
               time.perf_counter() - start, hits)
  return Dataset(name=index.name, root=index.root, class_names=index.class_names, channel_names=index.channel_names,
                 volumes=tuple(volumes), ignore_label=index.ignore_label)


def _load_cases(index, folder, settings, json_path, normalization, ct_window, label_dtype, mapped, written):
  """`load_volumes`' loop: (volumes, cache hits); appends the cache entries it writes to `written`."""
  if folder is not None:
    folder.mkdir(parents=True, exist_ok=True)
  volumes, hits = [], 0
  for case in index.cases:
    image_raws = [_read_bytes(path, json_path) for path in case.image_paths]
    label_raw = _read_bytes(case.label_path, json_path)
    cached = None
    if folder is not None:
      key = _cache_key(image_raws, label_raw, settings)
      path = _cache_path(folder, case.case_id, key)
      cached = _read_cache(path, key, case, mapped)
    if cached is None:
      image, label, original = _decode_case(case, image_raws, label_raw, index.slicing_axis, normalization, ct_window,
                                               index.ignore_label)
      label_values = np.unique(label if original is None else original)
      # Checked before the entry is written: a label the dataset does not declare never reaches the cache.
      _check_label_values(case.label_path, label_values, index.num_classes, index.ignore_label)
      if folder is not None:
        if not path.exists():
          written.append(path)
        _write_cache(path, key, image, label, original, label_values, str(index.root))
      if mapped:  # the entry just written, read on access like every other
        image, label, original, _ = _read_cache(path, key, case, mapped)
    else:
      image, label, original, label_values = cached
      hits += 1
      # dataset.json is not part of the cache key, so this check runs on cached entries too.
      _check_label_values(case.label_path, label_values, index.num_classes, index.ignore_label)
    volumes.append(Volume(
        case_id=case.case_id, image=image, label=_as_type(label, label_dtype), spacing=case.spacing,
        affine=case.affine, slicing_axis=index.slicing_axis,
        original_label=None if original is None else _as_type(original, label_dtype),
        original_spacing=case.original_spacing if case.resampled else None, key=key if folder else None))
  return volumes, hits


def load_msd(root, *, slicing_axis: int = 2, normalization: str = "zscore", ct_window=(-1000., 1000.),
             cache_dir=None, affine_tolerance: float = 1e-3, max_cases=None, target_spacing=()) -> Dataset:
  """Indexes and loads every training case of an MSD or nnU-Net v2 folder: `load_volumes(index_msd(root, ...), ...)`.

  Args:
    root: folder holding `dataset.json`, `imagesTr/` and `labelsTr/`.
    slicing_axis: NIfTI axis (0, 1 or 2) moved to the front as D.
    normalization: "zscore", "ct" or per channel (see `load_volumes`).
    ct_window: `(lo, hi)` clipping window for "ct".
    cache_dir: optional cache folder (see `load_volumes`).
    affine_tolerance: largest allowed absolute difference between an image's and its label's affine entries.
    max_cases: load only the first `max_cases` cases in case_id order.
    target_spacing: `()` or `(sX, sY, sZ)` mm to resample to (see `index_msd`).

  Returns:
    A Dataset whose volumes are sorted by case_id (see `load_volumes`).

  Raises:
    InputError: naming the file (or setting) for any bad input; see the module docstring.
  """
  index = index_msd(root, slicing_axis=slicing_axis, affine_tolerance=affine_tolerance, max_cases=max_cases,
                    target_spacing=target_spacing)
  return load_volumes(index, normalization=normalization, ct_window=ct_window, cache_dir=cache_dir)


# ---------------------------------------------------------------------------------------------------------------------
# Splits, padding and writing predictions.
# ---------------------------------------------------------------------------------------------------------------------


def split_cases(case_ids, *, num_train: int, num_val: int, num_test: int, seed: int) -> dict:
  """Seeded disjoint split of case ids, independent of the input order.

  The ids are sorted and permuted with `seed`; the test cases are taken first, then validation, then training, so
  the test set for a seed stays the same when only `num_train` or `num_val` changes.

  Args:
    case_ids: iterable of distinct case ids.
    num_train, num_val, num_test: exact sizes; their sum may be less than the number of cases. `num_train` 0 takes
      every case left after the test and validation cases (a training pool that scales with a small dataset).
    seed: integer seed.

  Returns:
    {"train": [...], "val": [...], "test": [...]}, each list sorted.
  """
  ids = sorted(case_ids)
  if len(set(ids)) != len(ids):
    raise InputError("case_ids", "duplicate case ids")
  counts = {"num_train": num_train, "num_val": num_val, "num_test": num_test}
  for name, n in counts.items():
    if not isinstance(n, (int, np.integer)) or n < 0:
      raise InputError(name, f"must be a non-negative integer, got {n!r}")
  if sum(counts.values()) > len(ids) or (num_train == 0 and num_val + num_test >= len(ids)):
    raise InputError("config.data.split", f"train + val + test = {num_train} + {num_val} + {num_test} "
                     f"{'leaves no training case among' if num_train == 0 else 'exceeds'} the {len(ids)} cases; set "
                     "--config.data.split.train (0: every case left after val and test), .val or .test")
  num_train = num_train or len(ids) - num_test - num_val
  order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
  test = order[:num_test]
  val = order[num_test:num_test + num_val]
  train = order[num_test + num_val:num_test + num_val + num_train]
  return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def fit_to_shape(array: np.ndarray, shape) -> tuple:
  """Pads (zeros, at the end) or centre-crops axes 1..len(shape) of `array` to `shape`.

  Args:
    array: `[D, H, W, ...]`.
    shape: target sizes of axes 1..len(shape), e.g. `(H', W')`.

  Returns:
    (out `[D, H', W', ...]`, valid `[D, H', W']` bool, True where `out` holds data of `array`, offsets): offsets[i]
    is the index in `array` of the first element kept along axis i + 1 (0 where the axis was padded).
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) > array.ndim - 1:
    raise ValueError(f"shape {shape} has more axes than {array.shape} after the first")
  src, dst, offsets = [slice(None)], [slice(None)], []
  for size, target in zip(array.shape[1:], shape):
    offset = max((size - target) // 2, 0)
    kept = min(size, target)
    src.append(slice(offset, offset + kept))
    dst.append(slice(0, kept))
    offsets.append(offset)
  out = np.zeros(array.shape[:1] + shape + array.shape[1 + len(shape):], array.dtype)
  out[tuple(dst)] = array[tuple(src)]
  valid = np.zeros(array.shape[:1] + shape, np.bool_)
  valid[tuple(dst)] = True
  return out, valid, tuple(offsets)


def pad_volume(array: np.ndarray, shape) -> np.ndarray:
  """Zero-pads the first three axes of `[D, H, W, ...]` at the end to `shape` (each at least the array's size)."""
  return np.pad(array, [(0, s - n) for s, n in zip(shape, array.shape[:3])] + [(0, 0)] * (array.ndim - 3))


def unfit(array: np.ndarray, original_hw, offsets) -> np.ndarray:
  """Inverse of `fit_to_shape` for a prediction: `[D, H', W', ...]` -> `[D, H, W, ...]`, cropped-away parts 0.

  Args:
    array: `[D, H', W', ...]`, e.g. a predicted label map.
    original_hw: the sizes `(H, W)` before `fit_to_shape`.
    offsets: the offsets `fit_to_shape` returned.
  """
  original_hw = tuple(int(s) for s in original_hw)
  src, dst = [slice(None)], [slice(None)]
  for size, fitted, offset in zip(original_hw, array.shape[1:], offsets):
    kept = min(size, fitted)
    src.append(slice(0, kept))
    dst.append(slice(offset, offset + kept))
  out = np.zeros(array.shape[:1] + original_hw + array.shape[1 + len(original_hw):], array.dtype)
  out[tuple(dst)] = array[tuple(src)]
  return out
