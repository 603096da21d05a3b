"""Reading the voxels of a dataset's cases into volumes: decoded, checked, normalised, resampled and cached.

The data stage reads a dataset in two steps: `slicejax.data.index.index_msd` reads dataset.json and the NIfTI headers
(no voxel), then `load_volumes` reads the voxels of an index's cases and runs the checks that need them (NaN or Inf
images, non-integer labels, label values not declared in dataset.json); `load_msd` does both. A config names its
dataset folder (`dataset_root`) and its cache folder (`cache_dir`). Bad input raises `slicejax.errors.InputError`
naming the file.

Volumes follow `slicejax.data.nifti`'s axis convention: labels `[D, H, W]`, images `[D, H, W, C]`, the slicing axis
first; the file's affine is kept unchanged. Labels keep the ignore label's value (`slicejax.data.index`).

Intensities are normalised per volume and per channel (the files' scales differ by orders of magnitude), in float64:
  * "zscore": `(x - mean) / max(std, 1e-8)` with mean and std over all voxels of the channel;
  * "ct": clip to `ct_window = (lo, hi)` in Hounsfield units, then map linearly to [-1, 1]
    (`2 * (x - lo) / (hi - lo) - 1`), so one HU value means the same number in every volume;
  * "ct:LO:HI:MEAN:STD" (nnU-Net's CT scheme, with the dataset's foreground statistics from
    `slicejax.data.fingerprint`): clip to [LO, HI], then `(x - MEAN) / STD`;
  * one of these per channel, separated by commas (e.g. "ct:-17:201:99:40,zscore"); a single item applies to all;
then rounded once to float16, which `Volume.image` holds (half the host memory of float32; device arrays are built
in float32 from it). float16 keeps 11 significant bits, a relative error of at most 2**-11 (about 3 significant
digits): at most 2**-12 on "ct" values in [-1, 1] (0.25 HU of a 2000 HU window), and z-scores never come near
float16's largest value 65504 (|z| <= sqrt(N - 1) over N voxels). Labels are held as uint8 (uint16 for more than
256 classes).

Resampling. With a target spacing (`index_msd(target_spacing=...)`), each case is resampled after normalisation
(`slicejax.data.resample`: images by cubic splines, labels per-class linear, anisotropic volumes in-plane and
through-plane separately); its `shape` and `spacing` describe the new grid, and `Volume.original_label` keeps the
label on the files' grid, where predictions are scored (`resample.to_original` maps them there).

Cache. With `cache_dir`, each preprocessed case is one content-keyed entry (`slicejax.data.cache_entries`): its key
hashes the bytes read here, so every file is read once, hashed and decoded from the same bytes
(`slicejax.data.nifti.decode`). A load from the cache gives exactly the arrays of a load without it. The label
values are checked against dataset.json on cached entries too, as dataset.json is not part of the key.
`load_volumes(mapped=True)` leaves the arrays in the entries: a volume's image and labels are `mapped.MappedArray`s,
read a part at a time when used, for datasets larger than memory; the entry's key travels with the volume
(`Volume.key`).
"""

import dataclasses
import pathlib
import time

from absl import logging
import numpy as np

from slicejax.config.checks import parse_normalization
from slicejax.data import cache_entries
from slicejax.data import index as index_lib
from slicejax.data import layouts
from slicejax.data import nifti
from slicejax.data.normalize import normalize_float64
from slicejax.data import phantom
from slicejax.data import resample as resample_lib
from slicejax.errors import InputError


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
    return tuple(nifti.to_nifti_order(np.empty(grid.shape, np.bool_), self.slicing_axis).shape)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset(index_lib.ClassesAndChannels):
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


# ---------------------------------------------------------------------------------------------------------------------
# A config's folders.
# ---------------------------------------------------------------------------------------------------------------------


def cache_dir(config) -> pathlib.Path:
  """Where preprocessed volumes, the phantom and UAL encoders are cached: `config.data.cache_dir` or the user cache
  (`cache_entries.default_cache_dir`), shared by every workdir; entries are keyed by content and settings."""
  return (pathlib.Path(config.data.cache_dir).expanduser() if config.data.cache_dir
          else cache_entries.default_cache_dir())


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


# ---------------------------------------------------------------------------------------------------------------------
# Decoding and checking the voxels of one case.
# ---------------------------------------------------------------------------------------------------------------------


def _check_label_values(path, values: np.ndarray, num_classes: int, ignore_label=None) -> None:
  undeclared = [v for v in values.tolist() if not (0 <= v < num_classes or v == ignore_label)]
  if undeclared:
    ignore = "" if ignore_label is None else f" and {ignore_label} ('{layouts.IGNORE_NAME}')"
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


