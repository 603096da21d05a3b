"""Prediction (`slicejax.modes.predict`): a model restored from a run's workdir writes label maps and probabilities on the
input's grid, with classes only, equal to the network applied directly; a missing workdir is one line, exit 2."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import nibabel as nib
import numpy as np
import pytest

from slicejax import config as config_lib
from slicejax.data import nifti
from slicejax.data import normalize
from slicejax.data import phantom
from slicejax.errors import InputError
from slicejax.modes import predict
from slicejax.training import checkpoint

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A run's workdir holding one untrained tiny 2D model (its initial state as the checkpoint), and images."""
  from slicejax.training import train
  base = tmp_path_factory.mktemp("predict")
  root = phantom.write_phantom(base / "msd", num_cases=3, shape=(16, 16, 8))
  config = config_lib.load(str(ROOT / "configs/demo.py") + ":tiny")
  rundir = base / "run"
  rundir.mkdir()
  (rundir / "config.json").write_text(config.to_json_best_effort())
  (rundir / "groups.json").write_text(json.dumps([{"0": "2d_b8_s4_rho2_fixed_seed0"}]))
  (rundir / "model.json").write_text(json.dumps({
      "class_names": ["background", "core", "rim"], "channel_names": ["T2"], "slicing_axis": 2,
      "target_spacing": [], "shape_2d": [16, 16], "patch_3d": list(config.three_d.patch)}))
  model = train.make_model(config, 3, 2)
  state = train.init_state(model, train.make_optimizer(config.train), [0], (16, 16, 1), base_seed=config.seed)
  saver = checkpoint.GroupCheckpoints(rundir / "checkpoints" / "group_0")
  saver.save(config.train.steps, jax.tree.map(np.asarray, state))
  saver.close()
  return root, rundir, model, jax.tree.map(lambda leaf: leaf[0], state["params"])


@pytest.mark.slow
def test_predictions_round_trip_with_the_inputs_geometry(run, tmp_path):
  root, rundir, model, params = run
  config = config_lib.load(str(ROOT / "configs/predict.py"))
  config.predict.update(model=str(rundir), input=str(root), probabilities=True)
  predict.run(config, tmp_path)
  for path in sorted((root / "imagesTr").glob("*.nii.gz")):
    case = path.name[:-len(".nii.gz")]
    image = nib.load(path)
    label = nib.load(tmp_path / f"{case}.nii.gz")
    probs = nib.load(tmp_path / f"{case}_probabilities.nii.gz")
    np.testing.assert_array_equal(label.affine, image.affine)
    assert label.shape == image.shape and probs.shape == image.shape + (3,)
    assert label.header.get_zooms() == image.header.get_zooms()
    values = np.asarray(label.dataobj)
    assert values.dtype == np.uint8 and set(np.unique(values)) <= {0, 1, 2}
    p = probs.get_fdata()
    np.testing.assert_allclose(p.sum(-1), 1, atol=1e-5)
    np.testing.assert_array_equal(values, p.argmax(-1))
    # The network applied directly to the normalised slices (the volume fills the trained 16 x 16 plane).
    volume = normalize.normalize(nifti.to_volume_order(image.get_fdata()[..., None], 2), "zscore")
    logits = model.apply({"params": params}, volume.astype(np.float32))
    direct = np.asarray(jax.nn.softmax(logits, axis=-1))
    np.testing.assert_allclose(nifti.to_volume_order(p, 2), direct, atol=1e-5)


@pytest.mark.slow
def test_a_missing_model_workdir_exits_2_with_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, str(ROOT / "launch.py"), "--mode=predict", f"--config={ROOT / 'configs/predict.py'}",
       f"--config.predict.model={tmp_path / 'nothing'}", f"--config.predict.input={tmp_path}",
       f"--workdir={tmp_path / 'out'}"], capture_output=True, text=True, env=os.environ)
  assert result.returncode == 2
  assert result.stderr.strip() == (f"error: config.predict.model: {tmp_path / 'nothing'} is not a workdir of a "
                                   "trained run (no config.json)")
  assert not (tmp_path / "out").exists()


def test_inputs_whose_channels_differ_from_the_model_are_refused_before_anything_is_written(run, tmp_path):
  _, rundir, _, _ = run
  two = phantom.write_phantom(tmp_path / "two", num_cases=2, shape=(16, 16, 8), num_channels=2)
  config = config_lib.load(str(ROOT / "configs/predict.py"))
  config.predict.update(model=str(rundir), input=str(two))
  with pytest.raises(InputError, match=r"has 2 channel\(s\) but the model was trained on 1 \(T2\)"):
    predict.run(config, tmp_path / "out")
  assert not (tmp_path / "out").exists()
