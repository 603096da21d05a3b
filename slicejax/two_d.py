"""2D models: examples are whole slices, `[H, W, C]` at one static in-plane shape.

`slicejax.two_d` and `slicejax.three_d` expose the same functions, and the trainer picks one by a point's `dims`
(`DIMS` in `slicejax.train`), so the trainer itself has no 2D/3D branches:
- `network(config)`: the U-Net's size arguments;
- `example_shape(config, volumes)`: the static spatial shape of one training example;
- `batch_size(config)`: examples per model and step;
- `training_data(config, points, plans, pool, num_classes, shape)`: what the group's models train on, as
  `(shared bank, per-model inputs [M, ...], {model index: interpolation quality})`;
- `batch_sampler(config)`: `(key, bank, per_model) -> (images, labels, weights)`, one model's batch;
- `predictor(config, model, axis)`: `(params, volumes, shape) -> iterator of [M, D, H, W] uint8 label maps`, one per
  volume, on the volume's own grid.

Sampling policy: a model's batch is drawn uniformly, with replacement, from its labelled slices: the annotated ones
and, with interpolation on, the interpolated ones, which train as if annotated but with loss weight
`interpolation.weight`; with weight 0 they are never drawn. So with interpolation a volume's share of the batch grows
with the span between its first and last annotated slice (`sampler.model_entries`).
"""

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from slicejax import data as data_lib
from slicejax import evaluate
from slicejax import interpolation
from slicejax import sampler


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


def training_data(config, points, plans, pool, num_classes: int, shape) -> tuple:
  """The slice bank of the training pool and each model's entries over it.

  Interpolated slices of a model with interpolation on are appended to the bank's labels and enter its entries with
  weight `config.interpolation.weight` (none when that weight is 0).

  Args:
    config: the experiment config.
    points: the group's `study.Point`s, `[M]`.
    plans: their annotation plans (case id -> annotated slice indices), `[M]`.
    pool: the training pool's `data.Volume`s.
    num_classes: K.
    shape: the in-plane shape `(H, W)`.

  Returns:
    (bank, entries, quality): bank of `images [N, H, W, C]` float32, `labels [L, H, W]` int32 and `valid [N, H, W]`;
    the stacked entries of `sampler.model_entries`; per model index with interpolation, the
    `interpolation.pooled_interpolation_dice` of its plan.
  """
  bank = sampler.slice_bank(pool, shape)
  offsets = bank.pop("offsets")
  by_id = {v.case_id: v for v in pool}
  weight = float(config.interpolation.weight)
  extra, label_rows, quality = [], [bank["labels"]], {}
  next_row = len(bank["labels"])
  for m, (point, plan) in enumerate(zip(points, plans)):
    entries = []
    if point.interpolation:
      filled, quality[m] = interpolation.interpolate_plan(by_id, plan, num_classes,
                                                          align_centroids=config.interpolation.align_centroids)
      for case in sorted(plan) if weight > 0 else ():
        labels, known = filled[case]
        between = np.setdiff1d(np.flatnonzero(known), plan[case])
        label_rows.append(data_lib.fit_to_shape(labels[between], shape)[0])
        entries += [(offsets[case] + d, next_row + i, weight) for i, d in enumerate(between)]
        next_row += len(between)
    extra.append(entries)
  bank["labels"] = np.concatenate(label_rows).astype(np.int32)
  return bank, sampler.model_entries(plans, offsets, extra), quality


def batch_sampler(config):
  """A batch of labelled slices of one model: `(key, bank, entries) -> (images, labels, weights)`."""
  size = batch_size(config)
  return lambda key, bank, entries: sampler.sample(key, bank, entries, size)


def predictor(config, model, axis):
  """Dense prediction of every slice of whole volumes by every model of the group.

  Args:
    config: the experiment config (`eval.batch_size` slices per call).
    model: the U-Net.
    axis: the group's `parallel.ModelAxis`.

  Returns:
    `predict(params, volumes, shape)`: params in axis form, `data.Volume`s, the trained in-plane shape; yields one
    `[M, D, H, W]` uint8 label map per volume, cropped back to the volume's in-plane size.
  """
  labels_of = axis.map_apply(
      lambda p, images: jnp.argmax(model.apply({"params": p}, images), axis=-1).astype(jnp.uint8))

  def predict(params, volumes, shape):
    bank = sampler.slice_bank(volumes, shape)
    labels = evaluate.predict_slices(labels_of, params, bank["images"], config.eval.batch_size)
    for volume in volumes:
      start = bank["offsets"][volume.case_id]
      _, _, offsets = data_lib.fit_to_shape(volume.label[:1], shape)
      yield np.stack([data_lib.unfit(labels[m, start:start + volume.depth], volume.label.shape[1:], offsets)
                      for m in range(labels.shape[0])])
  return predict
