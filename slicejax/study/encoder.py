"""Self-supervised slice encoder: the embeddings behind unsupervised active learning (UAL) slice selection.

Conventions:
  * Slices are `[N, H, W, C]` float32: 2D slices of volumes cut along the slicing axis, per-volume z-score
    normalised and zero-padded to a common H, W. A volume is `[D, H, W, C]`, so its slices are its first axis.
  * Embeddings are `[N, F]` float32, L2-normalised, F = `config.embedding_dim`, taken *before* the projection head
    (as in SimCLR, the representation before the head keeps more information than the head's output).
  * All randomness of a training run comes from one seed: the init key and a run key are split from
    `key(seed)`, and step t draws its batch and augmentations from `fold_in(run key, t)`, so a run is reproducible
    and step t's randomness does not depend on how the loop is driven.

Objective: SimCLR (NT-Xent). Two augmented views of each slice in a batch are pulled together and pushed away from the
other 2B - 2 views. It is chosen over BYOL and VICReg because it is one network and one loss with no momentum
(target) network, predictor or variance/covariance weights to balance; it trains stably with the modest batches a
2-core CPU affords, and its only sensitive setting, the temperature, has a well-known working range (0.1 to 0.5).

Network: a small CNN. Each stage opens with a stride-2 3x3 convolution followed by `convs_per_stage - 1` more,
every convolution followed by group norm (no mutable batch statistics, so a slice's embedding does not depend on
its batch) and ReLU; then global average pooling and a linear layer give the embedding; the head is
ReLU -> Dense(embedding_dim) -> ReLU -> Dense(projection_dim) and is used only by the loss.

Augmentations, on device in jax.numpy, drawn independently per view: random resized crop with a small rotation and
left-right / up-down flips, done as one affine warp with `jax.scipy.ndimage.map_coordinates` (outside the image
is 0, like the padding); intensity scale and shift; a gamma curve on the slice's min-max range; Gaussian blur;
Gaussian noise. Up-down flips are off by default: anatomy has an up and a down in these slices.

`slice_embeddings` trains once on every slice of the given volumes and caches the result under
`cache_dir/<key>/`, key = hash of (image content and case ids, encoder config, seed): `params/` (orbax
StandardCheckpointer), `embeddings.npy` `[sum of D, F]` in sorted case-id order and `manifest.json`.
"""

import functools
import hashlib
import json
import os
import pathlib
import shutil
import time
import uuid
from typing import Any, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from slicejax.config.defaults import encoder_config as default_config  # the `ual.encoder` block
from slicejax import console
from slicejax.errors import InputError

# Changes whenever the cache layout or the meaning of a cached entry changes, so old entries miss.
_CACHE_VERSION = "slicejax-encoder-v1"


# ----------------------------------------------------------------------------------------------------------------
# Model.


class Encoder(nn.Module):
  """Small CNN; returns the embedding `[B, embedding_dim]` and, with `with_head`, also the projection."""
  features: Sequence[int]
  convs_per_stage: int
  norm_groups: int
  embedding_dim: int
  projection_dim: int

  @nn.compact
  def __call__(self, x, with_head: bool = True):
    for i, features in enumerate(self.features):
      for j in range(self.convs_per_stage):
        x = nn.Conv(features, (3, 3), strides=2 if j == 0 else 1, name=f"stage_{i}_conv_{j}")(x)
        x = nn.GroupNorm(num_groups=min(self.norm_groups, features), name=f"stage_{i}_norm_{j}")(x)
        x = nn.relu(x)
    embedding = nn.Dense(self.embedding_dim, name="embedding")(jnp.mean(x, axis=(1, 2)))
    if not with_head:
      return embedding
    z = nn.relu(embedding)
    z = nn.relu(nn.Dense(self.embedding_dim, name="head_0")(z))
    return embedding, nn.Dense(self.projection_dim, name="head_1")(z)


