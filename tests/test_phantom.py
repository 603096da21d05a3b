"""Tests for slicejax.data.phantom: determinism, layout, realism of the variation, and the two-channel variant."""

import filecmp
import json

import nibabel as nib
import numpy as np
import pytest

from slicejax.data import load as data
from slicejax.data import phantom
from slicejax.errors import InputError

SMALL = (24, 24, 12)


def _files(root):
  return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_same_arguments_give_identical_arrays_and_files(tmp_path):
  a = phantom.write_phantom(tmp_path / "a", num_cases=3, shape=SMALL, seed=5)
  b = phantom.write_phantom(tmp_path / "b", num_cases=3, shape=SMALL, seed=5)
  files = _files(a)
  assert files == _files(b) == ["dataset.json"] + [f"{d}/phantom_00{i}.nii.gz" for d in ("imagesTr", "labelsTr")
                                                   for i in range(3)]
  assert filecmp.cmpfiles(a, b, files, shallow=False)[0] == files
  image, label = phantom.phantom_case(5, 1, SMALL)
  assert label.tobytes() == phantom.phantom_case(5, 1, SMALL)[1].tobytes()
  np.testing.assert_array_equal(image, np.asanyarray(nib.load(str(a / "imagesTr" / "phantom_001.nii.gz")).dataobj))
  np.testing.assert_array_equal(label, np.asanyarray(nib.load(str(a / "labelsTr" / "phantom_001.nii.gz")).dataobj))
  # A case depends on (seed, index) only, not on how many cases are written.
  np.testing.assert_array_equal(phantom.phantom_case(5, 1, SMALL)[0], image)
  assert not np.array_equal(phantom.phantom_case(6, 1, SMALL)[1], label)


def test_existing_phantom_is_reused_and_a_different_one_refused(tmp_path, monkeypatch):
  root = phantom.write_phantom(tmp_path / "p", num_cases=2, shape=SMALL, seed=0)
  before = {f: (root / f).stat().st_mtime_ns for f in _files(root)}
  with monkeypatch.context() as m:
    m.setattr(phantom, "phantom_case", lambda *a, **k: pytest.fail("rewrote an existing phantom"))
    assert phantom.write_phantom(tmp_path / "p", num_cases=2, shape=SMALL, seed=0) == root
  assert {f: (root / f).stat().st_mtime_ns for f in _files(root)} == before
  with pytest.raises(InputError, match="overwrite=True"):
    phantom.write_phantom(root, num_cases=2, shape=SMALL, seed=1)
  phantom.write_phantom(root, num_cases=2, shape=SMALL, seed=1, overwrite=True)
  assert json.loads((root / "dataset.json").read_text())["phantom"]["seed"] == 1
  assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("keep me")
  with pytest.raises(InputError, match=str(other)):
    phantom.write_phantom(other, num_cases=1, shape=SMALL)
  assert (other / "notes.txt").read_text() == "keep me"


def _fail_at_case_one(monkeypatch):
  make_case = phantom.phantom_case

  def fail(seed, index, shape, num_channels):
    if index == 1:
      raise RuntimeError("killed")
    return make_case(seed, index, shape, num_channels)

  monkeypatch.setattr(phantom, "phantom_case", fail)


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
  _fail_at_case_one(monkeypatch)
  with pytest.raises(RuntimeError):
    phantom.write_phantom(tmp_path / "p", num_cases=3, shape=SMALL)
  assert list(tmp_path.iterdir()) == []


CACHED = "phantom_v3_n2_24x24x12_c1_seed0"


