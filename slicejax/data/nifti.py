"""NIfTI files: the one place that reads them (headers, bytes, voxels), their axis convention, and the writers.

Reading. `header(path)` decodes a file's header alone, streamed (a `.nii.gz` is decompressed only as far as its
header), and checks that its voxels are real numbers: an index reads no voxel. `read_bytes(path)` gives a file's
bytes, which a cache key hashes (`slicejax.data.cache_entries`), and `decode(path, raw)` the voxels of those bytes,
decompressed whole first, so that a damaged data block is found, not only a damaged header. Both recognise a
compressed file by gzip's magic bytes and NIfTI-1 or NIfTI-2 by the header's size. `load(path)` opens a file through
nibabel (header now, voxels on access): the reference grid of a file written on it, and `read_array`'s voxels. Bad
input raises `InputError` naming the file.

Axis convention. The NIfTI data array `(X, Y, Z[, C])` has its slicing axis `a` (0, 1 or 2) moved to the front with
`np.moveaxis(arr, a, 0)` (`to_volume_order`); the two remaining spatial axes keep their order. Labels become
`[D, H, W]` and images `[D, H, W, C]` with `C >= 1` (a 3D image gets `C = 1`). `to_nifti_order` is the inverse.
Shapes and spacings (mm) of volumes are given in the same `(D, H, W)` order; a file's affine is kept unchanged, so a
prediction in `to_nifti_order` written on the case's file (`save_like`) has the original axis order, affine and
array shape.

Writing. `save_like(path, data, reference)` writes an array of the reference file's spatial shape with the
reference's header geometry (affine, sform and qform with their codes, voxel sizes, units), which is what ITK-SNAP,
3D Slicer and nnU-Net use to overlay it on the image; `save(path, array, affine)` writes an array on an affine.
"""

import gzip
import pathlib
import zlib
from typing import Optional

import nibabel as nib
from nibabel import filebasedimages
from nibabel import spatialimages
from nibabel import wrapstruct
import numpy as np

from slicejax.errors import InputError
from slicejax import files

NIFTI_ENDINGS = (".nii.gz", ".nii")
_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI2_HEADER_SIZE = 540
# Everything nibabel, gzip and zlib raise for a damaged file; caught while decoding a header or a whole data block.
_DECODE_ERRORS = (OSError, EOFError, zlib.error, ValueError, filebasedimages.ImageFileError,
                  spatialimages.HeaderDataError, wrapstruct.WrapStructError)


def strip_ending(name: str) -> Optional[str]:
  """`name` without `.nii.gz` / `.nii`, or None when it has neither."""
  for ending in NIFTI_ENDINGS:
    if name.endswith(ending):
      return name[:-len(ending)]
  return None


def to_volume_order(array: np.ndarray, slicing_axis: int) -> np.ndarray:
  """NIfTI `[X, Y, Z, ...]` -> `[D, H, W, ...]` by moving `slicing_axis` to the front."""
  return np.moveaxis(array, slicing_axis, 0)


def to_nifti_order(array: np.ndarray, slicing_axis: int) -> np.ndarray:
  """`[D, H, W, ...]` -> NIfTI `[X, Y, Z, ...]`; the inverse of `to_volume_order`."""
  return np.moveaxis(array, 0, slicing_axis)


# ---------------------------------------------------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------------------------------------------------


def _missing(listed_in) -> str:
  return "missing" if listed_in is None else f"missing (listed in {listed_in})"


def _nifti_class(head: bytes):
  """The NIfTI-1 or NIfTI-2 image class, from the first (decompressed) bytes of a file."""
  return nib.Nifti2Image if int.from_bytes(head[:4], "little") == _NIFTI2_HEADER_SIZE else nib.Nifti1Image


def _cannot_read(path, e: Exception) -> InputError:
  return InputError(path, f"cannot read NIfTI (corrupt or truncated file): {type(e).__name__}: {e}")


def read_bytes(path, listed_in=None) -> bytes:
  """The bytes of the file at `path`; InputError if it is missing (listed in the file `listed_in`, if given) or
  unreadable."""
  try:
    return pathlib.Path(path).read_bytes()
  except FileNotFoundError as e:
    raise InputError(path, _missing(listed_in)) from e
  except OSError as e:
    raise InputError(path, f"cannot read: {e}") from e


def header(path, listed_in=None) -> tuple:
  """Reads the header of a NIfTI file, not its voxels.

  Args:
    path: the file, compressed or not.
    listed_in: the file that lists `path` (e.g. its dataset.json), said when `path` is missing.

  Returns:
    (array shape, affine `[4, 4]` float64, zooms of the three spatial axes); InputError if the file is missing,
    unreadable or damaged, or its voxel type is not a real number.
  """
  try:
    with open(path, "rb") as f:
      compressed = f.read(2) == _GZIP_MAGIC
  except FileNotFoundError as e:
    raise InputError(path, _missing(listed_in)) from e
  except OSError as e:
    raise InputError(path, f"cannot read: {e}") from e
  try:
    # Streaming through gzip decompresses only the header's bytes.
    with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
      header_class = _nifti_class(f.read(4)).header_class
      f.seek(0)
      decoded = header_class.from_fileobj(f)
    shape = tuple(int(s) for s in decoded.get_data_shape())
    affine = np.asarray(decoded.get_best_affine(), np.float64)
    zooms = tuple(float(z) for z in decoded.get_zooms()[:3])
    dtype = decoded.get_data_dtype()
  except _DECODE_ERRORS as e:
    raise _cannot_read(path, e) from e
  if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
    raise InputError(path, f"unsupported voxel type {dtype}")
  return shape, affine, zooms


def decode(path, raw: bytes) -> np.ndarray:
  """The voxels of `raw`, the bytes of the NIfTI file at `path` (`read_bytes`), scaling applied; InputError if
  damaged."""
  try:
    if raw[:2] == _GZIP_MAGIC:
      # Decompressing everything up front (and checking the CRC) catches a damaged data block, not just the header.
      raw = gzip.decompress(raw)
    return np.asanyarray(_nifti_class(raw).from_bytes(raw).dataobj)
  except _DECODE_ERRORS as e:
    raise _cannot_read(path, e) from e


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


# ---------------------------------------------------------------------------------------------------------------------
# Checks.
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------------------------------------------


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
