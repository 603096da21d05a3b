"""Tests for slicejax.data: reading, checking, caching and writing MSD volumes."""

from concurrent import futures
import gzip
import json
import os
import pathlib

import nibabel as nib
import numpy as np
import pytest

from slicejax.data import cache_entries
from slicejax.data import index as index_lib
from slicejax.data import layouts
from slicejax.data import load as data
from slicejax.data import nifti
from slicejax.data import normalize
from slicejax.data import padding
from slicejax.data import phantom
from slicejax.data import split as split_lib
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
  """Exact z-scores, float64."""
  x = x.astype(np.float64)
  return (x - x.mean()) / x.std()


def _assert_float16_of(stored, exact):
  """`stored` is float16 and within float16's rounding of `exact`: relative 2**-11 (absolute 2**-25 if subnormal)."""
  assert stored.dtype == np.float16
  np.testing.assert_allclose(stored.astype(np.float64), exact, rtol=2.**-11, atol=2.**-25)


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
  assert vol.label.dtype == np.uint8
  _assert_float16_of(vol.image[..., 0], np.moveaxis(_zscore(image), axis, 0))
  assert vol.spacing == spacing
  assert vol.slicing_axis == axis and vol.original_shape == (3, 4, 5)
  np.testing.assert_array_equal(vol.affine, AFFINE)

  # A prediction back in NIfTI order, written on the case's label file, lands on the file's axes and affine.
  prediction = (vol.label + 1) % 3
  out = nifti.save_like(tmp_path / "pred" / "case_b.nii.gz", nifti.to_nifti_order(prediction, axis),
                        nifti.load(root / "labelsTr" / "case_b.nii.gz"))
  back = nib.load(str(out))
  np.testing.assert_array_equal(np.asanyarray(back.dataobj), np.moveaxis(prediction, 0, axis))
  assert np.asanyarray(back.dataobj).dtype == np.uint8
  np.testing.assert_array_equal(back.affine, AFFINE)
  assert list(out.parent.iterdir()) == [out]


def test_four_d_image_is_channels_last_and_normalised_per_channel(tmp_path):
  image, label = _case()
  image4 = np.stack([image, 1000. * image + 5.], axis=-1)
  root = _write_dataset(tmp_path / "ds", {"c": (image4, label)}, modality={"0": "T2", "1": "ADC"})
  ds = data.load_msd(root, slicing_axis=1)
  vol = ds.volumes[0]
  assert ds.channel_names == ("T2", "ADC")
  assert vol.image.shape == (4, 3, 5, 2)
  for c in range(2):
    _assert_float16_of(vol.image[..., c], np.moveaxis(_zscore(image4[..., c]), 1, 0))


def test_zscore_and_ct_values_by_hand():
  image = np.array([0., 2., 2., 0.]).reshape(4, 1, 1, 1)
  np.testing.assert_array_equal(normalize.normalize(image, "zscore")[:, 0, 0, 0], [-1., 1., 1., -1.])
  np.testing.assert_array_equal(normalize.normalize(np.full((2, 1, 1, 1), 7.), "zscore"), np.zeros((2, 1, 1, 1)))
  hu = np.array([-2000., -1000., 0., 500., 3000.]).reshape(5, 1, 1, 1)
  np.testing.assert_array_equal(normalize.normalize(hu, "ct", (-1000., 1000.))[:, 0, 0, 0], [-1., -1., 0., 0.5, 1.])