def test_cached_phantom_is_keyed_by_its_arguments_and_reused(tmp_path, monkeypatch):
  root = phantom.cached_phantom(tmp_path / "cache", num_cases=2, shape=SMALL, seed=0)
  assert root == tmp_path / "cache" / "phantoms" / CACHED
  reference = phantom.write_phantom(tmp_path / "reference", num_cases=2, shape=SMALL, seed=0)
  assert _files(root) == _files(reference)
  assert filecmp.cmpfiles(root, reference, _files(root), shallow=False)[0] == _files(root)
  with monkeypatch.context() as m:
    m.setattr(phantom, "phantom_case", lambda *a, **k: pytest.fail("rewrote a cached phantom"))
    assert phantom.cached_phantom(tmp_path / "cache", num_cases=2, shape=SMALL, seed=0) == root
  other = phantom.cached_phantom(tmp_path / "cache", num_cases=2, shape=SMALL, num_channels=2, seed=3)
  assert sorted(p.name for p in root.parent.iterdir()) == [CACHED, "phantom_v3_n2_24x24x12_c2_seed3"]
  assert json.loads((other / "dataset.json").read_text())["phantom"]["seed"] == 3
  with pytest.raises(InputError, match="num_channels"):
    phantom.cached_phantom(tmp_path / "cache", num_channels=3)


