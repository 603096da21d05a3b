"""Evaluation on the device: confusion counts of all models at once, and the 2D and 3D predictors scored by them equal
to predicting label maps and scoring them in numpy."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from slicejax.data import load as data
from slicejax.data import padding
from slicejax.evaluation import evaluate
from slicejax.evaluation import metrics
from slicejax.evaluation import sliding_window
from slicejax.training.inputs import three_d
from slicejax.training.inputs import two_d
from slicejax.training import parallel

K = 3


def _volume(case_id, image, label):
  return data.Volume(case_id=case_id, image=image, label=label, spacing=(1.0, 1.0, 1.0), affine=np.eye(4),
                     slicing_axis=2)


def test_confusion_counts_hand_computed():
  truth = np.array([[0, 1, 1, 2], [0, 0, 1, 2]], np.uint8)
  valid = np.array([[True, True, True, True], [True, True, True, False]])
  labels = np.array([[[0, 1, 0, 2], [0, 1, 1, 2]],
                     [[2, 2, 2, 2], [2, 2, 2, 2]]], np.uint8)
  counts = evaluate.confusion_counts(labels, truth, valid, K)
  assert counts.shape == (2, K, 3) and counts.dtype == jnp.int32
  # The last column is left out. Model 0: class 0 |P&T| 2 |P| 3 |T| 3; class 1: 2, 3, 3; class 2: 1, 1, 1.
  # Model 1 predicts 2 everywhere: class 2 |P| 7, |P&T| 1.
  np.testing.assert_array_equal(counts, [[[2, 3, 3], [2, 3, 3], [1, 1, 1]],
                                         [[0, 0, 3], [0, 0, 3], [1, 7, 1]]])
  # Logits give the counts of their argmax.
  logits = jax.nn.one_hot(labels, K) * 2.0 - 1.0
  np.testing.assert_array_equal(evaluate.confusion_counts(logits, truth, valid, K), counts)
  np.testing.assert_array_equal(counts[0], metrics.confusion_counts(labels[0][valid], truth[valid], K))


def test_score_equals_numpy_dice():
  rng = np.random.default_rng(0)
  volumes = [_volume(f"v{i}", np.zeros(shape + (1,), np.float16), rng.integers(0, K, shape).astype(np.uint8))
             for i, shape in enumerate([(2, 3, 4), (3, 2, 2), (1, 4, 4)])]
  # Model 2 predicts background only: classes absent from its prediction and, on volume 1, from the truth too.
  volumes[1].label[:] = np.minimum(volumes[1].label, 1)
  labels = [np.stack([rng.integers(0, K, v.label.shape), (v.label + 1) % K, np.zeros(v.label.shape, int)])
            for v in volumes]
  counts = [np.stack([metrics.confusion_counts(m, v.label, K) for m in per_model])
            for per_model, v in zip(labels, volumes)]
  out = evaluate.score(iter(counts), volumes, K)
  dice = np.array([[metrics.dice_per_class(labels[v][m], volumes[v].label, K) for v in range(3)] for m in range(3)])
  np.testing.assert_array_equal(out["dice"], dice)
  assert np.isnan(out["dice"][2, 1, 1]) and out["dice"][2, 1, 0] == 0.0
  for key, value in metrics.summarise(dice).items():
    np.testing.assert_array_equal(out[key], value)
  assert out["volumes"] == 3
  with pytest.raises(ValueError, match="counts for each of 3 volumes"):
    evaluate.score(counts[:2], volumes, K)


class _Model:
  """A stand-in U-Net: per voxel a linear map plus one of the mean of the whole input, so that what a slice or a
  window holds (padding, context) changes every voxel's logits; a bias makes an all-zero input predict class 2.

  Params `{"w": [C, K], "v": [C, K], "b": [K]}`; `traces` counts the traces of `apply` (its compilations).
  """

  num_classes = K

  def __init__(self):
    self.traces = 0

  def apply(self, variables, x):
    self.traces += 1
    p = variables["params"]
    spatial = tuple(range(1, x.ndim - 1))
    return x @ p["w"] + jnp.mean(x, axis=spatial, keepdims=True) @ p["v"] + p["b"]

  def numpy_apply(self, p, x):
    """`apply` of one model on one example `[*spatial, C]`, in float64."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    mean = x.reshape(-1, x.shape[-1]).mean(axis=0)
    return x @ p["w"] + mean @ p["v"] + p["b"]


def _params(num_models, channels, seed):
  rng = np.random.default_rng(seed)
  return {"w": rng.normal(size=(num_models, channels, K)).astype(np.float32),
          "v": rng.normal(size=(num_models, channels, K)).astype(np.float32),
          "b": np.tile(np.array([0.0, 0.0, 0.5], np.float32), (num_models, 1))}


