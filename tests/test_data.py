"""Tests for slicejax.data: reading, checking, caching and writing MSD volumes."""

import gzip
import json
import pathlib

import nibabel as nib
import numpy as np
import pytest

from slicejax import data
from slicejax.errors import InputError

AFFINE = np.array([[0.5, 0., 0., -3.], [0., 0.75, 0., 4.], [0., 0., 2., 1.5], [0., 0., 0., 1.]])


def _write_nifti(path, array, affine=AFFINE):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(array, affine), str(path))


def _write_dataset(root, cases, labels=None, modality=None, affines=None):
  """cases: {case_id: (image, label)}; writes NIfTI files and dataset.json; returns root."""
  root = pathlib.Path(root)
  training = []
  for case_id, (image, label) in cases.items():
    affine = (affines or {}).get(case_id, AFFINE)
    _write_nifti(root / "imagesTr" / f"{case_id}.nii.gz", image)
    _write_nifti(root / "labelsTr" / f"{case_id}.nii.gz", label, affine)
    training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
  meta = {"name": "Tiny", "labels": labels or {"0": "background", "1": "a", "2": "b"}, "training": training}
  if modality is not None:
    meta["modality"] = modality
  (root / "dataset.json").write_text(json.dumps(meta))
  return root


def _case(shape=(3, 4, 5), seed=0):
  rng = np.random.default_rng(seed)
  image = rng.normal(100., 20., shape).astype(np.float32)
  label = rng.integers(0, 3, shape[:3]).astype(np.uint8)
  return image, label


def _zscore(x):
  x = x.astype(np.float64)
  return ((x - x.mean()) / x.std()).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Round trips and conventions.
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis,spacing", [(0, (0.5, 0.75, 2.)), (1, (0.75, 0.5, 2.)), (2, (2., 0.5, 0.75))])
def test_axes_spacing_and_save_label_round_trip(tmp_path, axis, spacing):
  image, label = _case()
  root = _write_dataset(tmp_path / "ds", {"case_b": (image, label), "case_a": _case(seed=1)})
  ds = data.load_msd(root, slicing_axis=axis)
  assert [v.case_id for v in ds.volumes] == ["case_a", "case_b"]
  assert ds.name == "Tiny" and ds.class_names == ("background", "a", "b") and ds.channel_names == ("channel_0",)
  assert ds.num_classes == 3 and ds.num_channels == 1
  vol = ds.by_id()["case_b"]
  np.testing.assert_array_equal(vol.label, np.moveaxis(label, axis, 0))
  assert vol.label.dtype == np.int32 and vol.image.dtype == np.float32
  np.testing.assert_allclose(vol.image[..., 0], np.moveaxis(_zscore(image), axis, 0), rtol=0, atol=1e-6)
  assert vol.spacing == spacing
  assert vol.slicing_axis == axis and vol.original_shape == (3, 4, 5)
  np.testing.assert_array_equal(vol.affine, AFFINE)

  prediction = (vol.label + 1) % 3
  out = data.save_label(tmp_path / "pred" / "case_b.nii.gz", prediction, vol)
  back = nib.load(str(out))
  np.testing.assert_array_equal(np.asanyarray(back.dataobj), np.moveaxis(prediction, 0, axis))
  assert np.asanyarray(back.dataobj).dtype == np.uint8
  np.testing.assert_array_equal(back.affine, AFFINE)
  assert list(out.parent.iterdir()) == [out]


def test_save_label_keeps_large_and_negative_values(tmp_path):
  root = _write_dataset(tmp_path / "ds", {"c": _case()})
  vol = data.load_msd(root).volumes[0]
  prediction = np.full(vol.label.shape, -7, np.int64)
  prediction[0, 0, 0] = 40000
  back = np.asanyarray(nib.load(str(data.save_label(tmp_path / "p.nii.gz", prediction, vol))).dataobj)
  np.testing.assert_array_equal(back, np.moveaxis(prediction, 0, 2))
  with pytest.raises(ValueError):
    data.save_label(tmp_path / "q.nii.gz", prediction[:1], vol)


