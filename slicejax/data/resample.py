"""Resampling volumes to a target spacing and predictions back to the file's own grid.

Grid convention. A grid of `n` voxels of spacing `s` covers `n * s` mm; resampling to spacing `t` gives
`n' = max(1, round(n * s / t))` voxels whose outer edges coincide with the original's (as skimage's `resize` and
nnU-Net do), so the effective spacing is `n * s / n'` (`t` up to rounding). Output voxel `j` samples input coordinate
`(j + 0.5) * n / n' - 0.5`. Going back to the original `n` voxels is the same map with the roles swapped.

Anisotropic volumes (the largest spacing more than `ANISOTROPY` times the smallest, e.g. prostate's 0.6 x 0.6 x
3.6 mm) are resampled in two passes, as nnU-Net does: first within the planes of the two fine axes, then along the
coarse axis with nearest-neighbour interpolation, so that distant slices are never blended. Otherwise the three axes
are resampled together.

Images use cubic splines in-plane (order 3; linear or nearest along a coarse axis: `order_coarse`). Labels use either
nearest neighbour or per-class linear interpolation: each value's indicator is interpolated linearly and every output
voxel takes the value of the largest (ties to the smaller value), which keeps thin structures better than nearest.
"""

import numpy as np
from scipy import ndimage

ANISOTROPY = 3.0
LABEL_METHODS = ("linear", "nearest")


def target_grid(shape, spacing, target_spacing) -> tuple:
  """The grid of `shape` voxels of `spacing` mm resampled to `target_spacing`.

  Args:
    shape: `(n0, n1, n2)` voxels.
    spacing: `(s0, s1, s2)` mm.
    target_spacing: `()` (keep the grid) or `(t0, t1, t2)` mm; an entry 0 keeps that axis.

  Returns:
    (new shape, effective spacing `n * s / n'` per axis), tuples of ints and floats.
  """
  if not target_spacing:
    return tuple(int(n) for n in shape), tuple(float(s) for s in spacing)
  new_shape = tuple(int(n) if not t else max(1, int(round(n * s / t)))
                    for n, s, t in zip(shape, spacing, target_spacing))
  return new_shape, tuple(float(n * s / m) for n, s, m in zip(shape, spacing, new_shape))


def coarse_axis(spacing):
  """The axis whose spacing exceeds `ANISOTROPY` times the smallest, or None for a (nearly) isotropic grid."""
  spacing = np.asarray(spacing, np.float64)
  return int(np.argmax(spacing)) if spacing.max() > ANISOTROPY * spacing.min() else None


def _resize(array: np.ndarray, shape, axes, order: int) -> np.ndarray:
  """Edge-aligned spline resize of `array` (float) along `axes` to `shape[axis]`; other axes are kept."""
  scale = np.ones(array.ndim)
  out_shape = list(array.shape)
  for axis in axes:
    scale[axis] = array.shape[axis] / shape[axis]
    out_shape[axis] = shape[axis]
  if tuple(out_shape) == array.shape:
    return array
  return ndimage.affine_transform(array, scale, offset=0.5 * scale - 0.5, output_shape=tuple(out_shape), order=order,
                                  mode="nearest")


def _passes(spacing, ndim: int = 3) -> tuple:
  """Returns ((fine axes), coarse axis or None) for a 3D grid of `spacing`."""
  coarse = coarse_axis(spacing)
  return tuple(a for a in range(ndim) if a != coarse), coarse


def resample_image(image: np.ndarray, shape, spacing, *, order: int = 3, order_coarse: int = 0) -> np.ndarray:
  """Resamples every channel of an image to a new grid.

  Args:
    image: `[D, H, W, C]` real values.
    shape: the new `(D', H', W')`.
    spacing: the image's `(sD, sH, sW)` mm (decides whether an axis is coarse).
    order: spline order within the fine axes (all axes when isotropic).
    order_coarse: spline order along a coarse axis.

  Returns:
    `[D', H', W', C]` float32.
  """
  shape = tuple(int(n) for n in shape)
  fine, coarse = _passes(spacing)
  out = np.empty(shape + image.shape[3:], np.float32)
  for c in range(image.shape[3]):
    x = image[..., c].astype(np.float32)
    if coarse is None:
      x = _resize(x, shape, (0, 1, 2), order)
    else:
      x = _resize(_resize(x, shape, fine, order), shape, (coarse,), order_coarse)
    out[..., c] = x
  return out