def test_normalised_values_are_rounded_once_to_float16():
  # [0, 0, 0, 3]: mean 0.75, std sqrt(27) / 4, so z = -1 / sqrt(3) (three times) and sqrt(3).
  z = normalize.normalize(np.array([0., 0., 0., 3.]).reshape(4, 1, 1, 1), "zscore")[:, 0, 0, 0]
  assert z.dtype == np.float16
  # sqrt(3) = 1.7320508 lies between the float16 neighbours 1.7314453 and 1.7324219 (spacing 2**-10).
  np.testing.assert_array_equal(z.astype(np.float64), [-0.5771484375] * 3 + [1.732421875])
  np.testing.assert_allclose(z.astype(np.float64), [-3 ** -0.5] * 3 + [3 ** 0.5], rtol=2.**-11)
  # One HU above the centre of a 2000 HU window is 0.001, stored as 0.0010004: a relative error of 4e-4 < 2**-11.
  hu = normalize.normalize(np.array([1.]).reshape(1, 1, 1, 1), "ct", (-1000., 1000.))
  assert float(hu.item()) == 0.0010004043579101562


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
  assert vol.label.dtype == np.uint8
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
    "complex voxels": (lambda r: _edit_image(r, lambda a: a.astype(np.complex64)), "unsupported voxel type"),
}
# The problems a header shows: `index_msd` raises them, with the message of `load_msd`, and passes the others.
HEADER_PROBLEMS = {"2D image", "5D image", "4D label", "shape mismatch", "affine mismatch", "missing image",
                   "missing label", "complex voxels"}


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
  if name in HEADER_PROBLEMS:
    with pytest.raises(InputError) as info:
      index_lib.index_msd(root)
    assert str(info.value) == message
  else:
    assert index_lib.index_msd(root).case_ids == ("c0", "c1")


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
  # Without a 'training' list the cases are the files of labelsTr/.
  assert str(root / "labelsTr") in _expect_error(root, "no 'training' list")
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
  decode = nifti.decode

  def counting(path, raw):
    calls.append(pathlib.Path(path).name)
    return decode(path, raw)

  monkeypatch.setattr(nifti, "decode", counting)
  return calls