def test_an_interrupted_or_damaged_cached_phantom_is_never_trusted(tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  with monkeypatch.context() as m:
    _fail_at_case_one(m)
    with pytest.raises(RuntimeError):
      phantom.cached_phantom(cache, num_cases=2, shape=SMALL)
  assert list((cache / "phantoms").iterdir()) == []
  # What a killed process can leave: its private folder, half written. A folder at the final name that lost a file
  # can only come from outside; it is rebuilt too.
  root = phantom.cached_phantom(cache, num_cases=2, shape=SMALL)
  (root / "imagesTr" / "phantom_001.nii.gz").unlink()
  leftover = cache / "phantoms" / f".{CACHED}.killed.building"
  leftover.mkdir()
  (leftover / "dataset.json").write_text("{")
  assert phantom.cached_phantom(cache, num_cases=2, shape=SMALL) == root
  assert len(_files(root)) == 5
  assert sorted(p.name for p in root.parent.iterdir()) == [leftover.name, CACHED]


def test_concurrent_generation_of_one_cached_phantom(tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  make_case = phantom.phantom_case
  raced = []

  def racing(seed, index, shape, num_channels):
    # While this process is building, another one builds and publishes the same phantom.
    if not raced:
      raced.append(None)
      first = phantom.cached_phantom(cache, num_cases=2, shape=SMALL)
      raced.append((first, (first / "dataset.json").stat().st_ino))
    return make_case(seed, index, shape, num_channels)

  monkeypatch.setattr(phantom, "phantom_case", racing)
  root = phantom.cached_phantom(cache, num_cases=2, shape=SMALL)
  # The first copy published stays; the later one is discarded, not swapped in.
  assert raced == [None, (root, (root / "dataset.json").stat().st_ino)]
  assert sorted(p.name for p in root.parent.iterdir()) == [CACHED]
  reference = phantom.write_phantom(tmp_path / "reference", num_cases=2, shape=SMALL)
  assert filecmp.cmpfiles(root, reference, _files(reference), shallow=False)[0] == _files(reference)


def test_bad_arguments():
  for kwargs, key in [({"num_cases": 0}, "num_cases"), ({"shape": (8, 40, 24)}, "shape"),
                      ({"shape": (40, 40)}, "shape"), ({"num_channels": 3}, "num_channels")]:
    with pytest.raises(InputError, match=key):
      phantom.write_phantom("/nonexistent/never-written", **kwargs)


@pytest.fixture(scope="module")
def default_phantom(tmp_path_factory):
  root = phantom.write_phantom(tmp_path_factory.mktemp("phantom") / "p", num_cases=16)
  return data.load_msd(root)


def test_layout_labels_depths_and_spacing(default_phantom):
  ds = default_phantom
  assert ds.name == "Phantom" and ds.class_names == ("background", "core", "rim") and ds.channel_names == ("T2",)
  depths, with_rim = set(), 0
  for vol in ds.volumes:
    assert vol.spacing == (2., 1., 1.) and vol.label.shape[1:] == (40, 40) and vol.image.shape[-1] == 1
    classes = set(np.unique(vol.label).tolist())
    assert classes in ({0, 1, 2}, {0, 1})
    with_rim += 2 in classes
    has_foreground = (vol.label > 0).any(axis=(1, 2))
    # Structures span part of the depth: some slices have foreground and some have none.
    assert 3 <= has_foreground.sum() <= vol.depth - 4
    depths.add(vol.depth)
  assert depths <= set(range(20, 25)) and len(depths) >= 3
  # The rim is a structure of some patients only (about two in three).
  assert 0.45 < with_rim / len(ds.volumes) < 0.85


def test_global_intensity_scale_varies_between_cases():
  stds = [phantom.phantom_case(0, i)[0].std() for i in range(8)]
  assert max(stds) / min(stds) > 5.


def _variation(volumes):
  """(mean |neighbouring slices| within volumes, mean |same slice index| between volumes); volumes [D, H, W, K]."""
  within = np.mean([np.abs(np.diff(v, axis=0)).mean() for v in volumes])
  depth = min(v.shape[0] for v in volumes)
  between = np.mean([np.abs(a[:depth] - b[:depth]).mean() for i, a in enumerate(volumes) for b in volumes[i + 1:]])
  return within, between


def test_volumes_differ_more_than_neighbouring_slices(default_phantom):
  # Measured: images 0.21 within vs 0.50 between, label masks 0.011 vs 0.032 (MSD hippocampus: 0.34 vs 0.78 and
  # 0.009 vs 0.030).
  volumes = default_phantom.volumes
  within, between = _variation([v.image for v in volumes])
  assert between > 1.8 * within, (within, between)
  masks = [(v.label[..., None] == np.array([1, 2])).astype(np.float32) for v in volumes]
  within, between = _variation(masks)
  assert between > 2. * within, (within, between)


def test_structures_are_bright_and_dark_but_not_separable_by_intensity_alone(default_phantom):
  image = np.concatenate([v.image[..., 0].ravel() for v in default_phantom.volumes])
  label = np.concatenate([v.label.ravel() for v in default_phantom.volumes])
  medians = [np.median(image[label == k]) for k in range(3)]
  assert medians[1] > medians[0] + 1.5 and medians[2] < medians[1] - 1.5
  core = label == 1
  best = max(2 * (core & (image > t)).sum() / (core.sum() + (image > t).sum()) for t in np.linspace(0., 3., 31))
  # A global threshold reaches about 0.67 Dice on the core; a small U-Net gets above 0.95.
  assert 0.4 < best < 0.85


def test_two_channels_write_4d_images_and_modality(tmp_path):
  root = phantom.write_phantom(tmp_path / "p2", num_cases=3, shape=SMALL, num_channels=2)
  meta = json.loads((root / "dataset.json").read_text())
  assert meta["modality"] == {"0": "T2", "1": "ADC"} and meta["tensorImageSize"] == "4D"
  raw = nib.load(str(root / "imagesTr" / "phantom_000.nii.gz"))
  label = np.asanyarray(nib.load(str(root / "labelsTr" / "phantom_000.nii.gz")).dataobj)
  assert raw.shape[3] == 2 and raw.shape[:3] == label.shape
  t2, adc = np.moveaxis(np.asanyarray(raw.dataobj), -1, 0)
  # The ADC-like channel inverts the contrast of the structures.
  assert t2[label == 1].mean() > t2[label == 2].mean() and adc[label == 1].mean() < adc[label == 2].mean()
  ds = data.load_msd(root)
  assert ds.channel_names == ("T2", "ADC") and ds.volumes[0].image.shape[-1] == 2


def test_cases_differ_like_patients(default_phantom):
  # Lesion size, contrast and the presence of the rim vary between cases, not only their intensity scale.
  volumes = default_phantom.volumes
  core_voxels = [int((v.label == 1).sum()) for v in volumes]
  assert max(core_voxels) > 4 * min(core_voxels)
  # Contrast of the core to the body, in units of each volume's own intensity spread (z-scored images).
  contrast = [float(np.median(v.image[..., 0][v.label == 1]) - np.median(v.image[..., 0][(v.label == 0)
                                                                                        & (v.image[..., 0] > 0)]))
              for v in volumes]
  assert max(contrast) > 1.5 * min(contrast) > 0