def test_four_d_image_is_channels_last_and_normalised_per_channel(tmp_path):
  image, label = _case()
  image4 = np.stack([image, 1000. * image + 5.], axis=-1)
  root = _write_dataset(tmp_path / "ds", {"c": (image4, label)}, modality={"0": "T2", "1": "ADC"})
  ds = data.load_msd(root, slicing_axis=1)
  vol = ds.volumes[0]
  assert ds.channel_names == ("T2", "ADC")
  assert vol.image.shape == (4, 3, 5, 2)
  expected = np.moveaxis(_zscore(image), 1, 0)
  np.testing.assert_allclose(vol.image[..., 0], expected, atol=1e-6)
  np.testing.assert_allclose(vol.image[..., 1], expected, atol=1e-5)


def test_zscore_and_ct_values_by_hand():
  image = np.array([0., 2., 2., 0.]).reshape(4, 1, 1, 1)
  np.testing.assert_array_equal(data.normalize(image, "zscore")[:, 0, 0, 0], [-1., 1., 1., -1.])
  np.testing.assert_array_equal(data.normalize(np.full((2, 1, 1, 1), 7.), "zscore"), np.zeros((2, 1, 1, 1)))
  hu = np.array([-2000., -1000., 0., 500., 3000.]).reshape(5, 1, 1, 1)
  np.testing.assert_array_equal(data.normalize(hu, "ct", (-1000., 1000.))[:, 0, 0, 0], [-1., -1., 0., 0.5, 1.])


def test_ct_normalisation_through_load(tmp_path):
  image = np.array([-2000., -1000., 0., 500., 3000., 0.], np.float32).reshape(6, 1, 1)
  root = _write_dataset(tmp_path / "ds", {"c": (image, np.zeros((6, 1, 1), np.uint8))})
  vol = data.load_msd(root, slicing_axis=0, normalization="ct", ct_window=(-1000., 1000.)).volumes[0]
  np.testing.assert_array_equal(vol.image[:, 0, 0, 0], [-1., -1., 0., 0.5, 1., 0.])


# ---------------------------------------------------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------------------------------------------------


def test_float_labels_holding_integers_load(tmp_path):
  image, label = _case()
  root = _write_dataset(tmp_path / "ds", {"c": (image, label.astype(np.float32))})
  vol = data.load_msd(root).volumes[0]
  assert vol.label.dtype == np.int32
  np.testing.assert_array_equal(vol.label, np.moveaxis(label, 2, 0))


def test_inverted_labels_map_is_accepted(tmp_path):
  root = _write_dataset(tmp_path / "ds", {"c": _case()}, labels={"background": 0, "b": 2, "a": 1})
  assert data.load_msd(root).class_names == ("background", "a", "b")


def _expect_error(root, fragment, **kwargs):
  with pytest.raises(InputError) as info:
    data.load_msd(root, **kwargs)
  message = str(info.value)
  assert fragment in message and "\n" not in message, message
  return message


def _corrupt_gzip_middle(path):
  raw = bytearray(path.read_bytes())
  for i in range(len(raw) // 2, len(raw) // 2 + 16):
    raw[i] ^= 0xFF
  path.write_bytes(bytes(raw))


def _truncate(path):
  path.write_bytes(path.read_bytes()[:-40])


def _truncate_decompressed(path):
  path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-10]))


BAD_FILES = {
    # name: (function(root) -> file the message must name, extra substring)
    "undeclared label value": (lambda r: _edit_label(r, lambda a: np.where(a == 2, 3, a)), "[3]"),
    "non-integer float label": (lambda r: _edit_label(r, lambda a: a.astype(np.float32) + 0.5), "non-integer"),
    "label holds NaN": (lambda r: _edit_label(r, lambda a: np.full(a.shape, np.nan, np.float32)), "NaN"),
    "image holds NaN": (lambda r: _edit_image(r, lambda a: np.where(a > 100, np.nan, a)), "NaN or Inf"),
    "image holds Inf": (lambda r: _edit_image(r, lambda a: np.where(a > 100, np.inf, a)), "NaN or Inf"),
    "2D image": (lambda r: _edit_image(r, lambda a: a[:, :, 0]), "3D"),
    "5D image": (lambda r: _edit_image(r, lambda a: a[..., None, None]), "3D"),
    "4D label": (lambda r: _edit_label(r, lambda a: a[..., None]), "3D"),
    "shape mismatch": (lambda r: _edit_label(r, lambda a: a[:, :, :4]), "differs from image shape"),
    "affine mismatch": (lambda r: _edit_label(r, lambda a: a, affine=AFFINE + np.eye(4) * 0.01), "affine"),
    "corrupt gzip": (lambda r: _damage(r, _corrupt_gzip_middle), "cannot read NIfTI"),
    "truncated gzip": (lambda r: _damage(r, _truncate), "cannot read NIfTI"),
    "truncated NIfTI inside gzip": (lambda r: _damage(r, _truncate_decompressed), "cannot read NIfTI"),
    "missing image": (lambda r: _remove(r / "imagesTr" / "c1.nii.gz"), "missing"),
    "missing label": (lambda r: _remove(r / "labelsTr" / "c1.nii.gz"), "missing"),
}