def _forbid_nibabel(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("NIfTI decoded on a cache hit")

  monkeypatch.setattr(nib, "load", fail)
  monkeypatch.setattr(nib.Nifti1Image, "from_bytes", fail)


def _assert_same_volumes(first, second):
  assert [v.case_id for v in first.volumes] == [v.case_id for v in second.volumes]
  for a, b in zip(first.volumes, second.volumes):
    assert a.spacing == b.spacing and a.slicing_axis == b.slicing_axis
    for x, y in ((a.image, b.image), (a.label, b.label), (a.affine, b.affine)):
      assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def test_cache_hit_does_not_decode_nifti_and_gives_the_arrays_of_a_cold_load(tmp_path, monkeypatch):
  root = _write_dataset(tmp_path / "ds", {"c0": _case(seed=0), "c1": _case(seed=1)})
  cache = tmp_path / "cache"
  first = data.load_msd(root, cache_dir=cache)
  entries = cache / "volumes"
  assert sorted(p.name for p in cache.iterdir()) == ["volumes"]
  assert sorted(p.name[:3] for p in entries.iterdir()) == ["c0.", "c1."]
  assert all(p.suffix == ".npz" for p in entries.iterdir())
  with monkeypatch.context() as m:
    _forbid_nibabel(m)
    second = data.load_msd(root, cache_dir=cache)
  _assert_same_volumes(first, second)
  _assert_same_volumes(first, data.load_msd(root))
  assert first.volumes[0].image.dtype == np.float16 and first.volumes[0].label.dtype == np.uint8


def _stored(cache, case_id):
  with np.load(next((cache / "volumes").glob(f"{case_id}.*.npz"))) as entry:
    return {k: entry[k] for k in entry.files}


def test_cache_stores_float16_images_and_the_smallest_label_type(tmp_path):
  image, label = _case()
  root = _write_dataset(tmp_path / "ds", {"c": (image, label)})
  cache = tmp_path / "cache"
  data.load_msd(root, cache_dir=cache)
  entry = _stored(cache, "c")
  assert sorted(entry) == ["dataset", "image", "key", "label", "label_values"]
  # 3 x 4 x 5 voxels: 120 bytes of float16 and 60 of uint8 (float32 and int32: 240 each).
  assert (entry["image"].dtype, entry["image"].nbytes) == (np.float16, 120)
  assert (entry["label"].dtype, entry["label"].nbytes) == (np.uint8, 60)
  np.testing.assert_array_equal(entry["label_values"], [0, 1, 2])


def test_labels_beyond_255_are_uint16_cold_and_warm(tmp_path):
  image, _ = _case()
  label = np.zeros((3, 4, 5), np.int16)
  label[0, 0, 0], label[1, 1, 1] = 299, 7
  few = np.where(label == 299, 3, label)
  names = {str(i): f"class_{i}" for i in range(300)}
  root = _write_dataset(tmp_path / "ds", {"many": (image, label), "few": (image, few)}, labels=names)
  cache = tmp_path / "cache"
  cold = data.load_msd(root, cache_dir=cache)
  warm = data.load_msd(root, cache_dir=cache)
  _assert_same_volumes(cold, warm)
  assert [v.label.dtype for v in warm.volumes] == [np.uint16, np.uint16]
  np.testing.assert_array_equal(warm.by_id()["many"].label, np.moveaxis(label, 2, 0))
  # Stored in the smallest type that holds each case's values, whatever the number of classes.
  assert _stored(cache, "few")["label"].dtype == np.uint8 and _stored(cache, "many")["label"].dtype == np.uint16


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


def test_two_datasets_with_the_same_case_ids_share_one_cache(tmp_path, monkeypatch):
  first = _write_dataset(tmp_path / "a", {"c0": _case(seed=0), "c1": _case(seed=1)})
  second = _write_dataset(tmp_path / "b", {"c0": _case(seed=2), "c1": _case(seed=3)})
  cache = tmp_path / "cache"
  cold = [data.load_msd(root, cache_dir=cache) for root in (first, second)]
  assert len(list((cache / "volumes").iterdir())) == 4
  with monkeypatch.context() as m:
    _forbid_nibabel(m)
    warm = [data.load_msd(root, cache_dir=cache) for root in (second, first)][::-1]
  for a, b in zip(cold, warm):
    _assert_same_volumes(a, b)
  _assert_same_volumes(cold[1], data.load_msd(second))


def test_concurrent_loads_into_one_cache(tmp_path):
  root = _write_dataset(tmp_path / "ds", {f"c{i}": _case(seed=i) for i in range(4)})
  cache = tmp_path / "cache"
  with futures.ThreadPoolExecutor(3) as pool:
    loads = list(pool.map(lambda _: data.load_msd(root, cache_dir=cache), range(3)))
  for other in loads[1:] + [data.load_msd(root, cache_dir=cache)]:
    _assert_same_volumes(loads[0], other)
  names = sorted(p.name for p in (cache / "volumes").iterdir())
  assert len(names) == 4 and not [n for n in names if n.startswith(".")]


@pytest.mark.parametrize("damage", ["truncated", "wrong shape"])
def test_a_damaged_cache_entry_is_ignored_and_rewritten(tmp_path, monkeypatch, damage):
  root = _write_dataset(tmp_path / "ds", {"c0": _case(seed=0)})
  cache = tmp_path / "cache"
  cold = data.load_msd(root, cache_dir=cache)
  path = next((cache / "volumes").iterdir())
  if damage == "truncated":
    path.write_bytes(path.read_bytes()[:-100])
  else:
    entry = _stored(cache, "c0")
    np.savez(path, **{**entry, "image": entry["image"][1:]})
  calls = _count_decodes(monkeypatch)
  _assert_same_volumes(cold, data.load_msd(root, cache_dir=cache))
  assert len(calls) == 2
  calls.clear()
  _assert_same_volumes(cold, data.load_msd(root, cache_dir=cache))
  assert calls == []


def test_checks_outside_the_cache_key_still_run_on_cached_entries(tmp_path):
  labels = {"0": "background", "1": "a", "2": "b"}
  root = _write_dataset(tmp_path / "ds", {"c0": _case(seed=0)}, labels=labels)
  cache = tmp_path / "cache"
  data.load_msd(root, cache_dir=cache)
  meta = json.loads((root / "dataset.json").read_text())
  meta["labels"] = {"0": "background", "1": "a"}
  (root / "dataset.json").write_text(json.dumps(meta))
  _expect_error(root, "not declared", cache_dir=cache)


def test_a_refused_dataset_leaves_the_cache_as_it_was(tmp_path):
  """Cases read before a later case's undeclared label leave no entries behind; entries there before stay."""
  labels = {"0": "background", "1": "a", "2": "b"}
  image, label = _case(seed=2)
  bad = label.copy()
  bad[0, 0, 0] = 7  # not declared in dataset.json
  cache = tmp_path / "cache"
  first = _write_dataset(tmp_path / "first", {"c0": _case(seed=0)}, labels=labels)
  data.load_msd(first, cache_dir=cache)
  before = sorted(p.name for p in (cache / "volumes").iterdir())
  root = _write_dataset(tmp_path / "ds", {"c0": _case(seed=0), "c1": _case(seed=1), "c2": (image, bad)},
                        labels=labels)
  _expect_error(root, "not declared", cache_dir=cache)
  assert sorted(p.name for p in (cache / "volumes").iterdir()) == before
  fresh = tmp_path / "fresh_cache"
  _expect_error(root, "not declared", cache_dir=fresh)
  assert not fresh.exists()


def test_default_cache_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("SLICEJAX_CACHE", str(tmp_path / "mine"))
  monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
  assert cache_entries.default_cache_dir() == tmp_path / "mine"
  root = _write_dataset(tmp_path / "ds", {"c0": _case(seed=0)})
  data.load_msd(root, cache_dir=cache_entries.default_cache_dir())
  assert len(list((tmp_path / "mine" / "volumes").glob("c0.*.npz"))) == 1
  monkeypatch.delenv("SLICEJAX_CACHE")
  assert cache_entries.default_cache_dir() == pathlib.Path("/xdg/slicejax")
  monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
  monkeypatch.setenv("HOME", "/home/someone")
  assert cache_entries.default_cache_dir() == pathlib.Path("/home/someone/.cache/slicejax")
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert cache_entries.default_cache_dir() == pathlib.Path("/home/someone/.cache/slicejax")


def test_the_test_session_has_a_cache_of_its_own():
  # Set by conftest.py before anything imports slicejax.
  assert os.environ.get("SLICEJAX_CACHE") and (cache_entries.default_cache_dir()
                                               == pathlib.Path(os.environ["SLICEJAX_CACHE"]))


# ---------------------------------------------------------------------------------------------------------------------
# Index: headers only.
# ---------------------------------------------------------------------------------------------------------------------


def test_index_reads_shapes_spacing_and_channels_without_voxels(tmp_path, monkeypatch):
  image, label = _case(shape=(3, 4, 5))
  image4 = np.stack([image, image], axis=-1)
  root = _write_dataset(tmp_path / "ds", {"b": (image4, label), "a": (image4[:, :, :2], label[:, :, :2])},
                        modality={"0": "T2", "1": "ADC"})
  with monkeypatch.context() as m:
    _forbid_nibabel(m)
    m.setattr(nifti, "read_bytes", lambda *a: pytest.fail("read a whole file"))
    m.setattr(nifti, "decode", lambda *a: pytest.fail("decoded voxels"))
    index = index_lib.index_msd(root, slicing_axis=1)
  assert index.name == "Tiny" and index.root == str(root) and index.slicing_axis == 1
  assert index.class_names == ("background", "a", "b") and index.channel_names == ("T2", "ADC")
  assert index.num_classes == 3 and index.num_channels == 2 and index.case_ids == ("a", "b")
  a, b = index.cases
  assert b.image_path == root / "imagesTr" / "b.nii.gz" and b.label_path == root / "labelsTr" / "b.nii.gz"
  # NIfTI (3, 4, 5) with axis 1 first: (4, 3, 5); spacing (0.5, 0.75, 2) likewise.
  assert b.shape == (4, 3, 5) and a.shape == (4, 3, 2) and b.spacing == (0.75, 0.5, 2.)
  assert b.num_channels == 2 and b.nifti_shape == (3, 4, 5, 2)
  np.testing.assert_array_equal(b.affine, AFFINE)
  assert index.depths() == {"a": 4, "b": 4}
  assert index_lib.index_msd(root).depths() == {"a": 2, "b": 5}
  assert index_lib.index_msd(root, max_cases=1).case_ids == ("a",)
  assert index.select(["b"]).case_ids == ("b",) and index.select(["b", "a"]).cases == index.cases
  with pytest.raises(InputError, match=r"has no case\(s\) \['z'\]"):
    index.select(["a", "z"])
  dataset = data.load_volumes(index.select(["b"]))
  assert [v.case_id for v in dataset.volumes] == ["b"] and dataset.volumes[0].image.shape == (4, 3, 5, 2)
  assert dataset.volumes[0].spacing == b.spacing and dataset.channel_names == ("T2", "ADC")


def _corrupt_payload_keep_header(path):
  """Flips bytes far behind the header: in the deflate stream of a .nii.gz, in the voxels of a .nii."""
  raw = bytearray(path.read_bytes())
  for i in range(len(raw) - 2000, len(raw) - 1900):
    raw[i] ^= 0xFF
  path.write_bytes(bytes(raw))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_index_accepts_a_damaged_payload_that_load_rejects(tmp_path, suffix):
  image = np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32)
  root = tmp_path / "ds"
  _write_nifti(root / "imagesTr" / f"c{suffix}", image)
  _write_nifti(root / "labelsTr" / f"c{suffix}", np.zeros(image.shape, np.uint8))
  (root / "dataset.json").write_text(json.dumps({"labels": {"0": "bg"}, "training": [
      {"image": f"./imagesTr/c{suffix}", "label": f"./labelsTr/c{suffix}"}]}))
  path = root / "imagesTr" / f"c{suffix}"
  if suffix == ".nii":
    _truncate(path)
  else:
    _corrupt_payload_keep_header(path)
  assert index_lib.index_msd(root).cases[0].shape == (20, 20, 20)
  assert str(path) in _expect_error(root, "cannot read NIfTI")