def _volumes(shapes, channels, seed):
  rng = np.random.default_rng(seed)
  return [_volume(f"case_{i}", rng.normal(size=s + (channels,)).astype(np.float16),
                  rng.integers(0, K, s).astype(np.uint8)) for i, s in enumerate(shapes)]


def _config(**eval_sizes):
  return ml_collections.ConfigDict({"eval": {"batch_size": eval_sizes.get("slices", 4)},
                                    "three_d": {"overlap": 0.5, "eval_batch_size": eval_sizes.get("windows", 3)}})


@pytest.mark.parametrize("strategy", ["vmap", "loop", "mesh"])
@pytest.mark.slow
def test_2d_counts_equal_numpy_path_with_padding_and_cropping(strategy):
  # In-plane shape (6, 6): case_0 is padded along both axes, case_1 centre-cropped along W (offset 2) and padded
  # along H, case_2 cropped along both. Depths 3 + 5 + 2 = 10 slices in chunks of 4 that straddle the volumes.
  shape, num_models = (6, 6), 3
  volumes = _volumes([(3, 4, 5), (5, 3, 10), (2, 9, 7)], channels=2, seed=1)
  params = _params(num_models, 2, seed=2)
  model = _Model()
  axis = parallel.ModelAxis(strategy, num_models, chunk=2)
  counts = list(two_d.predictor(_config(), model, axis)(axis.from_stacked(params), volumes, shape))

  # Today's path on the host: predict the fitted slices, crop the label map back to the volume's grid, count.
  reference, fitted_labels = [], []
  for volume in volumes:
    images, _, offsets = padding.fit_to_shape(volume.image.astype(np.float32), shape)
    labels = np.stack([[model.numpy_apply({k: v[m] for k, v in params.items()}, s).argmax(-1) for s in images]
                       for m in range(num_models)])
    on_grid = [padding.unfit(labels[m], volume.label.shape[1:], offsets) for m in range(num_models)]
    reference.append(np.stack([metrics.confusion_counts(l, volume.label, K) for l in on_grid]))
    fitted_labels.append(labels)
  # The padding of case_0 (rows 4-5, column 5) is predicted foreground, which must not count.
  assert np.any(fitted_labels[0][:, :, 4:] > 0) and np.any(fitted_labels[0][:, :, :, 5] > 0)
  for got, want in zip(counts, reference):
    assert got.shape == (num_models, K, 3)
    np.testing.assert_array_equal(got, want)
  out = evaluate.score(counts, volumes, K)
  dice = np.array([[metrics.dice_from_counts(r[m]) for r in reference] for m in range(num_models)])
  np.testing.assert_array_equal(out["dice"], dice)
  assert np.all(np.isfinite(out["dice"]))


def _numpy_sliding_window(model, p, image, patch, overlap):
  """The volume's logits, blended window by window in float64 (`slicejax.evaluation.sliding_window`'s rule)."""
  gaussian = sliding_window.gaussian_weights(patch).astype(np.float64)
  total, norm = np.zeros(image.shape[:3] + (K,)), np.zeros(image.shape[:3])
  per_axis = [sliding_window.window_starts(s, q, overlap) for s, q in zip(image.shape[:3], patch)]
  for d, h, w in itertools.product(*per_axis):
    where = (slice(d, d + patch[0]), slice(h, h + patch[1]), slice(w, w + patch[2]))
    total[where] += gaussian[..., None] * model.numpy_apply(p, image[where].astype(np.float64))
    norm[where] += gaussian
  return total / norm[..., None]


@pytest.mark.slow
def test_3d_counts_equal_numpy_path_and_compile_once():
  # Patch (4, 4, 4); volumes of five sizes, two of them smaller than the patch along an axis. All are padded to
  # bucket_shape of the largest extent (9, 10, 6) -> (10, 10, 6).
  patch, num_models = (4, 4, 4), 2
  shapes = [(9, 5, 4), (4, 10, 6), (2, 7, 5), (6, 6, 3), (5, 4, 4)]
  volumes = _volumes(shapes, channels=1, seed=3)
  params = _params(num_models, 1, seed=4)
  model = _Model()
  axis = parallel.ModelAxis("vmap", num_models)
  programs = (sliding_window._cut_windows, sliding_window._add_gaussians, sliding_window._accumulate,
              evaluate.confusion_counts)
  before = [f._cache_size() for f in programs]
  counts = list(three_d.predictor(_config(windows=3), model, axis)(axis.from_stacked(params), volumes, patch))
  # One trace of the network for every window batch, one compilation of each program for every volume.
  assert model.traces == 1
  assert all(f._cache_size() - b <= 1 for f, b in zip(programs, before))

  for volume, got in zip(volumes, counts):
    padded = padding.pad_volume(volume.image.astype(np.float32), [max(n, q) for n, q in zip(volume.label.shape, patch)])
    depth, height, width = volume.label.shape
    want = []
    for m in range(num_models):
      logits = _numpy_sliding_window(model, {k: v[m] for k, v in params.items()}, padded, patch, 0.5)
      want.append(metrics.confusion_counts(logits.argmax(-1)[:depth, :height, :width], volume.label, K))
    np.testing.assert_array_equal(got, want)
  out = evaluate.score(counts, volumes, K)
  np.testing.assert_array_equal(
      out["dice"], np.stack([metrics.dice_from_counts(c) for c in counts], axis=1))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.slow