def source_planes(num_file: int, num_grid: int, *, coarse: bool) -> list:
  """For each of `num_grid` resampled planes along one axis, the file planes its values come from: `_resize`'s own
  mapping (voxel centres aligned at the extent's edges), nearest along a coarse axis, linear otherwise.

  Returns:
    `[num_grid]` sorted tuples of file plane indices (one or two each).
  """
  ramp = np.arange(num_file, dtype=np.float64)[:, None, None]
  source = _resize(ramp, (num_grid, 1, 1), (0,), 0 if coarse else 1)[:, 0, 0]
  return [tuple(sorted({int(np.floor(x + 1e-9)), int(np.ceil(x - 1e-9))})) for x in source]


def resample_label(label: np.ndarray, shape, spacing, *, method: str = "linear", ignore=None) -> np.ndarray:
  """Resamples an integer label map to a new grid (see the module docstring).

  Args:
    label: `[D, H, W]` integers.
    shape: the new `(D', H', W')`.
    spacing: the label's `(sD, sH, sW)` mm (decides whether an axis is coarse).
    method: "linear" (per-class linear) or "nearest".
    ignore: the ignore label (voxels nobody annotated), or None. It is not a class: a resampled voxel is annotated
      only where every file voxel it is made from is annotated, and holds `ignore` elsewhere.

  Returns:
    `[D', H', W']` with `label`'s dtype.
  """
  if method not in LABEL_METHODS:
    raise ValueError(f"method must be one of {LABEL_METHODS}, got {method!r}")
  shape = tuple(int(n) for n in shape)
  if label.shape == shape:
    return label.copy()
  if ignore is not None and np.any(label == ignore):
    fine, coarse = _passes(spacing)
    annotated = (label != ignore).astype(np.float32)
    if method == "nearest":
      annotated = _resize(annotated, shape, (0, 1, 2), 0)
    elif coarse is None:
      annotated = _resize(annotated, shape, (0, 1, 2), 1)
    else:
      annotated = _resize(_resize(annotated, shape, fine, 1), shape, (coarse,), 0)
    classes = resample_label(np.where(label == ignore, 0, label).astype(label.dtype), shape, spacing, method=method)
    return np.where(annotated >= 1 - 1e-6, classes, ignore).astype(label.dtype)
  fine, coarse = _passes(spacing)
  if method == "nearest":
    return _resize(label, shape, (0, 1, 2), 0).astype(label.dtype)
  best = np.full(shape, -1., np.float32)
  out = np.zeros(shape, label.dtype)
  for value in np.unique(label):
    x = (label == value).astype(np.float32)
    if coarse is None:
      x = _resize(x, shape, (0, 1, 2), 1)
    else:
      x = _resize(_resize(x, shape, fine, 1), shape, (coarse,), 0)
    # Values are visited in increasing order, so a tie keeps the smaller value.
    better = x > best
    out[better] = value
    best[better] = x[better]
  return out


def to_original(label: np.ndarray, volume, *, method: str = "linear") -> np.ndarray:
  """Maps a label map on a volume's (resampled) grid back to the grid of its files.

  Args:
    label: `[D, H, W]` integers with `volume.label`'s shape, e.g. a prediction.
    volume: a `slicejax.data.Volume`.
    method: "linear" (per-class linear) or "nearest".

  Returns:
    `[D0, H0, W0]` with `volume.original_label`'s shape (`label` itself when the volume was not resampled).
  """
  label = np.asarray(label)
  if label.shape != volume.label.shape:
    raise ValueError(f"label shape {label.shape} differs from case {volume.case_id}'s {volume.label.shape}")
  if volume.original_label is None:
    return label
  return resample_label(label, volume.original_label.shape, volume.original_spacing, method=method)


def on_original_grid(label: np.ndarray, volume) -> tuple:
  """What a prediction is scored with: (prediction, truth, spacing), all on the grid of the volume's files.

  Args:
    label: `[D, H, W]` integers on the volume's grid (`volume.label`'s shape).
    volume: a `slicejax.data.Volume`.

  Returns:
    (`to_original(label, volume)`, the file's label `[D0, H0, W0]`, its spacing `(sD, sH, sW)` mm); for a volume
    that was not resampled, `(label, volume.label, volume.spacing)`.
  """
  if volume.original_label is None:
    return np.asarray(label), volume.label, volume.spacing
  return to_original(label, volume), volume.original_label, volume.original_spacing