def test_a_file_changed_after_indexing_is_rejected(tmp_path):
  root = _write_dataset(tmp_path / "ds", {"c": _case(shape=(3, 4, 5))})
  index = index_lib.index_msd(root)
  image, label = _case(shape=(3, 4, 6))
  _write_nifti(root / "imagesTr" / "c.nii.gz", image)
  with pytest.raises(InputError, match="changed since it was indexed"):
    data.load_volumes(index)


# ---------------------------------------------------------------------------------------------------------------------
# Splits and shapes.
# ---------------------------------------------------------------------------------------------------------------------


def test_split_cases_is_seeded_disjoint_sorted_and_order_independent():
  ids = [f"case_{i:03d}" for i in range(30)]
  split = split_lib.split_cases(ids, num_train=12, num_val=5, num_test=8, seed=3)
  assert {k: len(v) for k, v in split.items()} == {"train": 12, "val": 5, "test": 8}
  assert all(v == sorted(v) for v in split.values())
  assert len(set(split["train"]) | set(split["val"]) | set(split["test"])) == 25
  shuffled = list(np.random.default_rng(0).permutation(ids))
  assert split_lib.split_cases(shuffled, num_train=12, num_val=5, num_test=8, seed=3) == split
  assert split_lib.split_cases(ids, num_train=12, num_val=5, num_test=8, seed=4) != split
  # The test set does not move when only the training pool size changes.
  assert split_lib.split_cases(ids, num_train=3, num_val=5, num_test=8, seed=3)["test"] == split["test"]
  assert split_lib.split_cases(ids, num_train=30, num_val=0, num_test=0, seed=0)["train"] == ids
  # train 0 takes every case left after test and validation: the same test and validation cases.
  rest = split_lib.split_cases(ids, num_train=0, num_val=5, num_test=8, seed=3)
  assert (rest["test"], rest["val"]) == (split["test"], split["val"]) and len(rest["train"]) == len(ids) - 13


