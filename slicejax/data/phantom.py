"""A synthetic MRI-like segmentation dataset written in the MSD layout.

`write_phantom` writes `imagesTr/phantom_XXX.nii.gz`, `labelsTr/phantom_XXX.nii.gz` and `dataset.json`, so demos and
tests go through the same reader (`slicejax.data.load.load_msd`) as real data. `cached_phantom` keeps one such folder
per set of arguments in a cache folder (e.g. `slicejax.data.cache_entries.default_cache_dir()`), shared by every run.
Either way the folder is built under a temporary name and renamed into place, so it is complete or absent.

Conventions. Arrays are built and written in NIfTI order `[X, Y, Z]` (images `[X, Y, Z, C]` when `num_channels > 1`)
with voxel spacing 1 x 1 x 2 mm, so Z (axis 2) is the slicing axis; the depth of each case is drawn from
`shape[2] - 4 .. shape[2]`. Labels: 0 background, 1 "core", 2 "rim" (a shell around the core).

Anatomy of one case, all drawn from the case's own random stream (`seed`, case index). Cases differ the way patients
do, so that what one volume teaches a model transfers only in part to the next, and annotating more volumes pays:
  * an elliptical body of varying size and position whose outline changes slowly along Z, with a smooth texture and a
    few small bright and dark spots whose intensities match the core and the rim, so that shape and context, not
    intensity alone, tell them apart;
  * a lobed, rotated ellipsoidal core, from small to large (in-plane size over a 2x range) anywhere inside the
    body, surrounded in about three cases of four by a rim of a few mm (the rim is absent from the others); bright and
    dark respectively in the T2-like channel and inverted in the ADC-like channel, with a contrast to the body that
    differs from case to case; they span only part of the depth, leaving slices without foreground;
  * partial-volume blur, a smooth multiplicative bias field, Gaussian noise and a global intensity scale that differs
    by up to ~60x between cases.
"""

import gzip
import json
import os
import pathlib
import shutil

from absl import logging
import numpy as np
from scipy import ndimage

from slicejax.config import defaults
from slicejax.data import nifti
from slicejax.errors import InputError
from slicejax import files

CLASS_NAMES = ("background", "core", "rim")
CHANNEL_NAMES = defaults.CHANNEL_NAMES
SPACING = (1., 1., 2.)
# Recorded in dataset.json; bumped whenever the generator changes what it writes for the same arguments.
_VERSION = 3
_DEPTH_SPREAD = 4
# Range of the mean intensity of each tissue before bias, scale and noise, per channel (T2-like, ADC-like); each case
# draws its own contrast from it.
_TISSUE = {
    "air": ((0.0, 0.0), (0.0, 0.0)),
    "body": ((1.0, 1.0), (1.0, 1.0)),
    "core": ((1.5, 2.0), (0.35, 0.6)),
    "rim": ((0.35, 0.6), (1.4, 1.7)),
}
_RIM_PROBABILITY = 0.75     # share of cases with a rim
_CORE_SIZE = (0.7, 1.5)     # range of the per-case core size factor, drawn log-uniformly
_TEXTURE = (0.12, -0.1)     # amplitude of the body texture, in units of the body intensity
_NOISE = 0.07               # Gaussian noise std, same units
_SCALE_RANGE = (50., 3000.)  # global per-case intensity scale, drawn log-uniformly


def _rotation(theta: float, tilt: float) -> np.ndarray:
  """In-plane rotation by theta followed by a tilt about the X axis; [3, 3]."""
  c, s = np.cos(theta), np.sin(theta)
  in_plane = np.array([[c, -s, 0.], [s, c, 0.], [0., 0., 1.]])
  ct, st = np.cos(tilt), np.sin(tilt)
  tilt_x = np.array([[1., 0., 0.], [0., ct, -st], [0., st, ct]])
  return tilt_x @ in_plane