def _decode_case(case: index_lib.CaseInfo, image_raws, label_raw: bytes, slicing_axis: int, normalization: str,
                 ct_window, ignore_label=None) -> tuple:
  """Decodes, checks, normalises and resamples one case.

  Returns:
    (image `[D, H, W, C]` float16, label `[D, H, W]` int32, original label `[D0, H0, W0]` int32 or None), on the
    case's (resampled) grid; the original label only when resampled.
  """
  channels = []
  image_shape = case.nifti_shape
  for path, raw in zip(case.image_paths, image_raws):
    image = nifti.decode(path, raw)
    if image.shape != image_shape:
      raise InputError(path, f"changed since it was indexed: shape {image.shape}, its header said {image_shape}")
    if np.issubdtype(image.dtype, np.floating) and not np.all(np.isfinite(image)):
      raise InputError(path, "image holds NaN or Inf voxels")
    channels.append(image if image.ndim == 4 else image[..., None])
  label = nifti.decode(case.label_path, label_raw)
  if label.shape != case.nifti_shape[:3]:
    raise InputError(case.label_path, f"changed since it was indexed: shape {label.shape}, its header said "
                     f"{case.nifti_shape[:3]}")
  label = np.ascontiguousarray(nifti.to_volume_order(_as_int_label(case.label_path, label), slicing_axis))
  image = np.concatenate(channels, axis=-1) if len(channels) > 1 else channels[0]
  image = normalize_float64(nifti.to_volume_order(image, slicing_axis), normalization, ct_window)
  if not case.resampled:
    return np.ascontiguousarray(image.astype(np.float16)), label, None
  image = resample_lib.resample_image(image, case.shape, case.original_spacing).astype(np.float16)
  resampled = resample_lib.resample_label(label, case.shape, case.original_spacing, ignore=ignore_label)
  return image, resampled, label


# ---------------------------------------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------------------------------------


def _as_type(array, dtype):
  """`array` as `dtype`; a mapped array of that type stays mapped."""
  return array if array.dtype == dtype else np.asarray(array).astype(dtype)


def _check_normalization(normalization, ct_window) -> None:
  items = parse_normalization(normalization)
  if ("ct",) in items and not (len(ct_window) == 2 and float(ct_window[0]) < float(ct_window[1])):
    raise InputError("ct_window", f"must be (lo, hi) with lo < hi, got {ct_window!r}")


def load_volumes(index: index_lib.DatasetIndex, *, normalization: str = "zscore", ct_window=(-1000., 1000.),
                 cache_dir=None, mapped: bool = False) -> Dataset:
  """Reads, checks, normalises and (with `index.target_spacing`) resamples the voxels of every case of `index`.

  Args:
    index: from `index.index_msd`, possibly narrowed with `DatasetIndex.select`.
    normalization: "zscore", "ct", or one item per channel (see `parse_normalization` and the module docstring).
    ct_window: `(lo, hi)` clipping window for "ct".
    cache_dir: optional cache folder, e.g. `cache_entries.default_cache_dir()`; entries go in its `volumes/` folder,
      created if missing.
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
  label_dtype = cache_entries.smallest_int(0, highest)

  # A refused dataset leaves the cache as it found it: entries written by this call are removed again when a later
  # case is refused.
  with cache_entries.taken_back_if_refused(folder) as written:
    volumes, hits = _load_cases(index, folder, settings, json_path, normalization, ct_window, label_dtype, mapped,
                                written)
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
    image_raws = [nifti.read_bytes(path, json_path) for path in case.image_paths]
    label_raw = nifti.read_bytes(case.label_path, json_path)
    cached = None
    if folder is not None:
      key = cache_entries.cache_key(image_raws, label_raw, settings)
      path = cache_entries.entry_path(folder, case.case_id, key)
      cached = cache_entries.read_entry(path, key, case, mapped)
    if cached is None:
      image, label, original = _decode_case(case, image_raws, label_raw, index.slicing_axis, normalization, ct_window,
                                               index.ignore_label)
      label_values = np.unique(label if original is None else original)
      # Checked before the entry is written: a label the dataset does not declare never reaches the cache.
      _check_label_values(case.label_path, label_values, index.num_classes, index.ignore_label)
      if folder is not None:
        if not path.exists():
          written.append(path)
        cache_entries.write_entry(path, key, image, label, original, label_values, str(index.root))
      if mapped:  # the entry just written, read on access like every other
        image, label, original, _ = cache_entries.read_entry(path, key, case, mapped)
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
  """Indexes and loads every training case of an MSD or nnU-Net v2 folder: `load_volumes(index_msd(root, ...))`.

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
  index = index_lib.index_msd(root, slicing_axis=slicing_axis, affine_tolerance=affine_tolerance,
                              max_cases=max_cases, target_spacing=target_spacing)
  return load_volumes(index, normalization=normalization, ct_window=ct_window, cache_dir=cache_dir)


