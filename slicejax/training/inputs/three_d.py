"""3D models: examples are patches `[pd, ph, pw, C]` of whole volumes; the same functions as `inputs.two_d`.

Training sees the annotated planes of a model's volumes (and, with interpolation on, the interpolated ones) through
per-plane loss weights (`slicejax.training.inputs.patches`); test volumes are predicted by Gaussian-weighted sliding
windows
(`slicejax.evaluation.sliding_window`) and scored on the device (`predictor`).
Sampling policy, as in 2D: every patch is centred on a plane drawn uniformly from the model's labelled planes
(annotated, and interpolated ones with a positive `interpolation.weight`; weight 0 planes are never drawn), and a
plane annotated in part (real sparse annotations) puts one of its annotated voxels in the patch
(`slicejax.training.inputs.patches`).
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slicejax.data import padding
from slicejax.evaluation import evaluate
from slicejax.evaluation import sliding_window
from slicejax.study import interpolation
from slicejax.training.inputs import patches
from slicejax.training.inputs import sampler
from slicejax.training import precision


def network(config) -> dict:
  """U-Net size arguments of 3D models (`config.three_d`); on XLA:CPU convolutions run as 2D ones (`conv_impl`)."""
  c3 = config.three_d
  as_2d = c3.conv_impl == "2d" or (c3.conv_impl == "auto" and jax.default_backend() == "cpu")
  return dict(features=c3.features, num_stages=c3.num_stages, kernel_sizes=tuple(c3.kernel_sizes) or None,
              strides=tuple(c3.strides) or None, conv3d_as_2d=as_2d)


def example_shape(config, volumes: Sequence) -> tuple:
  """The training patch and inference window `(pd, ph, pw)`."""
  del volumes
  return tuple(config.three_d.patch)


def batch_size(config) -> int:
  return config.three_d.batch_size


def data_sizes(config, points, plans) -> dict:
  """The sizes of a group's training data: `volumes` (distinct annotated volumes) and `interpolated` (one label
  volume per volume of each model with interpolation); see `two_d.data_sizes`. The bank's labels hold `volumes`
  rows of true labels, then the interpolated ones, so padding to the grid's largest of each key always fits."""
  volumes = set().union(*(plan.keys() for plan in plans))
  extra = sum(len(plan) for point, plan in zip(points, plans) if point.interpolation)
  return {"volumes": len(volumes), "interpolated": extra}


def training_data(config, points, plans, pool, num_classes: int, shape, sizes=None) -> tuple:
  """The volume bank of the volumes the group's plans annotate, and each model's plane weights.

  Volumes are padded at the end to the largest size in the pool (and at least the patch `shape`); `extents [V, 3]`
  holds each one's real size. A model's `planes [V, Dm]` are 1 on its annotated planes and
  `config.interpolation.weight` on interpolated ones; a model with interpolation gets its own label volume (true
  labels on annotated planes, interpolated ones between) appended to the bank's labels, and `label_rows [V]` says
  which label row each volume uses. Voxels of an ignore label (real sparse annotations, `slicejax.study.sparse`) hold
  `patches.UNANNOTATED` in the bank.

  Returns:
    (bank, per_model, quality) as in `two_d.training_data`, with bank = {images [V, Dm, Hm, Wm, C], labels
    [L, Dm, Hm, Wm] uint8, extents [V, 3] int32} and per_model = {planes [M, V, Dm], label_rows [M, V]}.
  """
  sizes = sizes or data_sizes(config, points, plans)
  size = tuple(int(max([v.label.shape[i] for v in pool] + [shape[i]])) for i in range(3))
  used = [v for v in pool if any(v.case_id in plan for plan in plans)]
  index = {v.case_id: i for i, v in enumerate(used)}
  by_id = {v.case_id: v for v in used}
  image_dtype = precision.bank_dtype(config)
  bank = {"images": np.stack([padding.pad_volume(v.image, size).astype(image_dtype) for v in used]),
          "extents": np.array([v.label.shape for v in used], np.int32)}
  # Label rows: the true labels of the bank's volumes (padded to the grid's volume count), then interpolated ones. An
  # ignore label (K or more) becomes the sampler's UNANNOTATED.
  labels = [padding.pad_volume(np.where(v.label < num_classes, v.label, patches.UNANNOTATED), size).astype(np.uint8)
            for v in used]
  labels += [np.zeros(size, np.uint8)] * (sizes["volumes"] - len(used))
  planes = np.zeros((len(points), sizes["volumes"], size[0]), np.float32)
  label_rows = np.tile(np.arange(sizes["volumes"], dtype=np.int32), (len(points), 1))
  quality = {}
  for m, (point, plan) in enumerate(zip(points, plans)):
    if point.interpolation:
      filled, quality[m] = interpolation.interpolate_plan(by_id, plan, num_classes,
                                                          align_centroids=config.interpolation.align_centroids)
    for case in sorted(plan):
      v = index[case]
      if point.interpolation:
        volume_labels, known = filled[case]
        planes[m, v, :len(known)] = known * config.interpolation.weight
        label_rows[m, v] = len(labels)
        labels.append(padding.pad_volume(volume_labels, size).astype(np.uint8))
      planes[m, v, plan[case]] = 1.0
  bank = {**sampler.pad_rows(bank, sizes["volumes"]), **sampler.pad_rows({"labels": np.stack(labels)},
                                                                                sizes["volumes"] + sizes["interpolated"])}
  return bank, {"planes": planes, "label_rows": label_rows}, quality


