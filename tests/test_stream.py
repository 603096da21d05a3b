"""The streamed 2D input path: the slice store, the same batches as the bank path, the automatic choice, and a whole
run that gives the same rows on either path."""

import dataclasses

import jax
import numpy as np
import pytest

from slicejax.config import base
from slicejax.data import load as data_lib
from slicejax.data import mapped
from slicejax.data import padding
from slicejax.report import results
from slicejax.study import grid as study
from slicejax.training.inputs import sampler
from slicejax.training.inputs import stream
from slicejax.training.inputs import two_d
from slicejax.training import train


def _volume(case_id, image, label):
  return data_lib.Volume(case_id, image.astype(np.float16), label.astype(np.uint8), (2.0, 1.0, 1.0), np.eye(4), 2)


def _pool():
  """Two volumes: one smaller than the (8, 8) plane (padded), one larger (centre-cropped)."""
  rng = np.random.default_rng(0)
  label_a = np.zeros((5, 6, 8), np.uint8)
  label_a[:, 1:4, 2:6] = 1
  label_b = np.zeros((7, 10, 8), np.uint8)
  for d in range(7):
    label_b[d, 3:3 + d // 2 + 2, 2:6] = 1 + d % 2
  return [_volume("a", rng.normal(size=(5, 6, 8, 2)), label_a), _volume("b", rng.normal(size=(7, 10, 8, 2)), label_b)]


def test_store_holds_every_slice_fitted_and_is_written_once(tmp_path):
  pool = _pool()
  store = stream.store_for(tmp_path, pool, (8, 8))
  folder = store.folder
  assert folder.parent == tmp_path / "slices" and len(store) == 12
  images = np.load(folder / "images.npy", mmap_mode="r")
  labels = np.load(folder / "labels.npy", mmap_mode="r")
  assert images.dtype == np.float16 and images.shape == (12, 8, 8, 2) and labels.dtype == np.uint8
  np.testing.assert_array_equal(images[:5], padding.fit_to_shape(pool[0].image, (8, 8))[0])
  np.testing.assert_array_equal(labels[5:], padding.fit_to_shape(pool[1].label, (8, 8))[0])
  np.testing.assert_array_equal(np.load(folder / "extents.npy"), [[6, 8]] * 5 + [[8, 8]] * 7)
  np.testing.assert_array_equal(store.rows["b"], np.arange(5, 12))
  # Positioned reads give the rows in the order asked, repeats included.
  np.testing.assert_array_equal(store.images.read([11, 0, 11]), np.asarray(images)[[11, 0, 11]])
  # The same volumes find the same store without writing it again; other content gets another one.
  written = (folder / "images.npy").stat().st_mtime_ns
  assert stream.store_for(tmp_path, pool, (8, 8)).folder == folder
  assert (folder / "images.npy").stat().st_mtime_ns == written
  changed = [pool[0], _volume("b", pool[1].image + 1, pool[1].label)]
  assert stream.store_for(tmp_path, changed, (8, 8)).folder != folder


def test_volume_rows_are_the_rows_of_the_slice_store(tmp_path):
  """Rows read from the volumes themselves, in memory or mapped from their cache entries, are the store's rows."""
  pool = _pool()
  store = stream.store_for(tmp_path, pool, (8, 8))
  np.savez(tmp_path / "a.npz", image=pool[0].image, label=pool[0].label)
  np.savez(tmp_path / "b.npz", image=pool[1].image, label=pool[1].label)
  on_disk = [dataclasses.replace(v, image=arrays["image"], label=arrays["label"]) for v, arrays in
             zip(pool, (mapped.open_npz(tmp_path / "a.npz"), mapped.open_npz(tmp_path / "b.npz")))]
  rows = [11, 0, 4, 5, 11, 7]
  for volumes in (pool, on_disk):
    source = stream.VolumeRows(volumes, (8, 8), tmp_path)
    assert len(source) == len(store) == 12 and source.shape == store.shape
    assert {k: v.tolist() for k, v in source.rows.items()} == {k: v.tolist() for k, v in store.rows.items()}
    for got, want in zip(source.read_images(rows), store.read_images(rows)):
      assert got.dtype == want.dtype and got.shape == want.shape
      np.testing.assert_array_equal(got, want)
    got, want = source.read_labels(rows), store.read_labels(rows)
    assert got.dtype == want.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    with pytest.raises(IndexError):
      source.read_labels([12])
  assert isinstance(on_disk[1].image, mapped.MappedArray)


@pytest.mark.parametrize("source_name", ["volumes", "store"])
@pytest.mark.slow
def test_streamed_batches_equal_bank_batches(tmp_path, source_name):
  """Every model's batch at every step, interpolated slices included, is the same on both paths, also when the stream
  starts at a later step (a resume)."""
  pool = _pool()
  config = base()
  config.interpolation.weight = 0.5
  config.train.batch_size = 6
  points = [study.Point(2, 3, 2, 1, "random", False, 0), study.Point(2, 2, 1, 2, "fixed", True, 1),
            study.Point(2, 0, 0, 0, "random", False, 2)]
  plans = [{"a": [1], "b": [0, 6]}, {"b": [1, 5]}, {}]
  bank, bank_entries, bank_quality = two_d.training_data(config, points, plans, pool, 3, (8, 8))
  rows = (stream.VolumeRows(pool, (8, 8), tmp_path) if source_name == "volumes" else
          stream.store_for(tmp_path, pool, (8, 8)))
  source, entries, quality = stream.training_data(config, points, plans, pool, 3, rows)
  assert quality.keys() == bank_quality.keys() == {1}
  np.testing.assert_array_equal(entries["count"], [3, 5, 0])  # b's slices 2, 3, 4 lie between 1 and 5
  np.testing.assert_array_equal(entries["label_row"][1], [6, 10, 12, 13, 14])
  rngs = np.stack([jax.random.key_data(jax.random.key(s)) for s in (3, 4, 5)])
  bank = jax.tree.map(jax.numpy.asarray, bank)
  sample = jax.jit(lambda key, e: sampler.sample(key, bank, e, 6))
  take = jax.jit(stream.batch_taker(config))
  with stream.Batches(source, entries, rngs, 6, first_step=2, last_step=40, put=lambda batch: batch) as batches:
    for step in range(2, 40):
      batch = next(batches)
      for m in range(3):
        k_sample, _ = jax.random.split(jax.random.fold_in(rngs[m], step))
        expected = sample(k_sample, jax.tree.map(lambda e: e[m], bank_entries))
        got = take(None, None, jax.tree.map(lambda x: x[m], batch))
        if m < 2:
          for a, b in zip(got, expected):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        else:  # a model without entries trains on nothing on either path (its images are whichever row 0 holds)
          assert not np.asarray(got[2]).any() and not np.asarray(expected[2]).any()
  # The draws cover the interpolated entries (weight 0.5) and the padding outside the smaller volume (weight 0).
  _, _, weights = stream.draw_rows(rngs[1:2], np.arange(40), {k: v[1:2] for k, v in entries.items()}, 6,
                                   stream.row_bank(len(source.store), source.num_labels))
  assert set(np.unique(weights)) == {0.5, 1.0}


def test_auto_streams_when_the_bank_exceeds_the_budget():
  config = base()
  sizes = {"images": 1000, "labels": 1200, "entries": 100}
  # float32 images with 2 channels: 1000 * 64 * 64 * 8 bytes, uint8 labels: 1200 * 64 * 64 bytes.
  assert stream.bank_bytes(config, sizes, (64, 64), 2) == 1000 * 4096 * 8 + 1200 * 4096 == 37_683_200
  config.data.memory_budget_gb = 37_683_200 / 2**30
  assert stream.choose(config, 2, sizes, (64, 64), 2) == "bank"
  config.data.memory_budget_gb = 37_683_199 / 2**30
  assert stream.choose(config, 2, sizes, (64, 64), 2) == "stream"
  assert stream.choose(config, 3, sizes, (64, 64), 2) == "bank"  # 3D groups always use the bank
  config.data.pipeline = "bank"
  assert stream.choose(config, 2, sizes, (64, 64), 2) == "bank"
  config.data.update(pipeline="stream", memory_budget_gb=100.0)
  assert stream.choose(config, 2, sizes, (64, 64), 2) == "stream"


@pytest.mark.parametrize("strategy,source", [("loop", "volumes"), ("vmap", "store")])
@pytest.mark.slow
def test_a_streamed_run_gives_the_rows_of_a_bank_run(tmp_path, strategy, source):
  from slicejax.config import load
  rows = {}
  for pipeline in ("bank", "stream"):
    config = load("configs/demo.py:tiny")
    with config.unlocked():
      config.data.update(pipeline=pipeline, stream_source=source, cache_dir=str(tmp_path / "cache"))
      config.model_axis.strategy = strategy
      config.eval.surface_metrics = False
    rows[pipeline] = [results.comparable(r) for r in train.train_and_evaluate(config, tmp_path / pipeline)]
  assert len(rows["stream"]) == 5 and rows["stream"] == rows["bank"]
  # The store is written only when asked for; the volumes are read from their cache entries otherwise.
  assert len(list((tmp_path / "cache" / "slices").glob("*"))) == (source == "store")


def test_tfds_and_grain_batches_equal_bank_batches(tmp_path):
  """The array_record dataset built from an MSD folder, read by grain, gives the bank's batches."""
  pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("grain")
  from slicejax.data import phantom
  from slicejax.training.inputs import tfds as tfds_builder
  root = phantom.cached_phantom(tmp_path / "cache", num_cases=3, shape=(16, 16, 8), num_channels=1, seed=0)
  pool = list(data_lib.load_msd(root).volumes)
  config = base()
  config.train.batch_size = 4
  store = tfds_builder.store_for(config, root, tmp_path / "tfds", (8, 8), 1)
  assert len(store) == sum(v.depth for v in pool)
  np.testing.assert_array_equal(store.read_labels(store.rows[pool[1].case_id]),
                                padding.fit_to_shape(pool[1].label, (8, 8))[0])
  points = [study.Point(2, 3, 2, 1, "random", False, 0)]
  plans = [{pool[0].case_id: [1, 4], pool[2].case_id: [3]}]
  bank, bank_entries, _ = two_d.training_data(config, points, plans, pool, 3, (8, 8))
  source, entries, _ = stream.training_data(config, points, plans, pool, 3, store)
  rngs = np.stack([jax.random.key_data(jax.random.key(7))])
  bank = jax.tree.map(jax.numpy.asarray, bank)
  take = jax.jit(stream.batch_taker(config))
  with stream.Batches(source, entries, rngs, 4, first_step=0, last_step=5, put=lambda batch: batch) as batches:
    for step in range(5):
      k_sample, _ = jax.random.split(jax.random.fold_in(rngs[0], step))
      expected = sampler.sample(k_sample, bank, jax.tree.map(lambda e: e[0], bank_entries), 4)
      got = take(None, None, jax.tree.map(lambda x: x[0], next(batches)))
      for a, b in zip(got, expected):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_run_streamed_from_tfds_gives_the_rows_of_a_bank_run(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("grain")
  from slicejax.config import load
  rows = {}
  for pipeline, source in (("bank", "store"), ("stream", "tfds")):
    config = load("configs/demo.py:tiny")
    with config.unlocked():
      config.data.update(pipeline=pipeline, stream_source=source, cache_dir=str(tmp_path / "cache"))
      config.eval.surface_metrics = False
    rows[pipeline] = [results.comparable(r) for r in train.train_and_evaluate(config, tmp_path / pipeline)]
  assert len(rows["stream"]) == 5 and rows["stream"] == rows["bank"]
  assert (tmp_path / "cache" / "tfds" / "slice_dataset").is_dir()


@pytest.mark.slow
def test_the_group_size_estimate_compiles_the_stream_step_on_the_streams_own_batch(tmp_path):
  """`train.one_model_step` on the stream path: no bank, and a batch of the shapes and types the stream delivers, so
  that the program it measures is the one the run executes."""
  pool = _pool()
  source = stream.Source(stream.VolumeRows(pool, (8, 8), tmp_path))
  delivered = source.read([0, 11, 5], [0, 11, 5], [1.0, 1.0, 0.0])
  empty = stream.empty_batch(3, (8, 8), 2)
  assert {k: (v.shape, v.dtype) for k, v in delivered.items()} == {k: (v.shape, v.dtype) for k, v in empty.items()}

  from slicejax.config import load
  config = load("configs/demo.py:tiny")
  with config.unlocked():
    config.data.update(pipeline="stream", cache_dir=str(tmp_path / "cache"))
  dataset, splits, _, points, plans = train.read_inputs(config)
  step = train.one_model_step(config, 2, points, plans, splits, dataset)
  batch_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(step["per_model"]))
  assert step["pipeline"] == "stream" and step["bank_bytes"] == 0 and step["shared"]["bank"] == {}
  assert step["per_model"]["images"].shape == (config.train.batch_size,) + step["shape"] + (1,)
  assert step["model_bytes"] >= (config.data.prefetch + 1) * batch_bytes
  state, _ = step["compiled"](step["state"], step["shared"], step["per_model"])
  assert int(state["step"]) == 1
