"""Arrays read from the disk on access (`slicejax.data.mapped`) and volumes loaded that way: the same values as numpy's
own reads, no mapping left behind, and the trainer's choice of them."""

import pathlib
import zipfile

import numpy as np
import pytest

from slicejax import config as config_lib
from slicejax.data import index as index_lib
from slicejax.data import load as data_lib
from slicejax.data import mapped
from slicejax.data import padding
from slicejax.data import phantom
from slicejax.training import train


def _mapped_files() -> set:
  """The files this process has mapped now (/proc/self/maps)."""
  return {line.split(None, 5)[5].strip() for line in pathlib.Path("/proc/self/maps").read_text().splitlines()
          if len(line.split(None, 5)) == 6}


def test_npy_and_npz_members_read_as_numpy_reads_them(tmp_path):
  rng = np.random.default_rng(0)
  image = rng.normal(size=(4, 5, 6, 2)).astype(np.float16)
  label = rng.integers(0, 3, (4, 5, 6)).astype(np.uint8)
  np.savez(tmp_path / "entry.npz", image=image, label=label, key=np.array("k"), empty=np.zeros((0, 3), np.int32))
  arrays = mapped.open_npz(tmp_path / "entry.npz")
  assert sorted(arrays) == ["empty", "image", "key", "label"]
  for array, want in ((arrays["image"], image), (arrays["label"], label)):
    assert (array.shape, array.dtype, array.ndim, array.size, array.nbytes, len(array)) == (
        want.shape, want.dtype, want.ndim, want.size, want.nbytes, len(want))
    np.testing.assert_array_equal(np.asarray(array), want)
    np.testing.assert_array_equal(array[1:3, ::2, -1], want[1:3, ::2, -1])
    np.testing.assert_array_equal(array[[3, 0, 3]], want[[3, 0, 3]])
    np.testing.assert_array_equal(np.stack(list(array)), want)
    np.testing.assert_array_equal(array.astype(np.float32), want.astype(np.float32))  # ndarray methods
    np.testing.assert_array_equal(padding.fit_to_shape(array, (3, 8))[0], padding.fit_to_shape(want, (3, 8))[0])
  np.testing.assert_array_equal(arrays["label"] == 2, label == 2)  # operators
  assert np.sum(arrays["label"]) == label.sum() and arrays["label"].max() == label.max()
  assert arrays["empty"].shape == (0, 3) and np.asarray(arrays["empty"]).size == 0
  assert str(np.asarray(arrays["key"])) == "k"


def test_reading_leaves_no_mapping_behind(tmp_path):
  np.savez(tmp_path / "a.npz", a=np.arange(2**20, dtype=np.float32).reshape(256, 4096))
  array = mapped.open_npz(tmp_path / "a.npz")["a"]
  assert array[10, 5] == 10 * 4096 + 5 and float(np.asarray(array).sum()) == float(np.arange(2**20).sum())
  assert str(tmp_path / "a.npz") not in _mapped_files()
  # A mapping that is kept (np.load's mmap_mode) is seen there: the check above can fail.
  kept = np.memmap(tmp_path / "a.npz", mode="r")
  assert str(tmp_path / "a.npz") in _mapped_files()
  del kept


def test_compressed_or_damaged_npz_is_refused(tmp_path):
  np.savez_compressed(tmp_path / "c.npz", a=np.zeros(10))
  with pytest.raises(ValueError, match="compressed"):
    mapped.open_npz(tmp_path / "c.npz")
  np.savez(tmp_path / "d.npz", a=np.zeros(1000))
  raw = (tmp_path / "d.npz").read_bytes()
  (tmp_path / "d.npz").write_bytes(raw[:200] + raw[-200:])  # the data cut out, the directory kept
  with pytest.raises((zipfile.BadZipFile, OSError)):  # what `cache_entries.read_entry` takes for an unreadable entry
    mapped.open_npz(tmp_path / "d.npz")


def test_mapped_volumes_equal_loaded_ones_cold_and_warm(tmp_path):
  root = phantom.write_phantom(tmp_path / "ph", num_cases=4, shape=(20, 24, 12), num_channels=2)
  index = index_lib.index_msd(root)
  plain = data_lib.load_volumes(index)
  cold = data_lib.load_volumes(index, cache_dir=tmp_path / "cache", mapped=True)
  warm = data_lib.load_volumes(index, cache_dir=tmp_path / "cache", mapped=True)
  for a, b, c in zip(plain.volumes, cold.volumes, warm.volumes):
    assert isinstance(b.image, mapped.MappedArray) and isinstance(c.label, mapped.MappedArray)
    assert b.key == c.key and len(b.key) == 64 and a.key is None
    for x, y, z in ((a.image, b.image, c.image), (a.label, b.label, c.label)):
      assert x.dtype == y.dtype == z.dtype and x.shape == y.shape == z.shape
      assert x.tobytes() == np.asarray(y).tobytes() == np.asarray(z).tobytes()
  with pytest.raises(ValueError, match="cache_dir"):
    data_lib.load_volumes(index, mapped=True)


@pytest.mark.parametrize("pipeline,budget_gb,is_mapped", [("bank", 0.0, False), ("stream", 0.0, True),
                                                          ("auto", 1e-6, True), ("auto", 0.0, False)])
def test_the_trainer_maps_volumes_for_the_stream_or_beyond_the_budget(tmp_path, pipeline, budget_gb, is_mapped):
  config = config_lib.load("configs/demo.py:tiny")
  with config.unlocked():
    config.data.update(pipeline=pipeline, memory_budget_gb=budget_gb, cache_dir=str(tmp_path / "cache"))
  dataset, splits, _, _, _ = train.read_inputs(config)
  volume = splits["test"][0]
  assert isinstance(volume.image, mapped.MappedArray) == is_mapped
  assert isinstance(volume.label, mapped.MappedArray) == is_mapped
  assert len(dataset.volumes) == sum(len(v) for v in splits.values())


def test_a_check_beyond_the_budget_reads_through_the_cache(tmp_path):
  config = config_lib.load("configs/demo.py:tiny")
  with config.unlocked():
    config.data.update(memory_budget_gb=1e-6, cache_dir=str(tmp_path / "cache"))
  _, splits, _, _, _ = train.read_inputs(config, use_cache=False)
  assert isinstance(splits["train"][0].image, mapped.MappedArray)
  assert list((tmp_path / "cache" / "volumes").glob("*.npz"))
