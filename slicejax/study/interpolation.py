"""Mask interpolation between the annotated slices of a volume, and how well it matches the truth.

Conventions:
  * A label volume is `[D, H, W]` integers with the slicing axis first: D slices of H x W pixels. Class 0 is
    background, classes 1..K-1 are foreground; K = `num_classes`.
  * A plan annotates the slices `annotated`, an `[n]` array of sorted distinct indices into D. Only those rows of a
    label volume are read by `interpolate`; every other slice is unknown to an annotator.
  * A slice is *known* when it is annotated or lies strictly between the first and the last annotated slice. Known
    slices that are not annotated are the *interpolated* slices. Nothing is extrapolated: outside the annotated range
    a slice is unknown and its label is 0.

Method (signed distance interpolation):
  1. For each annotated slice, a signed distance map in the slice plane for every foreground class and for the
     foreground as a whole (all foreground classes together): Euclidean, in units of the in-plane `spacing` (pixels
     by default), negative inside, positive outside. Distances are measured between pixel centres with
     `scipy.ndimage.distance_transform_edt`, then moved half a pixel (half the smaller spacing) towards zero, so that
     the zero level lies on the pixel edges of the contour and a disk of radius r has the map |x| - r up to
     discretisation. The slice is padded with one background pixel first, so a mask that touches the image border
     or fills the slice still has a finite depth. Each map is computed once per annotated slice.
  2. Between consecutive annotated slices a and b, each in-between slice z gets the linear interpolation
     `(1 - t) * map_a + t * map_b` with `t = (z - a) / (b - a)`, computed for all in-between slices at once by
     broadcasting.
  3. A voxel is foreground where the interpolated foreground map is strictly negative (0 is background), and then takes
     the foreground class with the smallest interpolated distance (the lowest class index on a tie). Where some class is
     inside (negative), that is the class most inside. The foreground map is interpolated on its own because the map of
     one class treats a touching neighbour class as outside: with a class-by-class rule alone, two classes that share a
     boundary would each shrink away from it and open a background gap inside the structure. The foreground map gives
     the voxels of such a gap to the nearest class (and, without alignment, contains every voxel where some class is
     inside), so adjacent classes keep their shared boundary, without overlap since each voxel gets one label. On an
     annotated slice a pixel's own class is the only negative class distance and the foreground map is negative exactly
     on foreground, so annotated slices are reproduced exactly; they are copied, not recomputed.

Optional alignment (`align_centroids=True`, a shape-based morphing): a structure that runs obliquely to the slicing
axis moves in-plane from slice to slice, often by more than its own width between annotated slices, and plain
interpolation then shrinks it in between or loses it. With alignment, each mask (each class, and the foreground) is
moved with its centroid: on in-between slice t the map of slice a is shifted by t * (c_b - c_a) and that of slice b
by (t - 1) * (c_b - c_a), rounded to whole pixels, before they are interpolated, so a translated shape is reproduced
exactly at every slice. Masks absent at either end are not moved. Plain interpolation is the default, as it is the
method the study describes.

Edge cases:
  * A mask (a class, or the foreground) present on a and absent on b has no boundary on b. Its map on b is taken to
    be the constant M, the depth of its deepest pixel on a (M = -min map_a). The mask then erodes uniformly: on
    in-between slice t it is the set where map_a < -M t / (1 - t), non-empty for every t < 1/2 and empty from the
    midpoint (t >= 1/2) on, never growing beyond its mask on a. Mirrored for a mask absent on a and present on b.
    A single class absent on b therefore vanishes at the midpoint; among other classes, its area goes to its
    neighbours or to background as the foreground map shrinks.
  * A class absent on both a and b is absent everywhere between them.
  * Without alignment, a mask present on both a and b interpolates, on every in-between slice, to a subset of the union
    of its masks on a and b (a pixel outside both has a positive distance on both), never empty where the two masks
    overlap. Where they do not overlap (a blob that moves sideways by more than its size; two blobs that swap places) it
    can vanish part-way, and with the tie rule one of two swapping classes can lose every voxel on the middle slice. So,
    if on some in-between slice the foreground, or a class present on both a and b, ends up with no voxel, the whole
    interval falls back to the labels of the nearest annotated slice (slice a for t <= 1/2, slice b beyond): no empty
    slice between two non-empty ones, and nothing outside what an annotator drew. The same check applies with alignment,
    where it is rarely needed.
  * A single annotated slice (rho = 1), or annotated slices that are all adjacent, leave nothing to interpolate:
    only the annotated slices are known.

Interpolation quality is measured as Dice of the interpolated slices against the true labels, per foreground class,
with the rule used for evaluation (`slicejax.evaluation.metrics`: a class absent from both truth and prediction is
undefined and
left out, a class absent from the prediction only or from the truth only scores 0.0). Confusion counts are summed
over volumes before dividing.
"""

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from slicejax.errors import InputError
from slicejax.evaluation import metrics


