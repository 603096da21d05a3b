"""3D models: examples are patches `[pd, ph, pw, C]` of whole volumes; the same functions as `slicejax.two_d`.

Training sees the annotated planes of a model's volumes (and, with interpolation on, the interpolated ones) through
per-plane loss weights (`slicejax.patches`); test volumes are predicted by Gaussian-weighted sliding windows.
Sampling policy, as in 2D: every patch is centred on a plane drawn uniformly from the model's labelled planes
(annotated, and interpolated ones with a positive `interpolation.weight`; weight 0 planes are never drawn).
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slicejax import data as data_lib
from slicejax import interpolation
from slicejax import patches
from slicejax import sliding_window


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


def training_data(config, points, plans, pool, num_classes: int, shape) -> tuple:
  """The volume bank of the training pool and each model's plane weights.

  Every pool volume is padded at the end to the largest size in the pool (and at least the patch `shape`). A model's
  `planes [V, Dm]` are 1 on its annotated planes and `config.interpolation.weight` on interpolated ones; a model
  with interpolation gets its own label volume (true labels on annotated planes, interpolated ones between) appended
  to the bank's labels, and `label_rows [V]` says which label row each volume uses.

  Returns:
    (bank, per_model, quality) as in `two_d.training_data`, with per_model = {planes [M, V, Dm], label_rows [M, V]}.
  """
  size = tuple(int(max([v.label.shape[i] for v in pool] + [shape[i]])) for i in range(3))
  index = {v.case_id: i for i, v in enumerate(pool)}
  by_id = {v.case_id: v for v in pool}
  bank = {"images": np.stack([data_lib.pad_volume(v.image, size) for v in pool]).astype(np.float32),
          "valid": np.stack([data_lib.pad_volume(np.ones(v.label.shape, np.float32), size) for v in pool])}
  labels = [data_lib.pad_volume(v.label, size) for v in pool]
  planes = np.zeros((len(points), len(pool), size[0]), np.float32)
  label_rows = np.tile(np.arange(len(pool), dtype=np.int32), (len(points), 1))
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
        labels.append(data_lib.pad_volume(volume_labels, size))
      planes[m, v, plan[case]] = 1.0
  bank["labels"] = np.stack(labels).astype(np.int32)
  return bank, {"planes": planes, "label_rows": label_rows}, quality


def batch_sampler(config):
  """A batch of patches that each hold a labelled plane; see `patches.sample_patches`."""
  c3 = config.three_d
  return lambda key, bank, per_model: patches.sample_patches(
      key, bank, per_model["planes"], tuple(c3.patch), c3.batch_size, foreground_prob=c3.foreground_prob,
      label_rows=per_model["label_rows"])


def predictor(config, model, axis):
  """Sliding-window prediction of whole volumes by every model of the group; see `two_d.predictor`."""
  c3 = config.three_d
  logits_of = axis.map_apply(lambda p, windows: model.apply({"params": p}, windows))

  def predict(params, volumes, shape):
    for volume in volumes:
      padded = tuple(max(n, p) for n, p in zip(volume.label.shape, shape))
      logits = sliding_window.sliding_window_logits(lambda windows: logits_of(params, windows),
                                                    data_lib.pad_volume(volume.image, padded).astype(np.float32), shape,
                                                    overlap=c3.overlap, batch_size=c3.eval_batch_size)
      depth, height, width = volume.label.shape
      yield np.asarray(jnp.argmax(logits, axis=-1).astype(jnp.uint8))[:, :depth, :height, :width]
  return predict
