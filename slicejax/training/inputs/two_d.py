"""2D models: examples are whole slices, `[H, W, C]` at one static in-plane shape.

`slicejax.training.inputs.two_d` and `slicejax.training.inputs.three_d` expose the same functions, and the trainer picks
one by a point's `dims`
(`DIMS` in `slicejax.training.train`), so the trainer itself has no 2D/3D branches:
- `network(config)`: the U-Net's size arguments;
- `example_shape(config, volumes)`: the static spatial shape of one training example;
- `batch_size(config)`: examples per model and step;
- `data_sizes(config, points, plans)`: the sizes of a group's training data, padded to the grid's largest;
- `training_data(config, points, plans, pool, num_classes, shape, sizes)`: what the group's models train on, as
  `(shared bank, per-model inputs [M, ...], {model index: interpolation quality})`, holding only what the group's
  plans reference;
- `batch_sampler(config)`: `(key, bank, per_model) -> (images, labels, weights)`, one model's batch;
- `predictor(config, model, axis)`: `(params, volumes, shape) -> iterator of [M, K, 3]` confusion counts, one per
  volume: every model's (|P & T|, |P|, |T|) per class (`metrics.confusion_counts`) of its prediction on the volume's
  own grid, counted on the device (`evaluate.confusion_counts`), so that no label map leaves it; `evaluate.score`
  turns them into Dice.

Sampling policy: a model's batch is drawn uniformly, with replacement, from its labelled slices: the annotated ones
and, with interpolation on, the interpolated ones, which train as if annotated but with loss weight
`interpolation.weight`; with weight 0 they are never drawn. So with interpolation a volume's share of the batch grows
with the span between its first and last annotated slice (`sampler.model_entries`).
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slicejax.data import padding
from slicejax.evaluation import evaluate
from slicejax.study import interpolation
from slicejax.training.inputs import sampler
from slicejax.training import precision


def network(config) -> dict:
  """U-Net size arguments of 2D models (`config.model`)."""
  return dict(features=config.model.features, num_stages=config.model.num_stages)


def example_shape(config, volumes: Sequence) -> tuple:
  """In-plane (H, W): `config.data.shape`, or the largest in-plane size of `volumes` rounded up so that every
  downsampling divides it."""
  if config.data.shape:
    return tuple(config.data.shape)
  multiple = 2 ** (config.model.num_stages - 1)
  sizes = np.max([v.label.shape[1:] for v in volumes], axis=0)
  return tuple(int(-(-s // multiple) * multiple) for s in sizes)


def batch_size(config) -> int:
  return config.train.batch_size


def _bank_slices(config, point, plan) -> dict:
  """Case id -> the slices a model needs in the bank: annotated ones, and with interpolation (weight > 0) every slice
  of the known range between the first and the last annotated one."""
  if point.interpolation and config.interpolation.weight > 0:
    return {case: list(range(slices[0], slices[-1] + 1)) for case, slices in plan.items()}
  return {case: list(slices) for case, slices in plan.items()}


def data_sizes(config, points, plans) -> dict:
  """The bank and entry sizes of a group: `images` (slices), `labels` (label rows), `entries` (the longest list).

  `train.py` pads every group of a grid to the grid's largest sizes, so that one compiled step serves them all.
  """
  keep, labels, entries = {}, 0, 0
  for point, plan in zip(points, plans):
    needed = _bank_slices(config, point, plan)
    for case, slices in needed.items():
      keep.setdefault(case, set()).update(slices)
    between = sum(len(needed[c]) - len(plan[c]) for c in plan)
    labels += between
    entries = max(entries, sum(map(len, plan.values())) + between)
  images = sum(map(len, keep.values()))
  return {"images": images, "labels": images + labels, "entries": entries}


def training_data(config, points, plans, pool, num_classes: int, shape, sizes=None) -> tuple:
  """The slice bank of the slices the group's plans reference, and each model's entries over it.

  Interpolated slices of a model with interpolation on are appended to the bank's labels and enter its entries with
  weight `config.interpolation.weight` (none when that weight is 0).

  Args:
    config: the experiment config.
    points: the group's `study.Point`s, `[M]`.
    plans: their annotation plans (case id -> annotated slice indices), `[M]`.
    pool: the training pool's `data.Volume`s.
    num_classes: K.
    shape: the in-plane shape `(H, W)`.
    sizes: pad the bank and entries to these `data_sizes` (the grid's largest); None: this group's own.

  Returns:
    (bank, entries, quality): bank of `images [N, H, W, C]`, `labels [L, H, W]` uint8 and `extents [N, 2]`; the
    stacked entries of `sampler.model_entries`; per model index with interpolation, the
    `interpolation.pooled_interpolation_dice` of its plan.
  """
  sizes = sizes or data_sizes(config, points, plans)
  keep = {}
  for point, plan in zip(points, plans):
    for case, slices in _bank_slices(config, point, plan).items():
      keep.setdefault(case, set()).update(slices)
  keep = {case: sorted(slices) for case, slices in keep.items()}
  bank = sampler.slice_bank([v for v in pool if v.case_id in keep], shape, keep,
                            image_dtype=precision.bank_dtype(config))
  rows = bank.pop("rows")
  extra, label_rows, quality = interpolated_entries(config, points, plans, pool, num_classes, rows, shape,
                                                    first_row=len(bank["labels"]))
  bank["labels"] = np.concatenate([bank["labels"]] + label_rows)
  bank = {**sampler.pad_rows({k: bank[k] for k in ("images", "extents")}, sizes["images"]),
          **sampler.pad_rows({"labels": bank["labels"]}, sizes["labels"])}
  return bank, sampler.model_entries(plans, rows, extra, width=sizes["entries"]), quality


def interpolated_entries(config, points, plans, pool, num_classes: int, rows, shape, first_row: int) -> tuple:
  """The interpolated slices of the models with interpolation on, as label rows and entries.

  Args:
    rows: case id -> slice index -> image row (of the bank or the store).
    shape: the in-plane shape `(H, W)`.
    first_row: the label row of the first interpolated slice (the ones before are the true labels).

  Returns:
    (extra, label_rows, quality): per model its extra entries `(image row, label row, interpolation.weight)` (none
    when that weight is 0), the new label rows `[n, H, W]` uint8 in order, and per model index with interpolation
    the `interpolation.pooled_interpolation_dice` of its plan.
  """
  by_id = {v.case_id: v for v in pool}
  weight = float(config.interpolation.weight)
  extra, label_rows, quality = [], [], {}
  next_row = first_row
  for m, (point, plan) in enumerate(zip(points, plans)):
    entries = []
    if point.interpolation:
      filled, quality[m] = interpolation.interpolate_plan(by_id, plan, num_classes,
                                                          align_centroids=config.interpolation.align_centroids)
      for case in sorted(plan) if weight > 0 else ():
        labels, known = filled[case]
        between = np.setdiff1d(np.flatnonzero(known), plan[case])
        label_rows.append(padding.fit_to_shape(labels[between], shape)[0].astype(np.uint8))
        entries += [(rows[case][d], next_row + i, weight) for i, d in enumerate(between)]
        next_row += len(between)
    extra.append(entries)
  return extra, label_rows, quality


def batch_sampler(config):
  """A batch of labelled slices of one model: `(key, bank, entries) -> (images, labels, weights)`."""
  size = batch_size(config)
  return lambda key, bank, entries: sampler.sample(key, bank, entries, size)


@functools.cache
def _slice_counts(model):
  """One model's confusion counts of each slice: `(params, (images [b, H, W, C], truth [b, H, W], valid [b, H, W]))
  -> [b, K, 3]` int32. One function object per model, so that groups of equal shapes share the mapped program."""
  def counts(params, chunk):
    images, truth, valid = chunk
    logits = model.apply({"params": params}, images)
    per_slice = lambda l, t, v: evaluate.confusion_counts(l[None], t, v, model.num_classes)[0]
    return jax.vmap(per_slice)(logits, truth, valid)
  return counts


@functools.cache
def _slice_labels(model):
  """One model's label maps of a batch of slices: `(params, (images [b, H, W, C],)) -> [b, H, W]` uint8."""
  def labels(params, chunk):
    logits = model.apply({"params": params}, chunk[0])
    return jnp.argmax(logits, axis=-1).astype(jnp.uint8)
  return labels


def segmenter(config, model, axis):
  """Dense label maps of whole volumes by every model of the group, slice by slice.

  Slices are fitted to the trained in-plane shape as in `predictor` and the labels put back on the volume's grid
  (`data.unfit`: what centre-cropping left out is background).

  Returns:
    `segment(params, volumes, shape)`: yields one `[M, D, H, W]` uint8 label map per volume, on its own grid.
  """
  labels_of = axis.map_apply(_slice_labels(model))

  def segment(params, volumes, shape):
    for chunk in evaluate.volume_chunks(volumes, shape):
      fitted = [padding.fit_to_shape(volume.image, shape) for volume in chunk]
      images = np.concatenate([image.astype(np.float32) for image, _, _ in fitted])
      labels = evaluate.map_slices(labels_of, params, (images,), config.eval.batch_size)
      start = 0
      for volume, (_, _, offsets) in zip(chunk, fitted):
        per_model = labels[:, start:start + volume.depth]
        start += volume.depth
        yield np.stack([padding.unfit(m, volume.label.shape[1:], offsets) for m in per_model])
  return segment


def _cropped_away(label: np.ndarray, kept: np.ndarray, num_classes: int) -> np.ndarray:
  """`[K, 3]` counts of the voxels of `label [D, H, W]` that centre-cropping leaves out (`kept`: the voxels it keeps):
  the label map on the volume's grid is background there, so each is a miss of its true class."""
  missed = np.bincount(label.ravel(), minlength=num_classes) - np.bincount(kept, minlength=num_classes)
  counts = np.zeros((num_classes, 3), np.int64)
  counts[:, 2] = missed
  counts[0, :2] = missed[0], missed.sum()
  return counts


def predictor(config, model, axis):
  """Dense prediction of every slice of whole volumes by every model of the group, scored on the device.

  Slices are fitted to the trained in-plane shape (`padding.fit_to_shape`) and predicted `eval.batch_size` at a time;
  the device counts each slice's voxels inside the volume's extent (padding never counts), and the truth that
  centre-cropping left out is added on the host as predicted background, as on the volume's own grid
  (`data.unfit`).

  Args:
    config: the experiment config (`eval.batch_size` slices per call).
    model: the U-Net.
    axis: the group's `parallel.ModelAxis`.

  Returns:
    `predict(params, volumes, shape)`: params in axis form, `data.Volume`s, the trained in-plane shape; yields one
    `[M, K, 3]` int64 array of confusion counts per volume (see the module docstring).
  """
  num_classes = model.num_classes
  counts_of = axis.map_apply(_slice_counts(model))

  def predict(params, volumes, shape):
    for chunk in evaluate.volume_chunks(volumes, shape):
      fitted = []
      for volume in chunk:
        image, valid, _ = padding.fit_to_shape(volume.image, shape)
        fitted.append((image.astype(np.float32), padding.fit_to_shape(volume.label, shape)[0], valid))
      per_slice = evaluate.map_slices(counts_of, params, tuple(np.concatenate(parts) for parts in zip(*fitted)),
                                      config.eval.batch_size)
      start = 0
      for volume, (_, truth, valid) in zip(chunk, fitted):
        counts = per_slice[:, start:start + volume.depth].sum(axis=1, dtype=np.int64)
        start += volume.depth
        if any(n > s for n, s in zip(volume.label.shape[1:], shape)):
          counts = counts + _cropped_away(volume.label, truth[valid], num_classes)
        yield counts
  return predict