def phantom_case(seed: int, index: int, shape=(40, 40, 24), num_channels: int = 1) -> tuple:
  """Generates one case without writing it.

  Args:
    seed: dataset seed.
    index: case index; each (seed, index) pair has its own random stream.
    shape: `(X, Y, Z)` largest shape; the depth is drawn from `Z - 4 .. Z`.
    num_channels: 1 (T2-like) or 2 (T2-like, ADC-like).

  Returns:
    (image `[X, Y, Z']` float32, or `[X, Y, Z', 2]` for two channels; label `[X, Y, Z']` uint8).
  """
  rng = np.random.default_rng([seed, index])
  sx, sy, sz_max = shape
  sz = int(rng.integers(sz_max - _DEPTH_SPREAD, sz_max + 1))
  size = min(sx, sy)
  # Physical coordinates in mm, one per voxel centre.
  x, y, z = np.meshgrid(np.arange(sx) * SPACING[0], np.arange(sy) * SPACING[1], np.arange(sz) * SPACING[2],
                        indexing="ij")
  depth_mm = sz * SPACING[2]

  # Body: an ellipse whose radii change slowly along Z.
  centre = np.array([sx, sy]) / 2 + rng.uniform(-0.06, 0.06, 2) * size
  radii = rng.uniform(0.3, 0.44, 2) * np.array([sx, sy])
  phi = rng.uniform(0, np.pi)
  wobble = 1 + 0.08 * np.sin(2 * np.pi * z / depth_mm * rng.uniform(0.5, 1.) + rng.uniform(0, 2 * np.pi))
  bu = np.cos(phi) * (x - centre[0]) + np.sin(phi) * (y - centre[1])
  bv = -np.sin(phi) * (x - centre[0]) + np.cos(phi) * (y - centre[1])
  body = (bu / (radii[0] * wobble)) ** 2 + (bv / (radii[1] * wobble)) ** 2 <= 1

  # Core and rim: a lobed ellipsoid and a shell of `thickness` mm around it, inside the body and not through its ends.
  core_size = np.exp(rng.uniform(*np.log(_CORE_SIZE)))
  axes = np.array([*rng.uniform(0.08, 0.12, 2) * size * core_size, rng.uniform(0.12, 0.22) * depth_mm])
  thickness = rng.uniform(0.07, 0.1) * size
  has_rim = rng.uniform() < _RIM_PROBABILITY
  lobe_depth = rng.uniform(0., 0.2)
  # How far the rim can reach from the centre: lobes stretch it by up to 1 + lobe_depth, the tilt by a little more.
  reach = (1 + lobe_depth) * (axes + thickness) + np.array([0., 0., 0.25 * axes[:2].max() + SPACING[2]])
  max_offset = max(radii.min() * 0.92 - reach[:2].max() - 2., 0.)
  angle, dist = rng.uniform(0, 2 * np.pi), max_offset * np.sqrt(rng.uniform())
  half_depth = reach[2]
  core_centre = np.array([centre[0] + dist * np.cos(angle), centre[1] + dist * np.sin(angle),
                          rng.uniform(half_depth, max(depth_mm - half_depth, half_depth))])
  rotation = _rotation(rng.uniform(0, np.pi), rng.uniform(-0.25, 0.25))
  u, v, w = np.einsum("ij,j...->i...", rotation.T, np.stack([x, y, z]) - core_centre[:, None, None, None])
  lobes = 1 + lobe_depth * np.cos(rng.integers(2, 4) * np.arctan2(v / axes[1], u / axes[0])
                                 + rng.uniform(0, 2 * np.pi))
  outer = axes + thickness
  core = np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2 + (w / axes[2]) ** 2) <= lobes
  rim = (np.sqrt((u / outer[0]) ** 2 + (v / outer[1]) ** 2 + (w / outer[2]) ** 2) <= lobes) & ~core & has_rim
  label = np.where(core, 1, np.where(rim, 2, 0)).astype(np.uint8)

  # Distractor spots inside the body, away from the structures: bright ones like the core, dark ones like the rim.
  spots = np.zeros((2,) + body.shape, bool)
  keep_out = ndimage.binary_dilation(label > 0, iterations=2)
  candidates = np.argwhere(body & ~keep_out)
  for kind in range(2):
    for i in rng.choice(len(candidates), size=min(int(rng.integers(2, 6)), len(candidates)), replace=False):
      r = rng.uniform(1., 2.2)
      p = candidates[i] * np.array(SPACING)
      # Stretched along Z, like small vessels crossing a few slices.
      spots[kind] |= ((x - p[0]) ** 2 + (y - p[1]) ** 2 + ((z - p[2]) * 0.5) ** 2 <= r * r) & body & ~keep_out

  texture = ndimage.gaussian_filter(rng.standard_normal(body.shape), sigma=(1.5, 1.5, 0.75))
  texture /= texture.std()
  xn, yn, zn = (x / x.max() - 0.5) * 2, (y / y.max() - 0.5) * 2, (z / max(z.max(), 1.) - 0.5) * 2
  coeffs = rng.normal(0., 0.12, 6)
  bias = np.exp(coeffs[0] * xn + coeffs[1] * yn + coeffs[2] * zn + coeffs[3] * xn * yn
                + coeffs[4] * (xn ** 2 - 0.5) + coeffs[5] * (yn ** 2 - 0.5))

  channels = []
  for c in range(num_channels):
    contrast = {k: rng.uniform(*t[c]) + rng.normal(0., 0.04) for k, t in _TISSUE.items()}
    clean = np.where(body, contrast["body"] + _TEXTURE[c] * texture, contrast["air"])
    clean = np.where(spots[0], contrast["core"], np.where(spots[1], contrast["rim"], clean))
    clean = np.where(label == 1, contrast["core"] + 0.5 * _TEXTURE[c] * texture, clean)
    clean = np.where(label == 2, contrast["rim"], clean)
    # Partial-volume blur: thinner along Z, where voxels are twice as thick.
    clean = ndimage.gaussian_filter(clean, sigma=(0.6, 0.6, 0.3))
    scale = np.exp(rng.uniform(*np.log(_SCALE_RANGE)))
    channels.append(scale * (clean * bias + _NOISE * rng.standard_normal(body.shape)))
  image = np.stack(channels, axis=-1) if num_channels > 1 else channels[0]
  return image.astype(np.float32), label


