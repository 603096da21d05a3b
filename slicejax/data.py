"""Reading Medical Segmentation Decathlon (MSD) folders into per-case volumes.

Layout read: `ROOT/dataset.json` with `labels` ({"0": "background", "1": ...}), `training` (a list of
{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}), an optional `modality` ({"0": "T2", ...}) and an
optional `name`. Images are 3D `[X, Y, Z]` or 4D multi-channel `[X, Y, Z, C]` (channels last); labels are 3D integers.

Axis convention. The NIfTI data array `(X, Y, Z[, C])` has its slicing axis `a` (0, 1 or 2) moved to the front with
`np.moveaxis(arr, a, 0)`; the two remaining spatial axes keep their order. Labels become `[D, H, W]` and images
`[D, H, W, C]` with `C >= 1` (a 3D image gets `C = 1`). `to_nifti_order` is the inverse. Spacing (mm) is reported in
the same `(D, H, W)` order; the file's affine is kept unchanged, so `save_label` writes predictions back in the
original axis order with the original affine and the original array shape.

Intensities are normalised per volume and per channel (the files' scales differ by orders of magnitude):
  * "zscore": `(x - mean) / max(std, 1e-8)` with mean and std over all voxels of the channel, in float64;
  * "ct": clip to `ct_window = (lo, hi)` in Hounsfield units, then map linearly to [-1, 1]
    (`2 * (x - lo) / (hi - lo) - 1`), so one HU value means the same number in every volume.

Bad input raises `slicejax.errors.InputError` naming the file at load time. With `cache_dir`, each preprocessed case
is stored as `.npy` arrays plus a JSON record, keyed by the SHA-256 of both files' bytes and the preprocessing
settings; checks that depend on `dataset.json` or on the tolerance are re-run on cached entries.
"""

import dataclasses
import gzip
import hashlib
import json
import os
import pathlib
import time
import uuid
import zlib

from absl import logging
import nibabel as nib
from nibabel import filebasedimages
from nibabel import spatialimages
from nibabel import wrapstruct
import numpy as np

from slicejax.errors import InputError

