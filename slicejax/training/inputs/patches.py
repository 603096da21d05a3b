"""3D training patches from volumes in which only some planes are annotated.

Conventions:
  * The bank holds volumes padded at the end to one shape: `images [V, Dm, Hm, Wm, C]`, `labels [L, Dm, Hm, Wm]`
    (uint8 or int) and `extents [V, 3]`, each volume's real size (a box at the origin; the rest is padding). D is
    the slicing axis; a *plane* is one index d along it.
  * A model's plane weights `planes [V, Dm]` float32 are its per-plane loss weights: 1 on annotated planes, the
    configured weight on interpolated planes, 0 on planes it knows nothing about.
  * Labels equal to `UNANNOTATED` mark voxels nobody annotated inside such a plane (a dataset's ignore label: a plane
    of real sparse annotations may be annotated in part); they weigh 0.
  * A patch is `(pd, ph, pw)`, no larger than the bank's `(Dm, Hm, Wm)`.

Sampling, per patch:
  1. A *centre plane* (v, d): uniform over all pairs with `planes[v, d] > 0`, so every patch holds at least one
     plane with a positive weight.
  2. The depth start: uniform over the starts whose window contains d.
  3. In-plane starts: uniform; or, with probability `foreground_prob` and when plane (v, d) has foreground (an
     annotated label > 0), the window is centred on one of its foreground voxels, chosen uniformly, since small
     structures are otherwise rarely seen. A plane annotated in part (it holds `UNANNOTATED` voxels) is never cut
     uniformly: the window is centred on one of its annotated voxels, chosen uniformly, so that no patch is spent on
     voxels that all weigh 0. Where no label is `UNANNOTATED` the patches do not depend on it.
All starts are clipped to `[0, end - patch]`, where `end` is the end of the volume's real extent along that axis, so
a patch lies inside the volume wherever the volume is at least as large as the patch, and inside the bank always.
The patch's weights are the plane weights of its planes broadcast over H and W, times the volume's extent (0 on
padding), times 0 on `UNANNOTATED` voxels; a model without any weighted plane gets all-zero weights (and so a zero
loss), not NaN. The function is pure and jittable; all randomness
comes from `key`, so models on the model axis sample independently through their own keys.
"""

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from slicejax.errors import InputError

# The label of voxels nobody annotated, in the bank's uint8 labels (`three_d.training_data` maps an ignore label to it).
UNANNOTATED = 255


def _uniform_index(key, mask):
  """Index of an element drawn uniformly among the True ones of the flat boolean `mask` (0 when none is)."""
  cumulative = jnp.cumsum(mask.astype(jnp.int32))
  rank = jax.random.randint(key, (), 0, jnp.maximum(cumulative[-1], 1))
  return jnp.minimum(jnp.searchsorted(cumulative, rank, side="right"), mask.shape[0] - 1)


def _start_containing(key, index, size, end):
  """Start of a window of `size`, uniform among those containing `index`, clipped to `[0, max(end - size, 0)]`."""
  top = jnp.maximum(end - size, 0)
  low = jnp.clip(index - size + 1, 0, top)
  high = jnp.clip(index, 0, top)
  return jax.random.randint(key, (), low, high + 1)