def test_split_cases_rejects_bad_counts():
  ids = ["a", "b", "c"]
  with pytest.raises(InputError, match=r"train \+ val \+ test = 2 \+ 1 \+ 1 exceeds the 3 cases; set "
                                       r"--config.data.split.train \(0: every case left after val and test\)"):
    split_lib.split_cases(ids, num_train=2, num_val=1, num_test=1, seed=0)
  with pytest.raises(InputError, match="leaves no training case among the 3 cases"):
    split_lib.split_cases(ids, num_train=0, num_val=1, num_test=2, seed=0)
  with pytest.raises(InputError, match="num_val"):
    split_lib.split_cases(ids, num_train=1, num_val=-1, num_test=1, seed=0)
  with pytest.raises(InputError, match="duplicate"):
    split_lib.split_cases(["a", "a"], num_train=1, num_val=0, num_test=0, seed=0)


def test_fit_to_shape_pads_at_the_end_and_crops_the_centre():
  array = np.arange(2 * 6 * 3 * 2).reshape(2, 6, 3, 2) + 1
  out, valid, offsets = padding.fit_to_shape(array, (4, 5))
  assert out.shape == (2, 4, 5, 2) and valid.shape == (2, 4, 5) and offsets == (1, 0)
  np.testing.assert_array_equal(out[:, :, :3], array[:, 1:5])
  np.testing.assert_array_equal(out[:, :, 3:], 0)
  np.testing.assert_array_equal(valid, np.broadcast_to(np.arange(5) < 3, (2, 4, 5)))
  back = padding.unfit(out[..., 0], (6, 3), offsets)
  expected = array[..., 0].copy()
  expected[:, [0, 5]] = 0
  np.testing.assert_array_equal(back, expected)