def _nifti_gz(array: np.ndarray, affine: np.ndarray) -> bytes:
  # mtime=0 keeps the files byte-identical across runs.
  return gzip.compress(nifti.image(array, affine).to_bytes(), compresslevel=6, mtime=0)


def _settings(num_cases, shape, num_channels, seed) -> dict:
  return {"generator": "slicejax.data.phantom", "version": _VERSION, "num_cases": num_cases, "shape": list(shape),
          "num_channels": num_channels, "seed": seed}


def _holds(root: pathlib.Path, settings: dict) -> bool:
  """Whether `root` already holds the complete phantom made with `settings`."""
  try:
    meta = json.loads((root / "dataset.json").read_text())
  except (OSError, ValueError):
    return False
  if not isinstance(meta, dict) or meta.get("phantom") != settings:
    return False
  return all((root / e[k]).is_file() for e in meta["training"] for k in ("image", "label"))


def _checked_settings(num_cases, shape, num_channels, seed) -> dict:
  """Checks the arguments and returns their `_settings` as plain Python numbers."""
  shape = tuple(shape)
  if not (isinstance(num_cases, (int, np.integer)) and num_cases >= 1):
    raise InputError("num_cases", f"must be a positive integer, got {num_cases!r}")
  if not (len(shape) == 3 and all(isinstance(s, (int, np.integer)) for s in shape)):
    raise InputError("shape", f"must be three integers (X, Y, Z), got {shape!r}")
  if min(shape[:2]) < 16 or shape[2] < 2 * _DEPTH_SPREAD:
    raise InputError("shape", f"must be at least (16, 16, {2 * _DEPTH_SPREAD}), got {shape}")
  if num_channels not in (1, 2):
    raise InputError("num_channels", f"must be 1 or 2, got {num_channels!r}")
  if not isinstance(seed, (int, np.integer)):
    raise InputError("seed", f"must be an integer, got {seed!r}")
  return _settings(int(num_cases), tuple(int(s) for s in shape), int(num_channels), int(seed))


def _build_beside(root: pathlib.Path, settings: dict) -> pathlib.Path:
  """Writes the whole phantom into a new hidden folder next to `root` and returns that folder.

  A fresh sibling name (not tempfile.mkdtemp, whose 0700 mode the renamed folder would keep), on the same file system
  so that renaming it to `root` is atomic. dataset.json, which `_holds` reads, is written last.
  """
  num_cases, shape, num_channels, seed = (settings[k] for k in ("num_cases", "shape", "num_channels", "seed"))
  root.parent.mkdir(parents=True, exist_ok=True)
  tmp = files.temporary_sibling(root, ".building")
  tmp.mkdir()
  try:
    (tmp / "imagesTr").mkdir()
    (tmp / "labelsTr").mkdir()
    affine = np.diag([*SPACING, 1.])
    affine[:3, 3] = -np.array(shape) * np.array(SPACING) / 2
    training = []
    for index in range(num_cases):
      image, label = phantom_case(seed, index, tuple(shape), num_channels)
      name = f"phantom_{index:03d}.nii.gz"
      files.atomic_write(tmp / "imagesTr" / name, _nifti_gz(image, affine))
      files.atomic_write(tmp / "labelsTr" / name, _nifti_gz(label, affine))
      training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": "Phantom",
        "description": "Synthetic MRI-like volumes with a core and a rim structure (slicejax.data.phantom)",
        "tensorImageSize": "4D" if num_channels > 1 else "3D",
        "modality": {str(i): n for i, n in enumerate(CHANNEL_NAMES[:num_channels])},
        "labels": {str(i): n for i, n in enumerate(CLASS_NAMES)},
        "numTraining": num_cases,
        "numTest": 0,
        "training": training,
        "test": [],
        "phantom": settings,
    }
    files.atomic_write(tmp / "dataset.json", json.dumps(meta, indent=1))
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return tmp