def _model(config) -> Encoder:
  features = tuple(int(f) for f in config.features)
  if not features or config.convs_per_stage < 1:
    raise InputError("encoder.features", "need at least one stage and encoder.convs_per_stage >= 1")
  for f in features:
    if f % min(config.norm_groups, f):
      raise InputError("encoder.norm_groups", f"{config.norm_groups} groups do not divide {f} channels")
  return Encoder(features=features, convs_per_stage=int(config.convs_per_stage), norm_groups=int(config.norm_groups),
                 embedding_dim=int(config.embedding_dim), projection_dim=int(config.projection_dim))


def _l2_normalize(x, eps: float = 1e-12):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def nt_xent_loss(z1, z2, temperature: float):
  """SimCLR's normalised-temperature cross entropy.

  Args:
    z1: `[B, P]` projections of the first views.
    z2: `[B, P]` projections of the second views; row i is the positive of `z1[i]`.
    temperature: softmax temperature on cosine similarities.

  Returns:
    Scalar mean over the 2B views of -log softmax of the positive among the other 2B - 1 views.
  """
  z = _l2_normalize(jnp.concatenate([z1, z2], axis=0))
  n = z.shape[0]
  logits = z @ z.T / temperature
  # A view is never its own candidate; a large finite value keeps the gradient free of NaNs.
  logits = jnp.where(jnp.eye(n, dtype=bool), -1e9, logits)
  positives = (jnp.arange(n) + n // 2) % n
  return optax.softmax_cross_entropy_with_integer_labels(logits, positives).mean()


# ----------------------------------------------------------------------------------------------------------------
# Augmentations.


def _affine_warp(rng, image, aug):
  """Random resized crop, rotation and flips of one `[H, W, C]` slice as a single bilinear resampling."""
  height, width = image.shape[:2]
  k_area, k_aspect, k_y, k_x, k_rot, k_lr, k_ud = jax.random.split(rng, 7)
  area = jax.random.uniform(k_area, minval=aug.crop_min_area, maxval=1.0)
  log_aspect = jnp.log(aug.crop_max_aspect)
  aspect = jnp.exp(jax.random.uniform(k_aspect, minval=-log_aspect, maxval=log_aspect))
  scale_y = jnp.minimum(jnp.sqrt(area / aspect), 1.0)
  scale_x = jnp.minimum(jnp.sqrt(area * aspect), 1.0)
  # The crop centre moves only as far as keeps the (unrotated) crop inside the slice.
  shift_y = jax.random.uniform(k_y, minval=-1.0, maxval=1.0) * (1.0 - scale_y) * height / 2
  shift_x = jax.random.uniform(k_x, minval=-1.0, maxval=1.0) * (1.0 - scale_x) * width / 2
  angle = jnp.deg2rad(aug.rotation_degrees) * jax.random.uniform(k_rot, minval=-1.0, maxval=1.0)
  flip_y = jnp.where(jax.random.bernoulli(k_ud, aug.flip_ud_prob), -1.0, 1.0)
  flip_x = jnp.where(jax.random.bernoulli(k_lr, aug.flip_lr_prob), -1.0, 1.0)

  centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
  u, v = jnp.meshgrid(jnp.arange(height) - centre_y, jnp.arange(width) - centre_x, indexing="ij")
  u, v = u * flip_y * scale_y, v * flip_x * scale_x
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  source_y = centre_y + shift_y + cos * u - sin * v
  source_x = centre_x + shift_x + sin * u + cos * v
  warp = lambda channel: jax.scipy.ndimage.map_coordinates(channel, [source_y, source_x], order=1, mode="constant")
  return jax.vmap(warp, in_axes=-1, out_axes=-1)(image)


def _gaussian_blur(image, sigma, radius: int):
  """Separable Gaussian blur of one `[H, W, C]` slice with a traced `sigma` and a static kernel radius."""
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  weights = jnp.exp(-offsets**2 / (2 * sigma**2))
  weights = weights / weights.sum()
  height, width = image.shape[:2]
  padded = jnp.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="edge")
  image = sum(weights[i] * padded[i:i + height] for i in range(2 * radius + 1))
  padded = jnp.pad(image, ((0, 0), (radius, radius), (0, 0)), mode="edge")
  return sum(weights[i] * padded[:, i:i + width] for i in range(2 * radius + 1))