def _sample_one(key, bank, planes, label_rows, patch, foreground_prob):
  """One patch: `image [pd, ph, pw, C]`, `label [pd, ph, pw]` int32, `weight [pd, ph, pw]`."""
  pd, ph, pw = patch
  _, depth, height, width = bank["images"].shape[:4]
  keys = jax.random.split(key, 6)

  pair = _uniform_index(keys[0], planes.reshape(-1) > 0)
  v, d = pair // depth, pair % depth
  end_d, end_h, end_w = bank["extents"][v, 0], bank["extents"][v, 1], bank["extents"][v, 2]
  start_d = _start_containing(keys[1], d, pd, end_d)

  start_h = jax.random.randint(keys[2], (), 0, jnp.maximum(end_h - ph, 0) + 1)
  start_w = jax.random.randint(keys[3], (), 0, jnp.maximum(end_w - pw, 0) + 1)
  row = label_rows[v]
  plane_valid = (jnp.arange(height)[:, None] < end_h) & (jnp.arange(width)[None, :] < end_w)
  annotated = (bank["labels"][row, d] != UNANNOTATED) & plane_valid
  foreground = (bank["labels"][row, d] > 0) & annotated
  centred = (jax.random.uniform(keys[5]) < foreground_prob) & foreground.any()
  # One draw serves both centrings (only one is used): where nothing is UNANNOTATED, the keys and the choice of
  # foreground voxels are those of uniform starts and foreground centring alone.
  voxel = _uniform_index(keys[4], jnp.where(centred, foreground, annotated).reshape(-1))
  centre_h = jnp.clip(voxel // width - ph // 2, 0, jnp.maximum(end_h - ph, 0))
  centre_w = jnp.clip(voxel % width - pw // 2, 0, jnp.maximum(end_w - pw, 0))
  on_voxel = centred | (plane_valid & ~annotated).any()
  start_h = jnp.where(on_voxel, centre_h, start_h)
  start_w = jnp.where(on_voxel, centre_w, start_w)

  at = (v, start_d, start_h, start_w)
  image = jax.lax.dynamic_slice(bank["images"], at + (0,), (1, pd, ph, pw, bank["images"].shape[-1]))[0]
  label = jax.lax.dynamic_slice(bank["labels"], (row,) + at[1:], (1, pd, ph, pw))[0].astype(jnp.int32)
  inside = [(start + jnp.arange(size)) < end for start, size, end in ((start_d, pd, end_d), (start_h, ph, end_h),
                                                                       (start_w, pw, end_w))]
  valid = (inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]).astype(jnp.float32)
  plane_weight = jax.lax.dynamic_slice(planes, (v, start_d), (1, pd))[0]
  return image, label, plane_weight[:, None, None] * valid * (label != UNANNOTATED)


def sample_patches(key, bank: Mapping[str, jax.Array], planes, patch: Sequence[int], batch_size: int, *,
                   foreground_prob: float = 0.33, label_rows=None):
  """Draws one model's batch of 3D patches, each holding at least one weighted plane.

  Args:
    key: PRNG key; the only source of randomness.
    bank: `images [V, Dm, Hm, Wm, C]`, `labels [L, Dm, Hm, Wm]` (L >= V; `UNANNOTATED` where nobody annotated),
      `extents [V, 3]` int (each volume's real size; the rest of its `[Dm, Hm, Wm]` is padding).
    planes: `[V, Dm]` float32 plane weights of this model (0 where it has no label).
    patch: static patch shape `(pd, ph, pw)`, at most `(Dm, Hm, Wm)`.
    batch_size: static number of patches B.
    foreground_prob: probability that a patch is centred in-plane on a foreground voxel of its centre plane (when
      that plane has foreground).
    label_rows: `[V]` int, the row of `labels` that holds this model's labels of volume v (e.g. a volume with
      interpolated planes); None means row v.

  Returns:
    `images [B, pd, ph, pw, C]`, `labels [B, pd, ph, pw]`, `weights [B, pd, ph, pw]` (plane weight times `valid`,
    0 on `UNANNOTATED` voxels).
  """
  patch = tuple(int(p) for p in patch)
  bank_shape = tuple(bank["images"].shape[1:4])
  if len(patch) != 3 or any(p < 1 or p > s for p, s in zip(patch, bank_shape)):
    raise InputError("patch", f"{patch} must be 3 positive sizes no larger than the bank's volumes {bank_shape}")
  if planes.shape != bank["images"].shape[:2]:
    raise InputError("planes", f"shape {planes.shape} does not match the bank's [V, Dm] {bank['images'].shape[:2]}")
  if label_rows is None:
    label_rows = jnp.arange(planes.shape[0])
  if isinstance(foreground_prob, (int, float)) and not 0 <= foreground_prob <= 1:
    raise InputError("foreground_prob", f"must be in [0, 1], got {foreground_prob}")
  keys = jax.random.split(key, batch_size)
  one = lambda k: _sample_one(k, bank, planes, label_rows, patch, foreground_prob)
  return jax.vmap(one)(keys)