def _edit_image(root, fn):
  path = root / "imagesTr" / "c1.nii.gz"
  _write_nifti(path, fn(np.asanyarray(nib.load(str(path)).dataobj)))
  return path


def _edit_label(root, fn, affine=AFFINE):
  path = root / "labelsTr" / "c1.nii.gz"
  _write_nifti(path, fn(np.asanyarray(nib.load(str(path)).dataobj)), affine)
  return path


def _damage(root, fn):
  path = root / "imagesTr" / "c1.nii.gz"
  fn(path)
  return path


def _remove(path):
  path.unlink()
  return path


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_raise_input_error_naming_the_file(tmp_path, name):
  root = _write_dataset(tmp_path / "ds", {"c0": _case(seed=0), "c1": _case(shape=(6, 5, 8), seed=1)})
  edit, fragment = BAD_FILES[name]
  path = edit(root)
  message = _expect_error(root, fragment)
  assert str(path) in message


def test_truncated_uncompressed_nifti(tmp_path):
  image, label = _case()
  root = tmp_path / "ds"
  _write_nifti(root / "imagesTr" / "c.nii", image)
  _write_nifti(root / "labelsTr" / "c.nii", label)
  (root / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "training": [
      {"image": "./imagesTr/c.nii", "label": "./labelsTr/c.nii"}]}))
  assert data.load_msd(root).volumes[0].case_id == "c"
  _truncate(root / "imagesTr" / "c.nii")
  assert str(root / "imagesTr" / "c.nii") in _expect_error(root, "cannot read NIfTI")


def test_dataset_json_problems(tmp_path):
  root = tmp_path / "ds"
  root.mkdir()
  json_path = str(root / "dataset.json")
  assert json_path in _expect_error(root, "missing")
  (root / "dataset.json").write_text("{not json")
  assert json_path in _expect_error(root, "not valid JSON")
  (root / "dataset.json").write_text(json.dumps({"labels": {"0": "bg"}}))
  assert json_path in _expect_error(root, "lacks 'training'")
  (root / "dataset.json").write_text(json.dumps({"training": []}))
  assert json_path in _expect_error(root, "lacks 'labels'")
  (root / "dataset.json").write_text(json.dumps({"labels": {"0": "bg"}, "training": []}))
  assert json_path in _expect_error(root, "empty")
  (root / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "2": "x"}, "training": [{"image": "a"}]}))
  assert json_path in _expect_error(root, "numbered 0..1")


def test_channel_count_must_match_modality(tmp_path):
  image, label = _case()
  root = _write_dataset(tmp_path / "ds", {"c": (np.stack([image] * 3, -1), label)}, modality={"0": "T2", "1": "ADC"})
  message = _expect_error(root, "3 channel(s)")
  assert str(root / "imagesTr" / "c.nii.gz") in message
  three_d = _write_dataset(tmp_path / "ds3", {"c": (image, label)}, modality={"0": "T2", "1": "ADC"})
  _expect_error(three_d, "1 channel(s)")


def test_bad_settings(tmp_path):
  root = _write_dataset(tmp_path / "ds", {"c": _case()})
  _expect_error(root, "slicing_axis", slicing_axis=3)
  _expect_error(root, "normalization", normalization="minmax")
  _expect_error(root, "ct_window", normalization="ct", ct_window=(10., -10.))
  _expect_error(root, "max_cases", max_cases=0)


def test_max_cases_takes_the_first_cases_by_id(tmp_path):
  root = _write_dataset(tmp_path / "ds", {f"c{i}": _case(seed=i) for i in (3, 1, 2)})
  assert [v.case_id for v in data.load_msd(root, max_cases=2).volumes] == ["c1", "c2"]