def _augment_one(rng, image, aug):
  """One view of one `[H, W, C]` slice: warp, then intensity scale/shift, gamma, blur and noise."""
  k_warp, k_scale, k_shift, k_gamma, k_blur, k_sigma, k_noise_std, k_noise = jax.random.split(rng, 8)
  image = _affine_warp(k_warp, image, aug)

  scale = 1.0 + aug.intensity_scale * jax.random.uniform(k_scale, minval=-1.0, maxval=1.0)
  shift = aug.intensity_shift * jax.random.uniform(k_shift, minval=-1.0, maxval=1.0)
  image = image * scale + shift

  # Gamma acts on [0, 1]; z-scored slices are mapped there by their own range and back.
  gamma = jnp.exp(aug.gamma * jax.random.uniform(k_gamma, minval=-1.0, maxval=1.0))
  low, high = image.min(), image.max()
  span = jnp.maximum(high - low, 1e-6)
  # Clipped: a fused (image - low) / span can come out a hair below 0, and a negative base to a fractional power is NaN.
  image = jnp.clip((image - low) / span, 0.0, 1.0)**gamma * span + low

  radius = int(np.ceil(3 * aug.blur_sigma_max))
  if radius > 0:
    sigma = jax.random.uniform(k_sigma, minval=0.1, maxval=max(aug.blur_sigma_max, 0.1))
    blurred = _gaussian_blur(image, sigma, radius)
    image = jnp.where(jax.random.bernoulli(k_blur, aug.blur_prob), blurred, image)

  noise_std = aug.noise_std * jax.random.uniform(k_noise_std)
  return image + noise_std * jax.random.normal(k_noise, image.shape)


def augment(rng, images, aug):
  """Draws one random view of each slice.

  Args:
    rng: PRNG key.
    images: `[B, H, W, C]` slices.
    aug: the `augment` block of the encoder config.

  Returns:
    `[B, H, W, C]` augmented slices, each with its own random transform.
  """
  keys = jax.random.split(rng, images.shape[0])
  return jax.vmap(functools.partial(_augment_one, aug=aug))(keys, images)


# ----------------------------------------------------------------------------------------------------------------
# Training and embedding.


def _check_slices(slices, name: str = "slices") -> np.ndarray:
  slices = np.asarray(slices, np.float32)
  if slices.ndim != 4 or slices.shape[0] == 0:
    raise InputError(name, f"expected a non-empty [N, H, W, C] array, got shape {slices.shape}")
  if not np.isfinite(slices).all():
    raise InputError(name, "contains NaN or infinite values")
  return slices


def train(slices, config, seed: int, *, progress: bool = True) -> tuple[Any, dict]:
  """Trains the encoder with SimCLR on unlabelled slices.

  Args:
    slices: `[N, H, W, C]` float32 slices (every slice of the training pool).
    config: encoder config, see `default_config`.
    seed: the run's seed (init and every step's batch and augmentations derive from it).
    progress: print a progress line every `config.log_every` steps.

  Returns:
    `(params, {"losses": [steps] floats, "train_seconds": float})`; seconds include compilation.
  """
  slices = _check_slices(slices)
  if slices.shape[0] < 2:
    raise InputError("slices", "contrastive training needs at least 2 slices")
  if config.steps < 1 or config.batch_size < 2 or config.temperature <= 0:
    raise InputError("encoder", "need steps >= 1, batch_size >= 2 and temperature > 0")
  start = time.perf_counter()
  model = _model(config)
  batch_size = min(int(config.batch_size), slices.shape[0])
  if batch_size < config.batch_size:
    logging.warning("encoder: %d slices, fewer than batch_size %d; using %d", slices.shape[0], config.batch_size,
                    batch_size)
  aug = ml_collections.FrozenConfigDict(config.augment)
  tx = optax.adam(optax.cosine_decay_schedule(config.learning_rate, config.steps))
  temperature = float(config.temperature)

  init_rng, rng = jax.random.split(jax.random.key(seed))
  params = model.init(init_rng, jnp.zeros((1,) + slices.shape[1:], jnp.float32))
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32), "rng": rng}
  data = jnp.asarray(slices)

  def loss_fn(params, view_1, view_2):
    _, z1 = model.apply(params, view_1)
    _, z2 = model.apply(params, view_2)
    return nt_xent_loss(z1, z2, temperature)

  @functools.partial(jax.jit, donate_argnums=0)
  def train_step(state, data):
    k_batch, k_view_1, k_view_2 = jax.random.split(jax.random.fold_in(state["rng"], state["step"]), 3)
    batch = data[jax.random.choice(k_batch, data.shape[0], (batch_size,), replace=False)]
    loss, grads = jax.value_and_grad(loss_fn)(
        state["params"], augment(k_view_1, batch, aug), augment(k_view_2, batch, aug))
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
            "step": state["step"] + 1, "rng": state["rng"]}, loss

  losses = []
  for step in range(config.steps):
    state, loss = train_step(state, data)
    losses.append(loss)
    if progress and ((step + 1) % config.log_every == 0 or step + 1 == config.steps):
      console.say(f"UAL slice encoder: step {step + 1}/{config.steps}, loss {float(loss):.4f} "
                  f"({console.duration(time.perf_counter() - start)})")
  losses = [float(x) for x in jax.device_get(losses)]
  if not np.isfinite(losses[-1]):
    raise FloatingPointError(f"encoder training diverged: loss {losses[-1]} at the last step")
  train_seconds = time.perf_counter() - start
  logging.info("encoder: trained %d steps on %d slices in %.1f s", config.steps, slices.shape[0], train_seconds)
  return state["params"], {"losses": losses, "train_seconds": train_seconds}