def _publish(tmp: pathlib.Path, root: pathlib.Path, settings: dict) -> None:
  """Renames the complete folder `tmp` to `root`, replacing whatever `root` holds unless it is this phantom."""
  try:
    try:
      # Atomic; fails when `root` exists and is not an empty folder.
      os.rename(tmp, root)
    except OSError:
      if _holds(root, settings):
        # Another process published the same phantom first; its files are the same.
        return
      trash = files.temporary_sibling(root, ".old")
      root.rename(trash)
      tmp.rename(root)
      if trash.is_dir():
        shutil.rmtree(trash)
      else:
        trash.unlink()
    files.fsync_dir(root.parent)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def write_phantom(root, *, num_cases: int = 60, shape=(40, 40, 24), num_channels: int = 1, seed: int = 0,
                  overwrite: bool = False) -> pathlib.Path:
  """Writes a deterministic synthetic dataset in the MSD layout (see the module docstring).

  The same arguments always give the same arrays and the same file bytes. The folder is written under a temporary
  name and renamed into place, so it is either complete or absent.

  Args:
    root: output folder.
    num_cases: number of cases.
    shape: largest `(X, Y, Z)` shape in voxels; depths vary in `Z - 4 .. Z`.
    num_channels: 1 writes 3D T2-like images; 2 writes 4D `[X, Y, Z, 2]` images (T2-like, ADC-like).
    seed: dataset seed.
    overwrite: replace an existing folder that holds anything else.

  Returns:
    The path of `root`. When it already holds this phantom, it is returned without being rewritten.

  Raises:
    InputError: bad arguments, or `root` holds something else and `overwrite` is False.
  """
  settings = _checked_settings(num_cases, shape, num_channels, seed)
  root = pathlib.Path(root)
  if root.exists():
    if _holds(root, settings):
      logging.info("Phantom already at %s.", root)
      return root
    if not overwrite and (not root.is_dir() or any(root.iterdir())):
      raise InputError(root, "exists and does not hold this phantom; pass overwrite=True to replace it")
  _publish(_build_beside(root, settings), root, settings)
  logging.info("Wrote a %d-case phantom to %s.", settings["num_cases"], root)
  return root


def cached_phantom(cache_dir, *, num_cases: int = 60, shape=(40, 40, 24), num_channels: int = 1,
                   seed: int = 0) -> pathlib.Path:
  """The phantom of these arguments in a shared cache folder, written there on first use (see `write_phantom`).

  Processes may ask for the same phantom at once: each that finds it missing builds it in a private folder, the first
  rename publishes it and the others discard their copy (the same bytes). A generation killed part-way leaves at most
  a hidden `.*.building` folder, which is never read.

  Args:
    cache_dir: the cache folder, e.g. `slicejax.data.cache_entries.default_cache_dir()`; the phantom goes in
      `cache_dir/phantoms/phantom_v<version>_n<num_cases>_<X>x<Y>x<Z>_c<num_channels>_seed<seed>/`.
    num_cases, shape, num_channels, seed: as in `write_phantom`.

  Returns:
    The phantom's folder, holding `dataset.json`, `imagesTr/` and `labelsTr/`.
  """
  settings = _checked_settings(num_cases, shape, num_channels, seed)
  x, y, z = settings["shape"]
  root = pathlib.Path(cache_dir) / "phantoms" / (
      f"phantom_v{_VERSION}_n{settings['num_cases']}_{x}x{y}x{z}_c{settings['num_channels']}_seed{settings['seed']}")
  if _holds(root, settings):
    logging.info("Phantom cached at %s.", root)
    return root
  _publish(_build_beside(root, settings), root, settings)
  logging.info("Wrote a %d-case phantom to %s.", settings["num_cases"], root)
  return root