# ---------------------------------------------------------------------------------------------------------------------
# Cache.
# ---------------------------------------------------------------------------------------------------------------------


def _count_decodes(monkeypatch):
  calls = []
  decode = data._decode_nifti

  def counting(path, raw):
    calls.append(pathlib.Path(path).name)
    return decode(path, raw)

  monkeypatch.setattr(data, "_decode_nifti", counting)
  return calls


def _forbid_nibabel(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("NIfTI decoded on a cache hit")

  monkeypatch.setattr(nib, "load", fail)
  monkeypatch.setattr(nib.Nifti1Image, "from_bytes", fail)


def test_cache_hit_does_not_decode_nifti(tmp_path, monkeypatch):
  root = _write_dataset(tmp_path / "ds", {"c0": _case(seed=0), "c1": _case(seed=1)})
  cache = tmp_path / "cache"
  first = data.load_msd(root, cache_dir=cache)
  assert len(list(cache.glob("*.json"))) == 2
  assert not list(cache.glob(".*"))
  with monkeypatch.context() as m:
    _forbid_nibabel(m)
    second = data.load_msd(root, cache_dir=cache)
  for a, b in zip(first.volumes, second.volumes):
    assert a.case_id == b.case_id and a.spacing == b.spacing and a.slicing_axis == b.slicing_axis
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.affine, b.affine)


def test_cache_misses_on_changed_file_or_setting(tmp_path, monkeypatch):
  root = _write_dataset(tmp_path / "ds", {"c0": _case(seed=0), "c1": _case(seed=1)})
  cache = tmp_path / "cache"
  data.load_msd(root, cache_dir=cache)
  calls = _count_decodes(monkeypatch)
  image, label = _case(seed=1)
  _write_nifti(root / "labelsTr" / "c1.nii.gz", (label + 1) % 3)
  changed = data.load_msd(root, cache_dir=cache)
  assert calls == ["c1.nii.gz", "c1.nii.gz"]
  np.testing.assert_array_equal(changed.by_id()["c1"].label, np.moveaxis((label + 1) % 3, 2, 0))
  calls.clear()
  data.load_msd(root, cache_dir=cache, slicing_axis=0)
  assert len(calls) == 4
  calls.clear()
  data.load_msd(root, cache_dir=cache, normalization="ct", ct_window=(0., 100.))
  assert len(calls) == 4
  calls.clear()
  data.load_msd(root, cache_dir=cache, normalization="ct", ct_window=(0., 200.))
  assert len(calls) == 4
  calls.clear()
  data.load_msd(root, cache_dir=cache, normalization="ct", ct_window=(0., 200.))
  assert calls == []


def test_cache_entry_without_its_record_is_not_trusted(tmp_path, monkeypatch):
  root = _write_dataset(tmp_path / "ds", {"c0": _case(seed=0)})
  cache = tmp_path / "cache"
  data.load_msd(root, cache_dir=cache)
  # A run killed after writing the arrays but before the JSON record.
  next(cache.glob("*.json")).unlink()
  np.save(next(cache.glob("*.image.npy")), np.zeros((1,), np.float32))
  calls = _count_decodes(monkeypatch)
  vol = data.load_msd(root, cache_dir=cache).volumes[0]
  assert len(calls) == 2
  np.testing.assert_allclose(vol.image[..., 0], np.moveaxis(_zscore(_case(seed=0)[0]), 2, 0), atol=1e-6)


def test_checks_outside_the_cache_key_still_run_on_cached_entries(tmp_path):
  labels = {"0": "background", "1": "a", "2": "b"}
  root = _write_dataset(tmp_path / "ds", {"c0": _case(seed=0)}, labels=labels)
  cache = tmp_path / "cache"
  data.load_msd(root, cache_dir=cache)
  meta = json.loads((root / "dataset.json").read_text())
  meta["labels"] = {"0": "background", "1": "a"}
  (root / "dataset.json").write_text(json.dumps(meta))
  _expect_error(root, "not declared", cache_dir=cache)


# ---------------------------------------------------------------------------------------------------------------------
# Splits and shapes.
# ---------------------------------------------------------------------------------------------------------------------


