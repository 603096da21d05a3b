"""Dense evaluation of every model of a group on held-out volumes.

The dims modules' predictors (`two_d.predictor`, `three_d.predictor`) predict whole volumes with every model of a
group and reduce the predictions on the device to confusion counts (`confusion_counts`), so that the host receives a
few integers per model and volume, never a label map; `score` turns the counts into Dice per model, volume and
foreground class with the rule of `slicejax.evaluation.metrics`.

The test split is scored from label maps instead (the dims modules' `segmenter`s): `score_labels` gives per model,
volume and class the Dice, HD95 and normalised surface Dice (`metrics.surface_metrics`), which the study's paired
statistics resample by test volume.
"""

import functools
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slicejax.data import resample
from slicejax.evaluation import metrics

# The most bytes of float32 slices that 2D evaluation fits and holds at once (`volume_chunks`): 1,024 slices of
# 256 x 256, every slice of hundreds of small volumes.
CHUNK_BYTES = 2**28


@functools.partial(jax.jit, static_argnames="num_classes")
def confusion_counts(prediction, truth, valid, num_classes: int):
  """Per-model, per-class (|P & T|, |P|, |T|) voxel counts over the valid voxels, on the device.

  Args:
    prediction: `[M, ...]` integer labels, or `[M, ..., K]` floating-point logits, whose argmax over the last axis
      is the label.
    truth: `[...]` integer labels (uint8, as `slicejax.data` loads them).
    valid: `[...]` bool, True where a voxel counts (False on padding).
    num_classes: K, background included.

  Returns:
    `[M, K, 3]` int32: per model, `metrics.confusion_counts` of its labels and the truth over the valid voxels.
  """
  if jnp.issubdtype(prediction.dtype, jnp.floating):
    prediction = jnp.argmax(prediction, axis=-1).astype(jnp.uint8 if num_classes <= 256 else jnp.int32)
  if prediction.shape[1:] != truth.shape or valid.shape != truth.shape:
    raise ValueError(f"prediction {prediction.shape}, truth {truth.shape} and valid {valid.shape} do not match")
  classes = jnp.arange(num_classes)
  valid = valid & (truth < num_classes)  # an ignore label (K or more) marks voxels nobody annotated
  true = (truth[..., None] == classes) & valid[..., None]
  predicted = (prediction[..., None] == classes) & valid[..., None]
  voxels = tuple(range(1, prediction.ndim))
  true_counts = jnp.sum(true, axis=tuple(range(truth.ndim)), dtype=jnp.int32)
  return jnp.stack([jnp.sum(predicted & true, axis=voxels, dtype=jnp.int32),
                    jnp.sum(predicted, axis=voxels, dtype=jnp.int32),
                    jnp.broadcast_to(true_counts, (prediction.shape[0], num_classes))], axis=-1)


def volume_chunks(volumes: Sequence, shape, max_bytes: int | None = None):
  """`volumes` in consecutive runs whose slices, fitted to `shape` `(H, W)` as float32, take at most `max_bytes`
  (default `CHUNK_BYTES`) together, a larger volume being a run of its own: 2D evaluation holds one run at a time,
  whatever the dataset's size, and volumes of a few slices still share batches."""
  max_bytes = CHUNK_BYTES if max_bytes is None else max_bytes
  run, size = [], 0
  for volume in volumes:
    plane = int(np.prod(shape)) * volume.image.shape[-1] * 4
    if run and size + volume.depth * plane > max_bytes:
      yield run
      run, size = [], 0
    run.append(volume)
    size += volume.depth * plane
  if run:
    yield run


def map_slices(fn: Callable, params, slices: tuple, batch_size: int) -> np.ndarray:
  """A model-axis mapped function of slices over every row of `slices`, in chunks of one static shape.

  Args:
    fn: model-axis mapped `(params, chunk) -> [M, b, ...]`, `chunk` a tuple of `[b, ...]` arrays.
    params: parameters in the axis form `fn` expects.
    slices: tuple of `[N, ...]` numpy arrays.
    batch_size: rows per call; the last chunk is zero-padded so that every call has the same shapes.

  Returns:
    `[M, N, ...]` numpy array. Every chunk is dispatched before the first is read back, so the device does not wait
    on the host.
  """
  size = len(slices[0])
  outputs = []
  for start in range(0, size, batch_size):
    chunk = tuple(np.zeros((batch_size,) + a.shape[1:], a.dtype) for a in slices)
    for padded, array in zip(chunk, slices):
      padded[:min(batch_size, size - start)] = array[start:start + batch_size]
    outputs.append(fn(params, chunk))
  return np.concatenate([np.asarray(out) for out in outputs], axis=1)[:, :size]