NORMALIZATIONS = ("zscore", "ct")
_STD_FLOOR = 1e-8
# Bumped whenever the cached arrays or their meaning change, so old entries miss.
_CACHE_FORMAT = 1
_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI2_HEADER_SIZE = 540
# Everything nibabel, gzip and zlib raise for a damaged file; caught while decoding the whole data block.
_DECODE_ERRORS = (OSError, EOFError, zlib.error, ValueError, filebasedimages.ImageFileError,
                  spatialimages.HeaderDataError, wrapstruct.WrapStructError)


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
  """One case, in `[D, H, W]` order (see the module docstring).

  Attributes:
    case_id: file name without `.nii.gz`, e.g. "hippocampus_001".
    image: `[D, H, W, C]` float32, normalised per channel.
    label: `[D, H, W]` int32 class indices.
    spacing: `(sD, sH, sW)` voxel size in mm.
    affine: `[4, 4]` float64, the image file's voxel-to-world affine (NIfTI axis order).
    slicing_axis: the NIfTI axis (0, 1 or 2) that became D.
  """
  case_id: str
  image: np.ndarray
  label: np.ndarray
  spacing: tuple
  affine: np.ndarray
  slicing_axis: int

  @property
  def depth(self) -> int:
    return self.label.shape[0]

  @property
  def original_shape(self) -> tuple:
    """The spatial shape `(X, Y, Z)` of the NIfTI files this volume came from."""
    return tuple(to_nifti_order(np.empty(self.label.shape, np.bool_), self.slicing_axis).shape)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A loaded MSD folder.

  Attributes:
    name: `name` from dataset.json, else the folder name.
    root: the folder it was read from.
    class_names: class names by label value; `class_names[0]` is the background.
    channel_names: image channel names (from `modality`, else "channel_<i>").
    volumes: the cases, sorted by case_id.
  """
  name: str
  root: str
  class_names: tuple
  channel_names: tuple
  volumes: tuple

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_channels(self) -> int:
    return len(self.channel_names)

  def by_id(self) -> dict:
    """Returns {case_id: Volume}."""
    return {v.case_id: v for v in self.volumes}


def to_volume_order(array: np.ndarray, slicing_axis: int) -> np.ndarray:
  """NIfTI `[X, Y, Z, ...]` -> `[D, H, W, ...]` by moving `slicing_axis` to the front."""
  return np.moveaxis(array, slicing_axis, 0)


def to_nifti_order(array: np.ndarray, slicing_axis: int) -> np.ndarray:
  """`[D, H, W, ...]` -> NIfTI `[X, Y, Z, ...]`; the inverse of `to_volume_order`."""
  return np.moveaxis(array, 0, slicing_axis)


# ---------------------------------------------------------------------------------------------------------------------
# dataset.json.
# ---------------------------------------------------------------------------------------------------------------------


def _read_json(path: pathlib.Path) -> dict:
  if not path.is_file():
    raise InputError(path, "missing (expected an MSD dataset.json)")
  try:
    meta = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(path, f"not valid JSON: {e}") from e
  if not isinstance(meta, dict):
    raise InputError(path, "not a JSON object")
  for key in ("training", "labels"):
    if key not in meta:
      raise InputError(path, f"lacks '{key}'")
  return meta


def _index_map(path, key: str, mapping) -> tuple:
  """{"0": name0, "1": name1, ...} (or the inverse, {name: 0, ...}) -> (name0, name1, ...); keys must be 0..K-1."""
  if not isinstance(mapping, dict) or not mapping:
    raise InputError(path, f"'{key}' must be a non-empty object")
  items = list(mapping.items())
  if all(isinstance(v, int) and not isinstance(v, bool) for _, v in items):
    items = [(v, k) for k, v in items]
  try:
    by_index = {int(k): str(v) for k, v in items}
  except (TypeError, ValueError) as e:
    raise InputError(path, f"'{key}' keys must be integers, got {list(mapping)}") from e
  if sorted(by_index) != list(range(len(by_index))):
    raise InputError(path, f"'{key}' must be numbered 0..{len(by_index) - 1}, got {sorted(by_index)}")
  return tuple(by_index[i] for i in range(len(by_index)))


def _case_id(image_path: str) -> str:
  name = pathlib.PurePosixPath(image_path).name
  for suffix in (".nii.gz", ".nii"):
    if name.endswith(suffix):
      return name[:-len(suffix)]
  return name


def _training_pairs(json_path: pathlib.Path, training) -> list:
  """Returns [(case_id, image_path, label_path)] sorted by case_id."""
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
    pairs[case_id] = (root / entry["image"], root / entry["label"])
  return [(c, *pairs[c]) for c in sorted(pairs)]


# ---------------------------------------------------------------------------------------------------------------------
# Decoding and checking one case.
# ---------------------------------------------------------------------------------------------------------------------


def _decode_nifti(path: pathlib.Path, raw: bytes) -> tuple:
  """File bytes -> (data array with scaling applied, affine [4, 4] float64, zooms (3,)); InputError if damaged."""
  try:
    if raw[:2] == _GZIP_MAGIC:
      # Decompressing everything up front (and checking the CRC) catches a damaged data block, not just the header.
      raw = gzip.decompress(raw)
    header_size = int.from_bytes(raw[:4], "little") if len(raw) >= 4 else 0
    image_class = nib.Nifti2Image if header_size == _NIFTI2_HEADER_SIZE else nib.Nifti1Image
    img = image_class.from_bytes(raw)
    data = np.asanyarray(img.dataobj)
    affine = np.asarray(img.affine, np.float64)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
  except _DECODE_ERRORS as e:
    raise InputError(path, f"cannot read NIfTI (corrupt or truncated file): {type(e).__name__}: {e}") from e
  if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)
          or data.dtype == np.bool_):
    raise InputError(path, f"unsupported voxel type {data.dtype}")
  return data, affine, zooms


def _check_label_values(path, values: np.ndarray, num_classes: int) -> None:
  undeclared = [v for v in values.tolist() if not 0 <= v < num_classes]
  if undeclared:
    raise InputError(path, f"label values {undeclared} are not declared in dataset.json 'labels' "
                     f"(0..{num_classes - 1})")


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


def normalize(image: np.ndarray, normalization: str, ct_window=(-1000., 1000.)) -> np.ndarray:
  """Normalises each channel of one volume (see the module docstring).

  Args:
    image: `[D, H, W, C]` raw intensities, any real dtype.
    normalization: "zscore" or "ct".
    ct_window: `(lo, hi)` clipping window for "ct".

  Returns:
    `[D, H, W, C]` float32.
  """
  x = image.astype(np.float64)
  if normalization == "zscore":
    spatial = tuple(range(x.ndim - 1))
    mean = x.mean(axis=spatial)
    std = np.maximum(x.std(axis=spatial), _STD_FLOOR)
    return ((x - mean) / std).astype(np.float32)
  if normalization == "ct":
    lo, hi = ct_window
    return (2. * (np.clip(x, lo, hi) - lo) / (hi - lo) - 1.).astype(np.float32)
  raise InputError("normalization", f"unknown normalisation {normalization!r}; choose from {NORMALIZATIONS}")


def _decode_case(case_id, image_path, label_path, image_raw, label_raw, *, slicing_axis, normalization, ct_window):
  """Decodes one pair and runs the checks that need only the two files; returns (Volume, record for the cache)."""
  image, affine, zooms = _decode_nifti(image_path, image_raw)
  label, label_affine, _ = _decode_nifti(label_path, label_raw)
  if image.ndim not in (3, 4):
    raise InputError(image_path, f"image must be 3D [X, Y, Z] or 4D [X, Y, Z, C], got shape {image.shape}")
  if label.ndim != 3:
    raise InputError(label_path, f"label must be 3D [X, Y, Z], got shape {label.shape}")
  if image.shape[:3] != label.shape:
    raise InputError(label_path, f"label shape {label.shape} differs from image shape {image.shape[:3]} ({image_path})")
  if not all(np.isfinite(z) and z > 0 for z in zooms):
    raise InputError(image_path, f"voxel spacing {zooms} must be positive")
  if np.issubdtype(image.dtype, np.floating) and not np.all(np.isfinite(image)):
    raise InputError(image_path, "image holds NaN or Inf voxels")
  label = _as_int_label(label_path, label)
  if image.ndim == 3:
    image = image[..., None]
  image = normalize(to_volume_order(image, slicing_axis), normalization, ct_window)
  label = np.ascontiguousarray(to_volume_order(label, slicing_axis))
  order = [slicing_axis] + [a for a in range(3) if a != slicing_axis]
  volume = Volume(case_id=case_id, image=np.ascontiguousarray(image), label=label,
                  spacing=tuple(zooms[a] for a in order), affine=affine, slicing_axis=slicing_axis)
  record = {"label_values": np.unique(label).tolist(),
            "affine_difference": float(np.max(np.abs(affine - label_affine)))}
  return volume, record


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessed cache.
# ---------------------------------------------------------------------------------------------------------------------


def _cache_key(image_raw: bytes, label_raw: bytes, settings: dict) -> str:
  parts = {"image": hashlib.sha256(image_raw).hexdigest(), "label": hashlib.sha256(label_raw).hexdigest(),
           "settings": settings, "format": _CACHE_FORMAT}
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _temporary_sibling(path: pathlib.Path, suffix: str = ".tmp") -> pathlib.Path:
  # A fresh name next to `path` (same file system, so os.replace is atomic); unlike tempfile.mkstemp, the file gets
  # the usual umask permissions.
  return path.parent / f".{path.name}.{uuid.uuid4().hex}{suffix}"


def _atomic_write(path: pathlib.Path, write) -> None:
  """Calls `write(file)` on a temporary file next to `path`, then renames it into place."""
  tmp = _temporary_sibling(path)
  try:
    with open(tmp, "xb") as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def _cache_paths(cache_dir: pathlib.Path, case_id: str, key: str) -> dict:
  stem = f"{case_id}.{key[:32]}"
  return {k: cache_dir / f"{stem}.{k}" for k in ("image.npy", "label.npy", "json")}


def _read_cache(paths: dict, key: str, case_id: str):
  """Returns (Volume, record) for a complete entry with the right key, else None."""
  if not paths["json"].is_file():
    return None
  try:
    meta = json.loads(paths["json"].read_text())
    if meta.get("key") != key:
      return None
    image = np.load(paths["image.npy"])
    label = np.load(paths["label.npy"])
  except (OSError, ValueError) as e:
    logging.warning("Ignoring unreadable cache entry %s: %s", paths["json"], e)
    return None
  if image.shape != tuple(meta["image_shape"]) or label.shape != tuple(meta["label_shape"]):
    logging.warning("Ignoring cache entry %s: array shapes differ from its record", paths["json"])
    return None
  volume = Volume(case_id=case_id, image=image, label=label, spacing=tuple(meta["spacing"]),
                  affine=np.asarray(meta["affine"], np.float64), slicing_axis=meta["slicing_axis"])
  return volume, meta["record"]


def _write_cache(paths: dict, key: str, volume: Volume, record: dict) -> None:
  # The JSON record is written last: an entry without it (a killed run) is never trusted.
  _atomic_write(paths["image.npy"], lambda f: np.save(f, volume.image))
  _atomic_write(paths["label.npy"], lambda f: np.save(f, volume.label))
  meta = {"key": key, "case_id": volume.case_id, "image_shape": list(volume.image.shape),
          "label_shape": list(volume.label.shape), "spacing": list(volume.spacing), "affine": volume.affine.tolist(),
          "slicing_axis": volume.slicing_axis, "record": record}
  _atomic_write(paths["json"], lambda f: f.write(json.dumps(meta).encode()))


# ---------------------------------------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------------------------------------


def _read_bytes(path: pathlib.Path, json_path: pathlib.Path) -> bytes:
  try:
    return path.read_bytes()
  except FileNotFoundError as e:
    raise InputError(path, f"missing (listed in {json_path})") from e
  except OSError as e:
    raise InputError(path, f"cannot read: {e}") from e


def _check_settings(slicing_axis, normalization, ct_window, affine_tolerance, max_cases) -> None:
  if slicing_axis not in (0, 1, 2) or isinstance(slicing_axis, bool):
    raise InputError("slicing_axis", f"must be 0, 1 or 2, got {slicing_axis!r}")
  if normalization not in NORMALIZATIONS:
    raise InputError("normalization", f"unknown normalisation {normalization!r}; choose from {NORMALIZATIONS}")
  if normalization == "ct" and not (len(ct_window) == 2 and float(ct_window[0]) < float(ct_window[1])):
    raise InputError("ct_window", f"must be (lo, hi) with lo < hi, got {ct_window!r}")
  if not affine_tolerance >= 0:
    raise InputError("affine_tolerance", f"must be >= 0, got {affine_tolerance!r}")
  if max_cases is not None and not (isinstance(max_cases, int) and max_cases > 0):
    raise InputError("max_cases", f"must be a positive integer or None, got {max_cases!r}")


def load_msd(root, *, slicing_axis: int = 2, normalization: str = "zscore", ct_window=(-1000., 1000.),
             cache_dir=None, affine_tolerance: float = 1e-3, max_cases=None) -> Dataset:
  """Loads and checks every training case of an MSD folder.

  Args:
    root: folder holding `dataset.json`, `imagesTr/` and `labelsTr/`.
    slicing_axis: NIfTI axis (0, 1 or 2) moved to the front as D.
    normalization: "zscore" or "ct" (see the module docstring).
    ct_window: `(lo, hi)` clipping window for "ct".
    cache_dir: optional folder for preprocessed cases; created if missing.
    affine_tolerance: largest allowed absolute difference between an image's and its label's affine entries.
    max_cases: load only the first `max_cases` cases in case_id order.

  Returns:
    A Dataset whose volumes are sorted by case_id: images `[D, H, W, C]` float32, labels `[D, H, W]` int32.

  Raises:
    InputError: naming the file (or setting) for any bad input; see the module docstring.
  """
  _check_settings(slicing_axis, normalization, ct_window, affine_tolerance, max_cases)
  start = time.perf_counter()
  root = pathlib.Path(root)
  json_path = root / "dataset.json"
  meta = _read_json(json_path)
  class_names = _index_map(json_path, "labels", meta["labels"])
  modality = _index_map(json_path, "modality", meta["modality"]) if "modality" in meta else None
  pairs = _training_pairs(json_path, meta["training"])[:max_cases]

  settings = {"slicing_axis": slicing_axis, "normalization": normalization}
  if normalization == "ct":
    settings["ct_window"] = [float(w) for w in ct_window]
  if cache_dir is not None:
    cache_dir = pathlib.Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)

  volumes, hits = [], 0
  num_channels = len(modality) if modality else None
  for case_id, image_path, label_path in pairs:
    image_raw = _read_bytes(image_path, json_path)
    label_raw = _read_bytes(label_path, json_path)
    cached = None
    if cache_dir is not None:
      key = _cache_key(image_raw, label_raw, settings)
      paths = _cache_paths(cache_dir, case_id, key)
      cached = _read_cache(paths, key, case_id)
    if cached is None:
      volume, record = _decode_case(case_id, image_path, label_path, image_raw, label_raw, slicing_axis=slicing_axis,
                                    normalization=normalization, ct_window=ct_window)
      if cache_dir is not None:
        _write_cache(paths, key, volume, record)
    else:
      volume, record = cached
      hits += 1
    # Checks against dataset.json and the tolerance run on cached entries too: neither is part of the cache key.
    _check_label_values(label_path, np.asarray(record["label_values"]), len(class_names))
    if record["affine_difference"] > affine_tolerance:
      raise InputError(label_path, f"affine differs from the image's ({image_path.name}) by "
                       f"{record['affine_difference']:.3g} > tolerance {affine_tolerance:g}")
    channels = volume.image.shape[-1]
    if num_channels is None:
      num_channels = channels
    if channels != num_channels:
      expected = f"'modality' in {json_path.name} lists" if modality else "earlier cases have"
      raise InputError(image_path, f"image has {channels} channel(s) but {expected} {num_channels}")
    volumes.append(volume)

  channel_names = modality or tuple(f"channel_{i}" for i in range(num_channels))
  logging.info("Loaded %d cases from %s in %.2fs (%d from cache).", len(volumes), root, time.perf_counter() - start,
               hits)
  return Dataset(name=str(meta.get("name", root.name)), root=str(root), class_names=class_names,
                 channel_names=channel_names, volumes=tuple(volumes))


# ---------------------------------------------------------------------------------------------------------------------
# Splits, padding and writing predictions.
# ---------------------------------------------------------------------------------------------------------------------


def split_cases(case_ids, *, num_train: int, num_val: int, num_test: int, seed: int) -> dict:
  """Seeded disjoint split of case ids, independent of the input order.

  The ids are sorted and permuted with `seed`; the test cases are taken first, then validation, then training, so
  the test set for a seed stays the same when only `num_train` or `num_val` changes.

  Args:
    case_ids: iterable of distinct case ids.
    num_train, num_val, num_test: exact sizes; their sum may be less than the number of cases.
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
  if sum(counts.values()) > len(ids):
    raise InputError("num_train+num_val+num_test",
                     f"{num_train}+{num_val}+{num_test} = {sum(counts.values())} exceeds the {len(ids)} cases")
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