def test_split_cases_is_seeded_disjoint_sorted_and_order_independent():
  ids = [f"case_{i:03d}" for i in range(30)]
  split = data.split_cases(ids, num_train=12, num_val=5, num_test=8, seed=3)
  assert {k: len(v) for k, v in split.items()} == {"train": 12, "val": 5, "test": 8}
  assert all(v == sorted(v) for v in split.values())
  assert len(set(split["train"]) | set(split["val"]) | set(split["test"])) == 25
  shuffled = list(np.random.default_rng(0).permutation(ids))
  assert data.split_cases(shuffled, num_train=12, num_val=5, num_test=8, seed=3) == split
  assert data.split_cases(ids, num_train=12, num_val=5, num_test=8, seed=4) != split
  # The test set does not move when only the training pool size changes.
  assert data.split_cases(ids, num_train=3, num_val=5, num_test=8, seed=3)["test"] == split["test"]
  assert data.split_cases(ids, num_train=30, num_val=0, num_test=0, seed=0)["train"] == ids


def test_split_cases_rejects_bad_counts():
  ids = ["a", "b", "c"]
  with pytest.raises(InputError, match="exceeds the 3 cases"):
    data.split_cases(ids, num_train=2, num_val=1, num_test=1, seed=0)
  with pytest.raises(InputError, match="num_val"):
    data.split_cases(ids, num_train=1, num_val=-1, num_test=1, seed=0)
  with pytest.raises(InputError, match="duplicate"):
    data.split_cases(["a", "a"], num_train=1, num_val=0, num_test=0, seed=0)


def test_fit_to_shape_pads_at_the_end_and_crops_the_centre():
  array = np.arange(2 * 6 * 3 * 2).reshape(2, 6, 3, 2) + 1
  out, valid, offsets = data.fit_to_shape(array, (4, 5))
  assert out.shape == (2, 4, 5, 2) and valid.shape == (2, 4, 5) and offsets == (1, 0)
  np.testing.assert_array_equal(out[:, :, :3], array[:, 1:5])
  np.testing.assert_array_equal(out[:, :, 3:], 0)
  np.testing.assert_array_equal(valid, np.broadcast_to(np.arange(5) < 3, (2, 4, 5)))
  back = data.unfit(out[..., 0], (6, 3), offsets)
  expected = array[..., 0].copy()
  expected[:, [0, 5]] = 0
  np.testing.assert_array_equal(back, expected)


def test_fit_to_shape_identity_and_odd_crop():
  array = np.arange(1 * 5 * 4).reshape(1, 5, 4)
  out, valid, offsets = data.fit_to_shape(array, (5, 4))
  np.testing.assert_array_equal(out, array)
  assert valid.all() and offsets == (0, 0)
  out, valid, offsets = data.fit_to_shape(array, (2, 1))
  assert offsets == (1, 1) and valid.all()
  np.testing.assert_array_equal(out[0], [[5], [9]])
  np.testing.assert_array_equal(data.unfit(out, (5, 4), offsets)[0],
                                [[0, 0, 0, 0], [0, 5, 0, 0], [0, 9, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


# ---------------------------------------------------------------------------------------------------------------------
# Real data (runs with --hippocampus or SLICEJAX_HIPPOCAMPUS).
# ---------------------------------------------------------------------------------------------------------------------


def test_hippocampus_first_five_cases(hippocampus_root):
  ds = data.load_msd(hippocampus_root, max_cases=5)
  assert [v.case_id for v in ds.volumes] == [
      "hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_007"]
  assert ds.class_names == ("background", "Anterior", "Posterior") and ds.channel_names == ("MRI",)
  first = ds.volumes[0]
  # hippocampus_001 is 35 x 51 x 35 (X, Y, Z); Z moves to the front.
  assert first.image.shape == (35, 35, 51, 1) and first.label.shape == (35, 35, 51)
  for vol in ds.volumes:
    assert vol.spacing == (1., 1., 1.)
    assert vol.image.shape[:3] == vol.label.shape and vol.image.shape[3] == 1
    assert 24 <= vol.label.shape[0] <= 47 and 31 <= vol.label.shape[1] <= 43 and 40 <= vol.label.shape[2] <= 59
    assert set(np.unique(vol.label).tolist()) == {0, 1, 2}
    assert abs(float(vol.image.mean())) < 1e-4 and abs(float(vol.image.std()) - 1.) < 1e-4