def batch_sampler(config):
  """A batch of patches that each hold a labelled plane; see `patches.sample_patches`."""
  c3 = config.three_d
  return lambda key, bank, per_model: patches.sample_patches(
      key, bank, per_model["planes"], tuple(c3.patch), c3.batch_size, foreground_prob=c3.foreground_prob,
      label_rows=per_model["label_rows"])


@functools.cache
def _window_logits(model):
  """One model's logits of a batch of windows; one function object per model, so that groups of equal shapes share
  the mapped program."""
  return lambda params, windows: model.apply({"params": params}, windows)


def _volume_logits(config, model, axis):
  """`(params, volumes, shape) -> iterator of (volume, logits [M, *grid, K], grid)`: every model's Gaussian-blended
  sliding-window logits of each volume (`shape` the patch).

  Every volume of a call is padded at the end to one shape, `sliding_window.bucket_shape` of the largest (and at
  least the patch), so that each program compiles once for all of them; the windows cover the volume's own extent
  only (as if it alone were padded to the patch).
  """
  c3 = config.three_d
  logits_of = axis.map_apply(_window_logits(model))

  def volume_logits(params, volumes, shape):
    if not volumes:
      return
    extents = [tuple(max(n, p) for n, p in zip(volume.label.shape, shape)) for volume in volumes]
    grid = sliding_window.bucket_shape(np.max(extents, axis=0))
    for volume, extent in zip(volumes, extents):
      yield volume, sliding_window.sliding_window_logits(
          lambda windows: logits_of(params, windows), padding.pad_volume(volume.image, grid).astype(np.float32),
          shape, extent=extent, overlap=c3.overlap, batch_size=c3.eval_batch_size), grid
  return volume_logits


def predictor(config, model, axis):
  """Sliding-window prediction of whole volumes by every model of the group (`_volume_logits`), scored on the device
  over each volume's own voxels.

  Returns:
    `predict(params, volumes, shape)` as in `two_d.predictor`, `shape` being the patch: yields one `[M, K, 3]` int32
    array of confusion counts per volume.
  """
  volume_logits = _volume_logits(config, model, axis)

  def predict(params, volumes, shape):
    for volume, logits, grid in volume_logits(params, volumes, shape):
      valid = padding.pad_volume(np.ones(volume.label.shape, bool), grid)
      yield np.asarray(evaluate.confusion_counts(logits, padding.pad_volume(volume.label, grid), valid,
                                                 model.num_classes))
  return predict


def segmenter(config, model, axis):
  """Sliding-window label maps of whole volumes by every model of the group (`_volume_logits`).

  Returns:
    `segment(params, volumes, shape)`: yields one `[M, D, H, W]` uint8 label map per volume, on its own grid.
  """
  volume_logits = _volume_logits(config, model, axis)

  def segment(params, volumes, shape):
    for volume, logits, _ in volume_logits(params, volumes, shape):
      depth, height, width = volume.label.shape
      yield np.asarray(_argmax(logits))[:, :depth, :height, :width]
  return segment


@jax.jit
def _argmax(logits):
  return jnp.argmax(logits, axis=-1).astype(jnp.uint8)