def test_fit_to_shape_identity_and_odd_crop():
  array = np.arange(1 * 5 * 4).reshape(1, 5, 4)
  out, valid, offsets = padding.fit_to_shape(array, (5, 4))
  np.testing.assert_array_equal(out, array)
  assert valid.all() and offsets == (0, 0)
  out, valid, offsets = padding.fit_to_shape(array, (2, 1))
  assert offsets == (1, 1) and valid.all()
  np.testing.assert_array_equal(out[0], [[5], [9]])
  np.testing.assert_array_equal(padding.unfit(out, (5, 4), offsets)[0],
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
    image = vol.image.astype(np.float64)
    assert vol.image.dtype == np.float16 and vol.label.dtype == np.uint8
    # Exactly 0 and 1 before the rounding to float16, which moves them by up to 1.1e-4 here (2**-11 = 4.9e-4).
    assert abs(image.mean()) < 2.**-11 and abs(image.std() - 1.) < 2.**-11


# ---------------------------------------------------------------------------------------------------------------------
# nnU-Net v2 layout and the ignore label.
# ---------------------------------------------------------------------------------------------------------------------


def _write_v2(root, cases, labels, channel_names=("T2", "ADC"), file_ending=".nii.gz"):
  """cases: {case_id: ([channel images], label)}; nnU-Net v2 layout with one file per channel; returns root."""
  root = pathlib.Path(root)
  for case_id, (images, label) in cases.items():
    for i, image in enumerate(images):
      _write_nifti(root / "imagesTr" / f"{case_id}_{i:04d}{file_ending}", image)
    _write_nifti(root / "labelsTr" / f"{case_id}{file_ending}", label)
  meta = {"channel_names": {str(i): n for i, n in enumerate(channel_names)}, "labels": labels,
          "numTraining": len(cases), "file_ending": file_ending}
  (root / "dataset.json").write_text(json.dumps(meta))
  return root


def test_ignore_label_is_not_a_class_and_is_kept_in_labels(tmp_path):
  image, label = _case()
  label[0, 0, :2] = 3
  labels = {"background": 0, "a": 1, "b": 2, "ignore": 3}
  root = _write_v2(tmp_path / "v2", {"c": ([image, 2 * image], label)}, labels)
  index = index_lib.index_msd(root)
  assert index.class_names == ("background", "a", "b") and index.num_classes == 3 and index.ignore_label == 3
  ds = data.load_volumes(index)
  assert ds.ignore_label == 3 and ds.num_classes == 3
  vol = ds.volumes[0]
  assert vol.label.dtype == np.uint8 and vol.label.max() == 3
  np.testing.assert_array_equal(vol.label, np.moveaxis(label, 2, 0))
  # The MSD spelling of labels too; no ignore label gives None.
  root = _write_dataset(tmp_path / "msd", {"c": _case()}, labels={"0": "background", "1": "x", "2": "ignore"})
  assert index_lib.index_msd(root).ignore_label == 2 and index_lib.index_msd(root).class_names == ("background", "x")
  assert index_lib.index_msd(_write_dataset(tmp_path / "plain", {"c": _case()})).ignore_label is None


def test_ignore_label_must_be_the_highest_value(tmp_path):
  root = _write_v2(tmp_path / "v2", {"c": ([_case()[0]] * 2, _case()[1])}, {"background": 0, "ignore": 1, "a": 2})
  _expect_error(root, "'ignore' must have the highest value")


def test_nnunet_v2_channels_are_separate_files_in_channel_order(tmp_path):
  cases = {f"p{i}": ([_case(seed=i)[0], _case(seed=10 + i)[0] * 50.], _case(seed=i)[1]) for i in range(2)}
  root = _write_v2(tmp_path / "v2", cases, {"background": 0, "a": 1, "b": 2})
  ds = data.load_msd(root, slicing_axis=0)
  assert ds.channel_names == ("T2", "ADC") and [v.case_id for v in ds.volumes] == ["p0", "p1"]
  for vol, (images, _) in zip(ds.volumes, cases.values()):
    for c in range(2):
      _assert_float16_of(vol.image[..., c], _zscore(images[c]))
  # Per-channel normalisation items: "ct:LO:HI:MEAN:STD" on the first channel, z-score on the second.
  ds = data.load_msd(root, slicing_axis=0, normalization="ct:90:110:100:5,zscore")
  _assert_float16_of(ds.volumes[0].image[..., 0], (np.clip(cases["p0"][0][0].astype(np.float64), 90, 110) - 100) / 5)


@pytest.mark.parametrize("problem,fragment", [
    ("missing_channel", "missing: the image of channel 1 ('ADC') of case 'c'"),
    ("file_ending", "no label files ending in '.nii'; found e.g. 'c.nii.gz'"),
    ("no_labels", "lacks 'labels'"),
    ("undeclared", "label values [4] are not declared in dataset.json 'labels' (0..2 and 3 ('ignore'))"),
])
def test_nnunet_v2_bad_input(tmp_path, problem, fragment):
  image, label = _case()
  labels = {"background": 0, "a": 1, "b": 2, "ignore": 3}
  if problem == "undeclared":
    label[0, 0, 0] = 4
  root = _write_v2(tmp_path / "v2", {"c": ([image, image], label)}, labels)
  meta = json.loads((root / "dataset.json").read_text())
  if problem == "missing_channel":
    (root / "imagesTr" / "c_0001.nii.gz").unlink()
  elif problem == "file_ending":
    meta["file_ending"] = ".nii"
  elif problem == "no_labels":
    del meta["labels"]
  (root / "dataset.json").write_text(json.dumps(meta))
  _expect_error(root, fragment)


def test_one_layout_detector_for_a_dataset_json_with_both_layouts_keys(tmp_path):
  both = lambda meta: meta.update(modality={"0": "T2", "1": "ADC"}, channel_names={"0": "T2", "1": "ADC"})
  # MSD: a training list of 4D images, plus nnU-Net v2's channel_names.
  msd = phantom.write_phantom(tmp_path / "msd", num_cases=3, shape=(16, 16, 8), num_channels=2)
  meta = json.loads((msd / "dataset.json").read_text())
  both(meta)
  (msd / "dataset.json").write_text(json.dumps(meta))
  assert layouts.detect_layout(msd / "dataset.json", meta)[0] == layouts.MSD
  # nnU-Net v2: channel files, plus MSD's modality.
  image, label = _case()
  v2 = _write_v2(tmp_path / "v2", {"c": ([image, image], label)}, {"background": 0, "a": 1, "b": 2})
  meta_v2 = json.loads((v2 / "dataset.json").read_text())
  both(meta_v2)
  (v2 / "dataset.json").write_text(json.dumps(meta_v2))
  layout, why = layouts.detect_layout(v2 / "dataset.json", meta_v2)
  assert layout == layouts.NNUNET and "channel files" in why
  # Every mode reads each folder the same way: training and --check (index_msd), plan and predict (index_images).
  for root, cases in ((msd, ["phantom_000", "phantom_001", "phantom_002"]), (v2, ["c"])):
    index = index_lib.index_msd(root)
    images = index_lib.index_images(root)
    assert [c.case_id for c in index.cases] == [c.case_id for c in images.cases] == cases
    assert index.channel_names == ("T2", "ADC") and images.cases[0].num_channels == 2