@functools.lru_cache(maxsize=8)
def _embed_fn(model: Encoder):
  """One jitted forward pass per encoder shape, so repeated `embed` calls reuse the compilation."""
  return jax.jit(lambda params, x: _l2_normalize(model.apply(params, x, with_head=False)))


def embed(params, slices, config, batch_size: int = 256) -> np.ndarray:
  """Embeds slices with a trained encoder.

  Args:
    params: encoder params from `train`.
    slices: `[N, H, W, C]` float32.
    config: the encoder config the params were trained with.
    batch_size: slices per forward pass (the last batch is zero-padded, so one compilation serves all).

  Returns:
    `[N, F]` float32, L2-normalised rows.
  """
  slices = _check_slices(slices)
  apply = _embed_fn(_model(config))
  n = slices.shape[0]
  batch_size = min(batch_size, n)
  padded = np.concatenate([slices, np.zeros((-n % batch_size,) + slices.shape[1:], np.float32)])
  out = [apply(params, padded[i:i + batch_size]) for i in range(0, padded.shape[0], batch_size)]
  return np.asarray(jnp.concatenate(out)[:n], np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Cached embeddings of whole volumes.


def _cache_key(images: dict, case_ids: list, config, seed: int) -> str:
  digest = hashlib.sha256()
  settings = {"version": _CACHE_VERSION, "seed": int(seed), "config": ml_collections.ConfigDict(config).to_dict()}
  digest.update(json.dumps(settings, sort_keys=True).encode())
  for case_id in case_ids:
    image = np.ascontiguousarray(images[case_id], np.float32)
    digest.update(json.dumps([str(case_id), image.shape]).encode())
    digest.update(image.tobytes())
  return digest.hexdigest()[:32]


def _write_entry(entry: pathlib.Path, params, embeddings: np.ndarray, manifest: dict):
  """Writes a cache entry into a private folder and renames it into place, so readers never see half of one."""
  tmp = entry.parent / f".{entry.name}.tmp-{uuid.uuid4().hex}"
  tmp.mkdir(parents=True)
  try:
    checkpointer = ocp.StandardCheckpointer()
    try:
      checkpointer.save(tmp / "params", params)
      checkpointer.wait_until_finished()
    finally:
      checkpointer.close()
    np.save(tmp / "embeddings.npy", embeddings)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    os.rename(tmp, entry)
  except OSError:
    # Another process wrote the same entry first; its content is the same, keep it.
    if not (entry / "manifest.json").is_file():
      raise
    logging.info("encoder cache: %s was written concurrently; keeping that copy", entry)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def estimate_seconds(images: dict, config, *, seed: int, cache_dir) -> float:
  """What `slice_embeddings` will cost: 0 on a cache hit, else training measured on the same slices (one step with
  its compilation, then three, which compile again: the difference is two steps) and embedding measured on a batch.
  """
  case_ids = sorted(images)
  if (pathlib.Path(cache_dir).resolve() / _cache_key(images, case_ids, config, seed) / "manifest.json").is_file():
    return 0.0
  slices = np.concatenate([np.asarray(images[c], np.float32) for c in case_ids])
  short = ml_collections.ConfigDict(config).copy_and_resolve_references()
  seconds = []
  for steps in (1, 3):
    short.steps = steps
    params, info = train(slices, short, seed, progress=False)
    seconds.append(info["train_seconds"])
  step = max(seconds[1] - seconds[0], 0.0) / 2
  batch = slices[:min(256, slices.shape[0])]
  embed(params, batch, config)  # compiles
  start = time.perf_counter()
  embed(params, batch, config)
  per_slice = (time.perf_counter() - start) / batch.shape[0]
  return seconds[0] + (config.steps - 1) * step + per_slice * slices.shape[0]


def slice_embeddings(images: dict, config, *, seed: int, cache_dir) -> tuple[dict, dict]:
  """Trains the encoder on every slice of `images` once and embeds every slice, with an on-disk cache.

  Args:
    images: case_id -> `[D, H, W, C]` float32 volume; all share H, W, C.
    config: encoder config, see `default_config`.
    seed: training seed.
    cache_dir: folder for cache entries; the key hashes the image content, case ids, config and seed.

  Returns:
    `({case_id: [D, F] float32}, info)` with info = {"train_seconds", "embed_seconds" (what computing the entry
    cost, also on a cache hit: it is part of the price of UAL), "cache_hit": bool, "cache_path": str}.
  """
  if not images:
    raise InputError("images", "no volumes to embed")
  case_ids = sorted(images)
  shape = None
  for case_id in case_ids:
    image = images[case_id]
    if np.ndim(image) != 4 or np.shape(image)[0] == 0:
      raise InputError(case_id, f"expected a [D, H, W, C] volume, got shape {np.shape(image)}")
    if shape is not None and np.shape(image)[1:] != shape:
      raise InputError(case_id, f"slice shape {np.shape(image)[1:]} differs from {shape} of {case_ids[0]}")
    shape = np.shape(image)[1:]
  depths = [int(np.shape(images[c])[0]) for c in case_ids]
  splits = np.cumsum(depths)[:-1]

  entry = pathlib.Path(cache_dir).resolve() / _cache_key(images, case_ids, config, seed)
  if (entry / "manifest.json").is_file():
    embeddings = np.load(entry / "embeddings.npy")
    manifest = json.loads((entry / "manifest.json").read_text())
    logging.info("encoder cache hit: %s (%d slices)", entry, embeddings.shape[0])
    return (dict(zip(case_ids, np.split(embeddings, splits))),
            {"train_seconds": manifest["train_seconds"], "embed_seconds": manifest["embed_seconds"], "cache_hit": True,
             "cache_path": str(entry)})

  slices = np.concatenate([np.asarray(images[c], np.float32) for c in case_ids])
  console.say(f"UAL slice encoder: training on {slices.shape[0]} slices of {len(case_ids)} volumes (once; cached)")
  params, train_info = train(slices, config, seed)
  start = time.perf_counter()
  embeddings = embed(params, slices, config)
  embed_seconds = time.perf_counter() - start
  logging.info("encoder: embedded %d slices in %.1f s (training took %.1f s)", slices.shape[0], embed_seconds,
               train_info["train_seconds"])
  manifest = {"case_ids": case_ids, "depths": depths, "seed": int(seed), "train_seconds": train_info["train_seconds"],
              "embed_seconds": embed_seconds, "final_loss": train_info["losses"][-1]}
  _write_entry(entry, params, embeddings, manifest)
  return (dict(zip(case_ids, np.split(embeddings, splits))),
          {"train_seconds": train_info["train_seconds"], "embed_seconds": embed_seconds, "cache_hit": False,
           "cache_path": str(entry)})