def _check_inputs(label, annotated, num_classes, where: str):
  """Validates a label volume and an annotation plan; returns them as `[D, H, W]` and `[n]` int64 arrays."""
  label = np.asarray(label)
  if label.ndim != 3:
    raise InputError(where, f"label must be [D, H, W], got shape {label.shape}")
  if not np.issubdtype(label.dtype, np.integer):
    raise InputError(where, f"label must hold integers, got dtype {label.dtype}")
  if int(num_classes) != num_classes or num_classes < 2:
    raise InputError(where, f"num_classes must be an integer >= 2, got {num_classes}")
  annotated = np.asarray(annotated)
  if annotated.ndim != 1 or not (annotated.size == 0 or np.issubdtype(annotated.dtype, np.integer)):
    raise InputError(where, f"annotated must be a 1-D array of slice indices, got {annotated!r}")
  annotated = annotated.astype(np.int64)
  if annotated.size and (annotated[0] < 0 or annotated[-1] >= label.shape[0]):
    raise InputError(where, f"annotated slices {annotated.tolist()} out of range for depth {label.shape[0]}")
  if np.any(np.diff(annotated) <= 0):
    raise InputError(where, f"annotated slices must be sorted and distinct, got {annotated.tolist()}")
  return label, annotated


def _signed_distance(mask: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
  """Signed distance of a non-empty `[H, W]` mask: negative inside, positive outside, zero level on pixel edges."""
  padded = np.pad(mask, 1, constant_values=False)
  inside = ndimage.distance_transform_edt(padded, sampling=spacing)[1:-1, 1:-1]
  outside = ndimage.distance_transform_edt(~padded, sampling=spacing)[1:-1, 1:-1]
  half = 0.5 * min(spacing)
  return np.where(mask, half - inside, outside - half)


def _align(lo, hi, masks, is_present, interval, t):
  """Moves the end maps of each in-between slice so that a mask's centroid travels linearly from slice a to b.

  Args:
    lo, hi: `[m, K, H, W]` maps at the two ends of the interval of each in-between slice.
    masks: `[n, K, H, W]` bool masks of the annotated slices.
    is_present: `[n, K]` whether each mask is non-empty.
    interval: `[m]` interval index of each in-between slice.
    t: `[m]` position of each in-between slice in its interval.

  Returns:
    `lo` and `hi` shifted by whole pixels (edge values repeated at the border); masks absent at either end stay put.
  """
  num_between, channels, height, width = lo.shape
  grid = np.indices((height, width))
  counts = np.maximum(masks.sum(axis=(2, 3)), 1)
  centroids = np.stack([(masks * g).sum(axis=(2, 3)) / counts for g in grid], axis=-1)
  both = (is_present[:-1] & is_present[1:])[interval]
  travel = np.where(both[..., None], (centroids[1:] - centroids[:-1])[interval], 0.0)
  index = (np.arange(num_between)[:, None, None, None], np.arange(channels)[None, :, None, None])

  def shifted(maps, shift):
    rows = np.clip(grid[0] - np.rint(shift[..., 0])[..., None, None], 0, height - 1).astype(np.int64)
    cols = np.clip(grid[1] - np.rint(shift[..., 1])[..., None, None], 0, width - 1).astype(np.int64)
    return maps[index + (rows, cols)]

  step = t[:, None, None]
  return shifted(lo, step * travel), shifted(hi, (step - 1.0) * travel)


def known_slices(depth: int, annotated) -> np.ndarray:
  """Which slices an annotation plan makes known.

  Args:
    depth: D, the number of slices of the volume.
    annotated: `[n]` sorted distinct slice indices.

  Returns:
    `[D]` bool: True on the annotated slices and every slice strictly between the first and the last of them.
  """
  known = np.zeros(depth, bool)
  if len(annotated):
    known[annotated[0]:annotated[-1] + 1] = True
  return known


def interpolate(label, annotated, num_classes: int, spacing: tuple[float, float] = (1.0, 1.0),
                align_centroids: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Fills the slices between annotated slices by signed distance interpolation (see the module docstring).

  Args:
    label: `[D, H, W]` integer labels in [0, num_classes). Only the rows in `annotated` are read.
    annotated: `[n]` sorted distinct slice indices; n may be 0 (nothing known) or 1 (only that slice known).
    num_classes: K, background included.
    spacing: in-plane pixel spacing (along H, along W) in which distances are measured.
    align_centroids: if True, each mask moves with its centroid between annotated slices (see the module
      docstring); if False, plain signed distance interpolation.

  Returns:
    (filled, known): `filled` `[D, H, W]` int32 equals `label` on the annotated slices, holds interpolated labels on
    the slices between them and 0 elsewhere; `known` `[D]` bool is `known_slices(D, annotated)`.

  Raises:
    InputError: if the shapes, the plan or the labels of the annotated slices are invalid.
  """
  label, annotated = _check_inputs(label, annotated, num_classes, "interpolate")
  depth = label.shape[0]
  rows = label[annotated]
  if rows.size and (rows.min() < 0 or rows.max() >= num_classes):
    raise InputError("interpolate",
                     f"annotated labels must lie in [0, {num_classes}), got [{rows.min()}, {rows.max()}]")
  if len(spacing) != 2 or min(spacing) <= 0:
    raise InputError("interpolate", f"spacing must be two positive numbers, got {spacing}")
  spacing = (float(spacing[0]), float(spacing[1]))

  filled = np.zeros(label.shape, np.int32)
  filled[annotated] = rows
  known = known_slices(depth, annotated)
  gaps = np.diff(annotated)
  if not np.any(gaps > 1):
    return filled, known

  # Signed distance maps [n, K, H, W] of the annotated slices: channel 0 is the foreground as a whole, channel k the
  # class k. +inf stands for an absent mask; `depth_of` is how deep the deepest pixel of a present mask lies (M in
  # the module docstring).
  classes = np.arange(1, num_classes)
  masks = np.concatenate([(rows > 0)[:, None], rows[:, None] == classes[None, :, None, None]], axis=1)
  is_present = masks.any(axis=(2, 3))
  sdf = np.full(masks.shape, np.inf)
  for i, c in zip(*np.nonzero(is_present)):
    sdf[i, c] = _signed_distance(masks[i, c], spacing)
  depth_of = np.where(is_present, -sdf.min(axis=(2, 3)), np.inf)

  # Maps at both ends of each interval [n-1, K, H, W]; an absent end becomes the constant depth of the other end,
  # which is +inf when the mask is absent at both ends.
  lo = np.where(is_present[:-1, :, None, None], sdf[:-1], depth_of[1:, :, None, None])
  hi = np.where(is_present[1:, :, None, None], sdf[1:], depth_of[:-1, :, None, None])

  # Every in-between slice z, its interval j and its position t in (0, 1).
  interval = np.repeat(np.arange(len(gaps)), gaps - 1)
  between = np.concatenate([np.arange(a + 1, b) for a, b in zip(annotated[:-1], annotated[1:])])
  t = (between - annotated[interval]) / gaps[interval]
  lo, hi = lo[interval], hi[interval]
  if align_centroids:
    lo, hi = _align(lo, hi, masks, is_present, interval, t)
  tt = t[:, None, None, None]
  dist = (1.0 - tt) * lo + tt * hi
  labels = np.where(dist[:, 0] < 0, dist[:, 1:].argmin(axis=1) + 1, 0)

  # An interval on which the foreground or a class present at both ends loses every voxel of some slice takes the
  # labels of the nearest annotated slice instead.
  kept = np.concatenate([(labels > 0)[:, None], labels[:, None] == classes[None, :, None, None]], axis=1)
  lost = (is_present[:-1] & is_present[1:])[interval] & ~kept.any(axis=(2, 3))
  fallback = np.zeros(len(gaps), bool)
  np.logical_or.at(fallback, interval, lost.any(axis=1))
  nearest = np.where(t <= 0.5, annotated[interval], annotated[interval + 1])
  filled[between] = np.where(fallback[interval][:, None, None], label[nearest], labels)
  return filled, known


def interpolation_counts(label, filled, annotated, num_classes: int) -> tuple[np.ndarray, int]:
  """Confusion counts of the interpolated slices of one volume, ready to be pooled over volumes.

  Args:
    label: `[D, H, W]` true integer labels.
    filled: `[D, H, W]` integer labels, e.g. the first output of `interpolate`.
    annotated: `[n]` sorted distinct annotated slice indices.
    num_classes: K, background included.

  Returns:
    (`[K, 3]` int64 counts of `metrics.confusion_counts` over the interpolated slices, number of interpolated slices).
  """
  label, annotated = _check_inputs(label, annotated, num_classes, "interpolation_counts")
  filled = np.asarray(filled)
  if filled.shape != label.shape:
    raise InputError("interpolation_counts", f"filled has shape {filled.shape}, label {label.shape}")
  interpolated = known_slices(label.shape[0], annotated)
  interpolated[annotated] = False
  return metrics.confusion_counts(filled[interpolated], label[interpolated], num_classes), int(interpolated.sum())


def pooled_interpolation_dice(labels: Sequence, filleds: Sequence, annotated: Sequence, num_classes: int) -> dict:
  """Dice of the interpolated slices of many volumes, counts summed over volumes before dividing.

  Args:
    labels: per volume, `[D_i, H_i, W_i]` true integer labels.
    filleds: per volume, `[D_i, H_i, W_i]` interpolated labels.
    annotated: per volume, `[n_i]` sorted distinct annotated slice indices.
    num_classes: K, background included.

  Returns:
    {"dice_mean": mean over defined classes, "dice_per_class": [K-1] floats, "num_slices": interpolated slices
    pooled}, with the absent-class rule of `slicejax.evaluation.metrics` (NaN: a class absent from truth and prediction
    on every
    pooled slice, or no interpolated slice at all).
  """
  if not len(labels) == len(filleds) == len(annotated):
    raise InputError("pooled_interpolation_dice",
                     f"{len(labels)} labels, {len(filleds)} filled volumes and {len(annotated)} plans")
  if not len(labels):
    raise InputError("pooled_interpolation_dice", "no volumes to pool")
  counts = [interpolation_counts(y, f, a, num_classes) for y, f, a in zip(labels, filleds, annotated)]
  num_slices = sum(n for _, n in counts)
  per_class = metrics.dice_from_counts(np.sum([c for c, _ in counts], axis=0))
  return {"dice_mean": float(metrics.nan_mean(per_class)), "dice_per_class": [float(d) for d in per_class],
          "num_slices": int(num_slices)}


def interpolate_plan(volumes: Mapping, plan: Mapping, num_classes: int, *, align_centroids: bool = False) -> tuple:
  """Interpolates every volume of an annotation plan and scores the interpolated slices.

  Args:
    volumes: case id -> `data.Volume` (label `[D, H, W]`, spacing `(d, h, w)` in mm).
    plan: case id -> sorted annotated slice indices.
    num_classes: K.
    align_centroids: see `interpolate`.

  Returns:
    ({case id: (filled `[D, H, W]`, known `[D]` bool)}, the `pooled_interpolation_dice` of the plan).
  """
  cases = sorted(plan)
  out = {case: interpolate(volumes[case].label, plan[case], num_classes, spacing=volumes[case].spacing[1:],
                           align_centroids=align_centroids) for case in cases}
  quality = pooled_interpolation_dice([volumes[c].label for c in cases], [out[c][0] for c in cases],
                                      [plan[c] for c in cases], num_classes)
  return out, quality
