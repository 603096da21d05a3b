"""Dense evaluation metrics, with the one absent-class rule of slicejax.

Dice per foreground class follows nnU-Net's evaluation:
- absent from both truth and prediction: undefined (NaN), left out of every mean (nothing to find, nothing found);
- absent from the truth but predicted: Dice 0.0 (every predicted voxel is a false positive);
- present in the truth and absent from the prediction: Dice 0.0 by the formula.
A volume's Dice is the mean over its defined classes (NaN when no foreground class occurs in truth or prediction);
a model's `dice_mean` is the mean over test volumes of the defined volume means, its `dice_per_class` the mean of each
class over the volumes where it is defined. Interpolation quality (`slicejax.study.interpolation`) pools counts over
slices with the same rule.

Surface metrics per foreground class (`surface_metrics`) come from DeepMind's `surface-distance` library: the 95th
percentile Hausdorff distance (HD95, mm, lower is better) and the normalised surface Dice at a tolerance in mm (NSD,
higher is better). They follow the same rule where a class is absent from both (NaN, excluded). Where a class is in
exactly one of truth and prediction, no distance exists: HD95 is then the diagonal of the volume in mm (the largest
distance the grid allows) and NSD is 0.
"""

import warnings

import numpy as np


def confusion_counts(prediction, truth, num_classes):
  """Per-class (intersection, predicted, true) voxel counts.

  Args:
    prediction: `[...]` integer labels.
    truth: `[...]` integer labels, same shape; voxels labelled K or more (an ignore label, `data.ignore_label`) are
      not annotated and not counted.
    num_classes: K, background included.

  Returns:
    `[K, 3]` int64 array of (|P & T|, |P|, |T|) per class.
  """
  prediction = np.asarray(prediction).ravel().astype(np.int64)
  truth = np.asarray(truth).ravel().astype(np.int64)
  if prediction.shape != truth.shape:
    raise ValueError(f"prediction and truth differ in size: {prediction.shape} vs {truth.shape}")
  known = truth < num_classes
  if not known.all():
    prediction, truth = prediction[known], truth[known]
  joint = np.bincount(prediction * num_classes + truth, minlength=num_classes * num_classes)
  joint = joint.reshape(num_classes, num_classes)
  return np.stack([np.diag(joint), joint.sum(axis=1), joint.sum(axis=0)], axis=1)


def dice_from_counts(counts):
  """Dice per foreground class from `[..., K, 3]` counts; `[..., K - 1]`, NaN where a class is absent from both."""
  counts = np.asarray(counts)
  intersection, predicted, true = counts[..., 1:, 0], counts[..., 1:, 1], counts[..., 1:, 2]
  denominator = predicted + true
  return np.where(denominator == 0, np.nan, 2.0 * intersection / np.maximum(denominator, 1))


def dice_per_class(prediction, truth, num_classes):
  """Dice per foreground class of one volume, `[K - 1]` float64 (NaN: absent from both)."""
  return dice_from_counts(confusion_counts(prediction, truth, num_classes))


def nan_mean(values, axis=None):
  """Mean over the defined (non-NaN) entries along `axis`; NaN where none is defined, without a warning."""
  values = np.asarray(values, np.float64)
  defined = ~np.isnan(values)
  total = np.where(defined, values, 0.0).sum(axis=axis)
  count = defined.sum(axis=axis)
  return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def summarise(dice):
  """Means of per-volume Dice `[..., V, K - 1]`.

  Returns:
    dict of `volume_mean [..., V]` (mean over defined classes), `dice_mean [...]` (mean over volumes of the defined
    volume means) and `dice_per_class [..., K - 1]` (mean over the volumes where the class is defined).
  """
  volume_mean = nan_mean(dice, axis=-1)
  return {"volume_mean": volume_mean, "dice_mean": nan_mean(volume_mean, axis=-1),
          "dice_per_class": nan_mean(dice, axis=-2)}


def surface_metrics(prediction, truth, num_classes: int, spacing, tolerance_mm: float) -> dict:
  """HD95 and normalised surface Dice per foreground class of one volume.

  Args:
    prediction: `[D, H, W]` (or `[H, W]`) integer labels.
    truth: integer labels of the same shape.
    num_classes: K, background included.
    spacing: voxel size in mm along each axis of the arrays.
    tolerance_mm: the NSD tolerance.

  Returns:
    dict of `hd95` and `nsd`, each `[K - 1]` float64 (see the module docstring for absent classes).
  """
  # Imported where it is used: the training step and its benchmarks import this module (through
  # slicejax.evaluation.evaluate)
  # but never compute surface metrics, so they run where the library is not installed.
  import surface_distance  # pylint: disable=g-import-not-at-top

  prediction, truth = np.asarray(prediction), np.asarray(truth)
  if prediction.shape != truth.shape or prediction.ndim != len(spacing):
    raise ValueError(f"prediction {prediction.shape}, truth {truth.shape} and spacing {tuple(spacing)} do not match")
  spacing = tuple(float(s) for s in spacing)
  diagonal = float(np.sqrt(np.sum((np.asarray(truth.shape) * np.asarray(spacing)) ** 2)))
  hd95, nsd = np.full(num_classes - 1, np.nan), np.full(num_classes - 1, np.nan)
  for k in range(1, num_classes):
    p, t = prediction == k, truth == k
    if not p.any() and not t.any():
      continue
    if not p.any() or not t.any():
      hd95[k - 1], nsd[k - 1] = diagonal, 0.0
      continue
    with warnings.catch_warnings():  # the library imports scipy.ndimage functions from deprecated namespaces
      warnings.simplefilter("ignore", DeprecationWarning)
      distances = surface_distance.compute_surface_distances(t, p, spacing)
    hd95[k - 1] = surface_distance.compute_robust_hausdorff(distances, 95)
    nsd[k - 1] = surface_distance.compute_surface_dice_at_tolerance(distances, tolerance_mm)
  return {"hd95": hd95, "nsd": nsd}
