"""UAL slice selection and its self-supervised encoder, on tiny synthetic slices and hand-made embeddings."""

import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from slicejax.errors import InputError
from slicejax.study import encoder
from slicejax.study.selection import ual

KINDS = 4
RUN_LENGTHS = (2, 9, 3, 6)  # Uneven runs of one kind of slice, as anatomy changes along a volume.


def _tiny_config(**overrides):
  config = encoder.default_config()
  config.features = (8, 16)
  config.convs_per_stage = 1
  config.norm_groups = 4
  config.embedding_dim = 16
  config.projection_dim = 16
  config.steps = 150
  config.batch_size = 32
  config.learning_rate = 3e-3
  config.log_every = 1000
  config.update(overrides)
  return config


def _volume_kinds(rng: np.random.Generator) -> np.ndarray:
  """`[20]` kind of each slice: the kinds in random order, in runs of RUN_LENGTHS (also shuffled)."""
  kinds = rng.permutation(KINDS)
  lengths = rng.permutation(RUN_LENGTHS)
  return np.repeat(kinds, lengths)


def _patterns(size: int = 16) -> np.ndarray:
  """`[KINDS, size, size]`: horizontal stripes, vertical stripes, a disk, a checkerboard; zero mean, unit scale."""
  y, x = np.mgrid[:size, :size]
  patterns = np.stack([
      (y // 2) % 2,
      (x // 2) % 2,
      (y - size / 2 + 0.5)**2 + (x - size / 2 + 0.5)**2 < (size / 3)**2,
      ((y // 4) + (x // 4)) % 2,
  ]).astype(np.float32)
  return (patterns - 0.5) * 2


def _volume_images(kinds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """`[D, 16, 16, 1]` slices: each slice its kind's pattern plus Gaussian noise."""
  images = _patterns()[kinds] + 0.3 * rng.standard_normal((len(kinds), 16, 16)).astype(np.float32)
  return images[..., None].astype(np.float32)


def _covers_all_kinds(picked: np.ndarray, kinds: np.ndarray) -> bool:
  return len(set(kinds[picked].tolist())) == KINDS


def _random_select(num_slices, rho, rng):
  return np.sort(rng.choice(num_slices, rho, replace=False))


# ----------------------------------------------------------------------------------------------------------------
# Encoder pieces.


@pytest.mark.slow
def test_nt_xent_loss_hand_computed():
  z = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
  # Every view: the positive at cosine 1 (logit 1 / 0.5 = 2) against two negatives at cosine 0 (logit 0).
  expected = math.log(1 + 2 * math.exp(-2))
  assert float(encoder.nt_xent_loss(z, 3.0 * z, 0.5)) == pytest.approx(expected, abs=1e-6)


def _no_augmentation(**overrides):
  aug = ml_collections.ConfigDict(dict(
      crop_min_area=1.0, crop_max_aspect=1.0, rotation_degrees=0.0, flip_lr_prob=0.0, flip_ud_prob=0.0,
      intensity_scale=0.0, intensity_shift=0.0, gamma=0.0, blur_prob=0.0, blur_sigma_max=0.0, noise_std=0.0))
  aug.update(overrides)
  return ml_collections.FrozenConfigDict(aug)


@pytest.mark.slow
def test_augment_with_zero_strength_is_identity_and_flips_are_exact():
  images = np.random.default_rng(0).standard_normal((3, 6, 5, 2)).astype(np.float32)
  rng = jax.random.key(0)
  np.testing.assert_allclose(encoder.augment(rng, images, _no_augmentation()), images, atol=1e-5)
  np.testing.assert_allclose(
      encoder.augment(rng, images, _no_augmentation(flip_lr_prob=1.0)), images[:, :, ::-1], atol=1e-5)
  np.testing.assert_allclose(
      encoder.augment(rng, images, _no_augmentation(flip_ud_prob=1.0)), images[:, ::-1], atol=1e-5)


@pytest.mark.slow
def test_augment_blur_keeps_a_constant_slice_and_views_differ():
  images = np.full((2, 8, 8, 1), 0.7, np.float32)
  blurred = encoder.augment(jax.random.key(1), images, _no_augmentation(blur_prob=1.0, blur_sigma_max=1.0))
  np.testing.assert_allclose(blurred, images, atol=1e-5)
  noisy = np.random.default_rng(1).standard_normal((2, 8, 8, 1)).astype(np.float32)
  views = encoder.augment(jax.random.key(2), noisy, encoder.default_config().augment)
  assert views.shape == noisy.shape
  assert np.abs(np.asarray(views) - noisy).mean() > 0.05


# ----------------------------------------------------------------------------------------------------------------
# The real encoder on synthetic volumes (trained once for the module).


@pytest.fixture(scope="module")
def trained():
  rng = np.random.default_rng(0)
  volumes = [_volume_kinds(rng) for _ in range(30)]
  images = [_volume_images(kinds, rng) for kinds in volumes]
  config = _tiny_config()
  params, info = encoder.train(np.concatenate(images[:10]), config, seed=0)
  return config, params, info, volumes, images


@pytest.mark.slow
def test_encoder_loss_decreases(trained):
  config, _, info, _, _ = trained
  losses = np.asarray(info["losses"])
  assert losses.shape == (config.steps,)
  # Chance level is log(2B - 1) = log(63) = 4.14; learning to tell the 4 kinds apart alone gives about log(16).
  assert losses[0] > 3.9
  assert losses[-10:].mean() < losses[:10].mean() - 0.8
  assert info["train_seconds"] > 0


@pytest.mark.slow
def test_encoder_embeddings_are_normalised_and_pick_every_kind(trained):
  config, params, _, volumes, images = trained
  covered = {"ual": 0, "random": 0}
  for i, (kinds, volume) in enumerate(zip(volumes[10:], images[10:])):
    embeddings = encoder.embed(params, volume, config, batch_size=8)
    assert embeddings.shape == (20, config.embedding_dim) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    covered["ual"] += _covers_all_kinds(ual.select(20, KINDS, np.random.default_rng(i), embeddings=embeddings), kinds)
    covered["random"] += _covers_all_kinds(_random_select(20, KINDS, np.random.default_rng(i)), kinds)
  assert covered["ual"] >= 18, covered
  assert covered["ual"] > covered["random"] + 10, covered


@pytest.mark.slow
def test_embed_batching_does_not_change_embeddings(trained):
  config, params, _, _, images = trained
  np.testing.assert_allclose(encoder.embed(params, images[0], config, batch_size=7),
                             encoder.embed(params, images[0], config, batch_size=20), atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Embedding cache.


@pytest.mark.slow
def test_slice_embeddings_cache(tmp_path, monkeypatch):
  rng = np.random.default_rng(3)
  images = {f"case_{i}": _volume_images(_volume_kinds(rng)[:5 + i], rng) for i in range(3)}
  config = _tiny_config(steps=3, batch_size=8)
  # `--check`'s estimate of a missing entry trains on the slices (so it costs more than nothing) and writes nothing.
  assert encoder.estimate_seconds(images, config, seed=0, cache_dir=tmp_path) > 0
  assert not list(tmp_path.iterdir())

  first, first_info = encoder.slice_embeddings(images, config, seed=0, cache_dir=tmp_path)
  info = first_info
  assert info["cache_hit"] is False
  assert {c: e.shape for c, e in first.items()} == {"case_0": (5, 16), "case_1": (6, 16), "case_2": (7, 16)}
  # The saved params reproduce the cached embeddings.
  checkpointer = ocp.StandardCheckpointer()
  params = checkpointer.restore(pathlib.Path(info["cache_path"]).resolve() / "params")
  checkpointer.close()
  np.testing.assert_allclose(encoder.embed(params, images["case_1"], config), first["case_1"], atol=1e-5)

  real_train = encoder.train

  def no_training(*args, **kwargs):
    raise AssertionError("the cache should have been used")

  monkeypatch.setattr(encoder, "train", no_training)
  assert encoder.estimate_seconds(images, config, seed=0, cache_dir=tmp_path) == 0.0  # in the cache: nothing to do
  second, info = encoder.slice_embeddings(dict(reversed(images.items())), config, seed=0, cache_dir=tmp_path)
  assert info["cache_hit"] and info["train_seconds"] == first_info["train_seconds"]
  for case_id in images:
    np.testing.assert_array_equal(second[case_id], first[case_id])

  calls = []

  def counting_train(*args, **kwargs):
    calls.append(1)
    return real_train(*args, **kwargs)

  monkeypatch.setattr(encoder, "train", counting_train)
  _, info = encoder.slice_embeddings(images, _tiny_config(steps=3, batch_size=8, temperature=0.3), seed=0,
                                     cache_dir=tmp_path)
  assert info["cache_hit"] is False and len(calls) == 1
  changed = dict(images, case_0=images["case_0"] + 1e-3)
  _, info = encoder.slice_embeddings(changed, config, seed=0, cache_dir=tmp_path)
  assert info["cache_hit"] is False and len(calls) == 2
  _, info = encoder.slice_embeddings(images, config, seed=1, cache_dir=tmp_path)
  assert info["cache_hit"] is False and len(calls) == 3
  assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 4
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # No temporary folders left behind.


def test_slice_embeddings_rejects_mismatched_slices(tmp_path):
  images = {"a": np.zeros((3, 8, 8, 1), np.float32), "b": np.zeros((3, 8, 9, 1), np.float32)}
  with pytest.raises(InputError, match="^b: "):
    encoder.slice_embeddings(images, _tiny_config(), seed=0, cache_dir=tmp_path)
  with pytest.raises(InputError, match="^c: "):
    encoder.slice_embeddings({"c": np.zeros((8, 8, 1), np.float32)}, _tiny_config(), seed=0, cache_dir=tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# Selection.


def _options(method, **overrides):
  options = ual.default_options()
  options.method = method
  options.update(overrides)
  return options


@pytest.mark.parametrize("method", ual.METHODS)
def test_ual_covers_every_kind_more_often_than_random(method):
  covered = {"ual": 0, "random": 0}
  for seed in range(50):
    rng = np.random.default_rng(seed)
    kinds = _volume_kinds(rng)
    # A kind's one-hot code plus noise, padded with 4 noise-only features.
    embeddings = np.concatenate([np.eye(KINDS)[kinds], np.zeros((len(kinds), 4))], axis=1)
    embeddings += 0.15 * rng.standard_normal(embeddings.shape)
    picked = ual.select(len(kinds), KINDS, np.random.default_rng(seed), embeddings=embeddings,
                        options=_options(method))
    covered["ual"] += _covers_all_kinds(picked, kinds)
    covered["random"] += _covers_all_kinds(_random_select(len(kinds), KINDS, np.random.default_rng(seed)), kinds)
  # Random covers all four runs with probability 2 * 9 * 3 * 6 / C(20, 4) = 6.7%.
  assert covered["ual"] >= 48, covered
  assert covered["random"] <= 10, covered


POINTS = np.asarray([[0.0], [1.0], [2.0], [10.0], [11.0], [13.0]])


@pytest.mark.parametrize("method,rho,options,expected", [
    # Centroids 1 and 11.33; the nearest slices are 1 and 11.
    ("kmeans", 2, {}, [1, 4]),
    # Mean 6.17 is nearest 10; then 0 is farthest; then 13 (3 from 10) beats 2 (2 from 0).
    ("kcenter", 1, {}, [3]),
    ("kcenter", 2, {}, [0, 3]),
    ("kcenter", 3, {}, [0, 3, 5]),
    # Mean distance to the 2 nearest in the cluster: {1.5, 1, 1.5} and {2, 1.5, 2.5}.
    ("typiclust", 2, {}, [1, 4]),
    # With 1 neighbour: {1, 1, 1} (tie: lowest index) and {1, 1, 2}.
    ("typiclust", 2, {"typiclust_neighbors": 1}, [0, 3]),
])
def test_select_hand_computed(method, rho, options, expected):
  picked = ual.select(6, rho, np.random.default_rng(0), embeddings=POINTS, options=_options(method, **options))
  assert picked.tolist() == expected


@pytest.mark.parametrize("method", ual.METHODS)
@pytest.mark.parametrize("rho", [1, 3, 7, 12])
@pytest.mark.parametrize("embedding_kind", ["random", "identical", "two_values"])
def test_select_contract(method, rho, embedding_kind):
  rng = np.random.default_rng(7)
  embeddings = {
      "random": rng.standard_normal((12, 5)),
      "identical": np.ones((12, 5)),
      "two_values": np.repeat(np.eye(5)[:2], 6, axis=0),
  }[embedding_kind]
  picked = ual.select(12, rho, np.random.default_rng(42), embeddings=embeddings, options=_options(method))
  assert picked.dtype == np.int64 and picked.shape == (rho,)
  assert np.array_equal(picked, np.unique(picked))  # Sorted and distinct.
  assert picked.min() >= 0 and picked.max() < 12
  again = ual.select(12, rho, np.random.default_rng(42), embeddings=embeddings, options=_options(method))
  np.testing.assert_array_equal(picked, again)


def test_select_defaults_and_all_slices():
  assert ual.NEEDS_EMBEDDINGS is True
  embeddings = np.random.default_rng(0).standard_normal((5, 3))
  np.testing.assert_array_equal(ual.select(5, 5, np.random.default_rng(0), embeddings=embeddings), np.arange(5))
  np.testing.assert_array_equal(ual.select(6, 2, np.random.default_rng(0), embeddings=POINTS),
                                ual.select(6, 2, np.random.default_rng(0), embeddings=POINTS,
                                           options=_options("kmeans")))


def test_kmeans_seeds_differ_but_repeat():
  x = np.random.default_rng(0).standard_normal((40, 3))
  runs = [ual.kmeans(x, 5, np.random.default_rng(seed), inits=1)[1] for seed in (0, 0, 1, 2, 3)]
  np.testing.assert_array_equal(runs[0], runs[1])
  assert all(np.bincount(labels, minlength=5).min() >= 1 for labels in runs)


@pytest.mark.parametrize("kwargs,where", [
    ({"num_slices": 5, "rho": 0}, "rho"),
    ({"num_slices": 5, "rho": 6}, "rho"),
    ({"num_slices": 5, "rho": 2, "embeddings": None}, "embeddings"),
    ({"num_slices": 5, "rho": 2, "embeddings": np.zeros((4, 3))}, "embeddings"),
    ({"num_slices": 5, "rho": 2, "embeddings": np.full((5, 3), np.nan)}, "embeddings"),
    ({"num_slices": 5, "rho": 2, "options": {"method": "nearest"}}, "ual.method"),
])
def test_select_rejects_bad_input(kwargs, where):
  kwargs = {"embeddings": np.zeros((5, 3)), **kwargs}
  with pytest.raises(InputError, match=f"^{where}: "):
    ual.select(rng=np.random.default_rng(0), **kwargs)


def test_select_volumes():
  groups = {"a": [0.0, 0.0], "b": [0.1, 0.0], "c": [0.0, 0.2], "d": [5.0, 5.0], "e": [5.2, 5.0], "g": [5.1, 5.1],
            "f": [9.0, 0.0]}
  # Three clusters; nearest their centroids: (0.03, 0.07) -> a (0.07 away), (5.1, 5.03) -> g (0.07), (9, 0) -> f.
  picked = ual.select_volumes(groups, 3, np.random.default_rng(0))
  assert picked == ["a", "f", "g"]
  assert picked == ual.select_volumes(groups, 3, np.random.default_rng(1))
  assert ual.select_volumes(groups, 7, np.random.default_rng(0)) == sorted(groups)
  with pytest.raises(InputError, match="^s: "):
    ual.select_volumes(groups, 0, np.random.default_rng(0))
  with pytest.raises(InputError, match="^volume_embeddings: "):
    ual.select_volumes({"a": [0.0], "b": [0.0, 1.0]}, 1, np.random.default_rng(0))