def save_label(path, label: np.ndarray, volume: Volume) -> pathlib.Path:
  """Writes a `[D, H, W]` integer label map as NIfTI in `volume`'s original axis order and affine.

  The smallest integer type that holds the values is used, so reading the file back gives exactly `label` (in
  NIfTI order). The file is written to a temporary name and renamed into place.

  Args:
    path: output path ending in `.nii.gz` or `.nii`.
    label: `[D, H, W]` integer or bool array with `volume.label`'s shape.
    volume: the Volume the prediction belongs to.

  Returns:
    The path written.
  """
  path = pathlib.Path(path)
  label = np.asarray(label)
  if label.shape != volume.label.shape:
    raise ValueError(f"label shape {label.shape} differs from case {volume.case_id}'s {volume.label.shape}")
  if not (np.issubdtype(label.dtype, np.integer) or label.dtype == np.bool_):
    raise ValueError(f"label must be integer, got {label.dtype}")
  lo, hi = (int(label.min()), int(label.max())) if label.size else (0, 0)
  dtype = next(t for t in (np.uint8, np.int16, np.int32) if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)
  data = np.ascontiguousarray(to_nifti_order(label.astype(dtype), volume.slicing_axis))
  img = nib.Nifti1Image(data, volume.affine)
  img.header.set_sform(volume.affine, code=1)
  img.header.set_qform(volume.affine, code=1)
  img.header.set_xyzt_units("mm")
  img.header.set_slope_inter(1., 0.)
  suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = _temporary_sibling(path, suffix)
  try:
    nib.save(img, str(tmp))
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path