def test_segmenter_labels_give_the_predictors_counts(dims):
  # The test split is scored from label maps on the volumes' own grids; their counts must be the device counts.
  num_models = 2
  if dims == 2:
    volumes, shape, lib = _volumes([(3, 4, 5), (5, 3, 10), (2, 9, 7)], channels=2, seed=1), (6, 6), two_d
  else:
    volumes, shape, lib = _volumes([(9, 5, 4), (2, 7, 5)], channels=2, seed=3), (4, 4, 4), three_d
  params = _params(num_models, 2, seed=2)
  axis = parallel.ModelAxis("vmap", num_models)
  model = _Model()
  counts = list(lib.predictor(_config(), model, axis)(axis.from_stacked(params), volumes, shape))
  labels = list(lib.segmenter(_config(), model, axis)(axis.from_stacked(params), volumes, shape))
  for volume, label, want in zip(volumes, labels, counts):
    assert label.shape == (num_models,) + volume.label.shape and label.dtype == np.uint8
    np.testing.assert_array_equal([metrics.confusion_counts(m, volume.label, K) for m in label], want)

  scored = evaluate.score_labels(labels, volumes, K, tolerance_mm=1.0)
  by_counts = evaluate.score(counts, volumes, K)
  np.testing.assert_array_equal(scored["dice"], by_counts["dice"])
  np.testing.assert_array_equal(scored["dice_mean"], by_counts["dice_mean"])
  assert scored["cases"] == [v.case_id for v in volumes]
  np.testing.assert_array_equal(scored["class_volumes"],
                                [sum(np.any(v.label == k) for v in volumes) for k in range(1, K)])
  for v, (volume, label) in enumerate(zip(volumes, labels)):
    for m in range(num_models):
      want = metrics.surface_metrics(label[m], volume.label, K, volume.spacing, 1.0)
      np.testing.assert_array_equal(scored["hd95"][m, v], want["hd95"])
      np.testing.assert_array_equal(scored["nsd"][m, v], want["nsd"])
  np.testing.assert_allclose(scored["hd95_mean"], metrics.summarise(scored["hd95"])["dice_mean"])


def test_device_counts_leave_out_ignore_label_voxels():
  truth = np.array([[0, 1, 1], [3, 3, 2]], np.uint8)  # 3 = the ignore label of K = 3 classes
  prediction = np.array([[[0, 1, 0], [1, 2, 2]]], np.uint8)
  got = evaluate.confusion_counts(prediction, truth, np.ones_like(truth, bool), num_classes=K)
  np.testing.assert_array_equal(got[0], metrics.confusion_counts(prediction[0], truth, K))
  np.testing.assert_array_equal(got[0], [[1, 2, 1], [1, 1, 2], [1, 1, 1]])


def test_volume_chunks_hold_at_most_the_byte_limit_and_a_larger_volume_alone():
  volumes = _volumes([(3, 4, 5), (5, 3, 10), (2, 9, 7), (9, 2, 2)], channels=2, seed=0)
  # (6, 6) slices of 2 float32 channels: 288 bytes each; depths 3, 5, 2, 9.
  chunks = list(evaluate.volume_chunks(volumes, (6, 6), max_bytes=288 * 8))
  assert [[v.case_id for v in c] for c in chunks] == [["case_0", "case_1"], ["case_2"], ["case_3"]]
  assert [len(c) for c in evaluate.volume_chunks(volumes, (6, 6), max_bytes=288 * 10)] == [3, 1]
  assert list(evaluate.volume_chunks([], (6, 6))) == []


@pytest.mark.parametrize("chunk_bytes", [1, 288 * 8])
def test_2d_evaluation_in_chunks_equals_one_pass(monkeypatch, chunk_bytes):
  # Chunks of one volume each (1 byte) or of several: the same label maps and counts as all volumes at once.
  volumes = _volumes([(3, 4, 5), (5, 3, 10), (2, 9, 7)], channels=2, seed=1)
  params, model = _params(2, 2, seed=2), _Model()
  axis = parallel.ModelAxis("vmap", 2)
  run = lambda lib_fn: list(lib_fn(_config(), model, axis)(axis.from_stacked(params), volumes, (6, 6)))
  whole = run(two_d.segmenter), run(two_d.predictor)
  monkeypatch.setattr(evaluate, "CHUNK_BYTES", chunk_bytes)
  for got, want in zip((run(two_d.segmenter), run(two_d.predictor)), whole):
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
      np.testing.assert_array_equal(g, w)