def score(counts: Iterable[np.ndarray], volumes: Sequence, num_classes: int) -> dict:
  """Dice of every model on every volume.

  Args:
    counts: per volume, in the order of `volumes`, the `[M, K, 3]` confusion counts (|P & T|, |P|, |T|) of every
      model's prediction on the volume's own grid (see `metrics.confusion_counts`).
    volumes: the `data.Volume`s.
    num_classes: K, background included.

  Returns:
    dict with `dice [M, V, K-1]` (NaN: class absent from truth and prediction), `volume_mean [M, V]`,
    `dice_mean [M]`, `dice_per_class [M, K-1]` (see `metrics.summarise`) and `volumes` (V).
  """
  counts = np.asarray(list(counts), np.int64)
  if counts.ndim != 4 or counts.shape[0] != len(volumes) or counts.shape[2:] != (num_classes, 3):
    raise ValueError(f"need [M, {num_classes}, 3] counts for each of {len(volumes)} volumes, got {counts.shape}")
  dice = metrics.dice_from_counts(counts.transpose(1, 0, 2, 3))
  return {"dice": dice, **metrics.summarise(dice), "volumes": len(volumes)}


def score_labels(label_maps: Iterable[np.ndarray], volumes: Sequence, num_classes: int, *, tolerance_mm: float,
                 surface: bool = True) -> dict:
  """Dice and surface metrics of every model on every volume, from label maps on the volumes' own grids.

  Args:
    label_maps: per volume, in the order of `volumes`, the `[M, D, H, W]` labels of every model on the volume's
      grid (`volume.label`'s shape).
    volumes: the `data.Volume`s. Each is scored on the grid of its files (`resample.on_original_grid`): a resampled
      volume's predictions are mapped back to it and scored against the file's label at the file's spacing.
    num_classes: K, background included.
    tolerance_mm: the normalised surface Dice tolerance.
    surface: also compute HD95 and NSD; False leaves them NaN, as does a volume with ignore-label voxels (truth K
      or more, which no Dice count includes).

  Returns:
    dict as `score` (`dice [M, V, K-1]`, `volume_mean`, `dice_mean [M]`, `dice_per_class [M, K-1]`, `volumes`),
    plus `hd95` and `nsd` `[M, V, K-1]` with their `metrics.summarise` means under the same names with the prefix
    (`hd95_mean [M]`, `hd95_per_class [M, K-1]`, ...), `cases` (the case ids) and `class_volumes [K-1]` (the number
    of volumes whose truth holds each class).
  """
  counts, hd95, nsd, present = [], [], [], []
  for labels, volume in zip(label_maps, volumes):
    # A resampled volume is scored on the grid of its files: its prediction is mapped back there.
    on_grid = [resample.on_original_grid(m, volume) for m in labels]
    truth, spacing = np.asarray(on_grid[0][1]), on_grid[0][2]
    present.append([np.any(truth == k) for k in range(1, num_classes)])
    counts.append(np.stack([metrics.confusion_counts(m, truth, num_classes) for m, _, _ in on_grid]))
    # Surfaces need every voxel's truth: a volume with ignore-label voxels gets none.
    scored = surface and bool(np.all(truth < num_classes))
    per_model = [metrics.surface_metrics(m, truth, num_classes, spacing, tolerance_mm) if scored else
                 {"hd95": np.full(num_classes - 1, np.nan), "nsd": np.full(num_classes - 1, np.nan)}
                 for m, _, _ in on_grid]
    hd95.append([s["hd95"] for s in per_model])
    nsd.append([s["nsd"] for s in per_model])
  out = score(counts, volumes, num_classes)
  for name, values in (("hd95", hd95), ("nsd", nsd)):
    values = np.asarray(values, np.float64).reshape(len(volumes), -1, num_classes - 1).transpose(1, 0, 2)
    means = metrics.summarise(values)
    out.update({name: values, f"{name}_mean": means["dice_mean"], f"{name}_per_class": means["dice_per_class"]})
  out["cases"] = [volume.case_id for volume in volumes]
  out["class_volumes"] = np.array(present, np.int64).reshape(len(volumes), num_classes - 1).sum(axis=0)
  return out
