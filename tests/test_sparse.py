"""Real sparse annotations (`slicejax.study.sparse`, `losses.without_ignored`): the plan read from ignore-label files,
training on them equal to training on the same plan as a simulated selection (one step, and whole 2D and 3D runs on
the phantom), and 3D patches of planes annotated in part."""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slicejax import config as config_lib
from slicejax import console
from slicejax.data import index as index_lib
from slicejax.data import load as data_lib
from slicejax.data import nifti
from slicejax.data import phantom
from slicejax.errors import InputError
from slicejax.model import losses
from slicejax.model import unet
from slicejax.modes import export
from slicejax.report import results
from slicejax.study import grid as study
from slicejax.study import sparse
from slicejax.training.inputs import patches
from slicejax.training.inputs import three_d
from slicejax.training.inputs import two_d
from slicejax.training import train

ROOT = pathlib.Path(__file__).resolve().parent.parent
IGNORE = 3


def _volume(case_id, label, seed):
  image = np.random.default_rng(seed).standard_normal(label.shape + (1,)).astype(np.float16)
  return data_lib.Volume(case_id=case_id, image=image, label=label.astype(np.uint8), spacing=(2., 1., 1.),
                         affine=np.eye(4), slicing_axis=2)


def _labels(seed, shape=(5, 8, 8)):
  return np.random.default_rng(seed).integers(0, 3, shape)


@pytest.mark.slow
def test_ignore_voxels_weigh_nothing_in_the_loss():
  logits = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 4, 3)), jnp.float32)
  labels = jnp.asarray(_labels(1, (2, 4, 4)))
  weights = jnp.ones((2, 4, 4))
  ignored = jnp.asarray(np.random.default_rng(2).random((2, 4, 4)) < 0.4)
  with_ignore = losses.segmentation_loss(logits, jnp.where(ignored, IGNORE, labels), weights)[0]
  masked = losses.segmentation_loss(logits, labels, jnp.where(ignored, 0., weights))[0]
  assert float(with_ignore) == pytest.approx(float(masked), abs=1e-7)
  grad = jax.grad(lambda x: losses.segmentation_loss(x, jnp.where(ignored, IGNORE, labels), weights)[0])(logits)
  assert float(jnp.abs(jnp.where(ignored[..., None], grad, 0.)).max()) == 0.0
  # Without an ignore value the loss is unchanged, bit for bit.
  assert float(losses.segmentation_loss(logits, labels, weights)[0]) == float(
      losses.segmentation_loss(logits, labels, weights * 1.0)[0])


def test_annotated_plan_and_points():
  full = _labels(0)
  sparse_label = np.full(full.shape, IGNORE)
  sparse_label[[1, 3]] = full[[1, 3]]
  sparse_label[4, 0, 0] = 1  # one painted voxel makes a slice annotated
  empty = np.full(full.shape, IGNORE)
  volumes = [_volume("a", sparse_label, 0), _volume("b", empty, 1)]
  plan = sparse.annotated_plan(volumes, IGNORE)
  assert plan == {"a": [1, 3, 4]}  # "b" is left out with a warning
  config = config_lib.load(str(ROOT / "configs/sparse.py"))
  (point,) = sparse.points(config.study, plan)
  assert (point.budget, point.volumes, point.slices_per_volume, point.selection) == (3, 1, 3, "annotated")
  assert sparse.check_study(config.study, IGNORE)
  with pytest.raises(InputError, match="needs labels with an ignore label"):
    sparse.check_study(config.study, None)
  with pytest.raises(InputError, match="no training volume holds an annotated voxel"):
    sparse.annotated_plan(volumes[1:], IGNORE)


@pytest.mark.slow
def test_training_on_ignore_labels_equals_the_simulated_selection():
  """The same plan as a simulated selection (true labels) and as ignore-label files: same batches, loss, gradients."""
  config = config_lib.load(str(ROOT / "configs/demo.py") + ":tiny")
  truth = {c: _labels(i) for i, c in enumerate(("p0", "p1", "p2"))}
  pool = [_volume(c, truth[c], i) for i, c in enumerate(truth)]
  point = study.Point(2, 4, 2, 2, "fixed", False, 0)
  plan = study.make_plan(point, {v.case_id: v.depth for v in pool})
  ignored = []
  for v in pool:
    label = np.full(v.label.shape, IGNORE, np.uint8)
    label[plan.get(v.case_id, [])] = v.label[plan.get(v.case_id, [])]
    ignored.append(_volume(v.case_id, label, list(truth).index(v.case_id)))
  found = sparse.annotated_plan(ignored, IGNORE)
  assert found == plan
  sparse_point = sparse.points(config_lib.load(str(ROOT / "configs/sparse.py")).study, found)[0]

  model = unet.UNet(num_classes=3, dims=2, features=4, num_stages=2)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]

  def loss_and_grads(points, plans, volumes):
    bank, entries, _ = two_d.training_data(config, points, plans, volumes, 3, (8, 8))
    one = jax.tree.map(lambda x: jnp.asarray(x[0]), entries)
    images, labels, weights = two_d.batch_sampler(config)(jax.random.key(7), jax.tree.map(jnp.asarray, bank), one)
    loss = lambda p: losses.segmentation_loss(model.apply({"params": p}, images), labels, weights)[0]
    return jax.value_and_grad(loss)(params)

  simulated = loss_and_grads([point], [plan], pool)
  real = loss_and_grads([sparse_point], [found], ignored)
  assert float(simulated[0]) == float(real[0]) and float(simulated[0]) > 0
  jax.tree.map(np.testing.assert_array_equal, simulated[1], real[1])


# ---------------------------------------------------------------------------------------------------------------------
# Whole runs on the phantom: a study point and the same plan exported as ignore-label files.

def _study_config(root):
  """demo.py:tiny on an 8-case phantom: one 2D and one 3D point, 4 volumes x 2 fixed slices, the whole pool."""
  config = config_lib.load(str(ROOT / "configs/demo.py") + ":tiny")
  config.data.update(source="msd", root=str(root))
  config.data.split.update(train=4, val=1, test=3)
  config.train.update(steps=20, log_every=5)
  config.three_d.patch = (4, 8, 8)  # smaller than the volumes in-plane, so patches are placed, not just cut
  config.study.update(dims=(2, 3), budgets=(8,), slices_per_volume=(2,), selections=("fixed",), reference=False)
  config.study.three_d.update(budgets=(8,), slices_per_volume=(2,), selections=("fixed",), interpolation=(False,))
  return config


def _sparse_config(root, like):
  """configs/sparse.py:3d on the dataset at `root`, in 2D and 3D, with the split, network, schedule and evaluation of
  the config `like`."""
  config = config_lib.load(str(ROOT / "configs/sparse.py") + ":3d")
  config.data.root = str(root)
  config.data.split.update(like.data.split.to_dict())
  for block in ("model", "train", "eval", "three_d", "model_axis"):
    config[block].update(like[block].to_dict())
  config.study.dims = (2, 3)
  return config


def _with_held_out(source, root, cases):
  """An export `source` plus `cases` of the MSD folder `root` with their full labels, for scoring."""
  held_out = [(c, [root / "imagesTr" / f"{c}.nii.gz"],
               nifti.read_array(root / "labelsTr" / f"{c}.nii.gz").astype(np.uint8)) for c in cases]
  return {**source, "cases": source["cases"] + held_out}


@pytest.fixture(scope="module")
def same_plan_runs(tmp_path_factory):
  """The rows and curves of the study's points and of training on their plan exported as ignore-label files.

  The exported dataset holds the point's training volumes (their plan's slices of the labels, the ignore label
  elsewhere) and the study's validation and test volumes with their full labels: every case of the phantom, so the
  same split seed splits it the same way.
  """
  base = tmp_path_factory.mktemp("same_plan")
  root = phantom.write_phantom(base / "msd", num_cases=8, shape=(16, 16, 8))
  simulated = _study_config(root)
  sim_rows = train.train_and_evaluate(simulated, base / "simulated")
  point = sim_rows[0]["name"]
  split = train.split_index(simulated, index_lib.index_msd(root))
  source = _with_held_out(export.from_study(base / "simulated", point), root, split["val"] + split["test"])
  dataset = export.write(base / "Dataset501_Phantom", source)
  real_rows = train.train_and_evaluate(_sparse_config(dataset, simulated), base / "real")
  curves = {name: console.read_curves(base / name / "curves") for name in ("simulated", "real")}
  return base, sim_rows, real_rows, curves


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.slow
def test_the_same_row_from_ignore_label_files_as_from_the_simulated_selection(same_plan_runs, dims):
  base, sim_rows, real_rows, curves = same_plan_runs
  (sim,) = [r for r in sim_rows if r["dims"] == dims]
  (real,) = [r for r in real_rows if r["dims"] == dims]
  assert (sim["name"], real["name"]) == (f"{dims}d_b8_s4_rho2_fixed_seed0", f"{dims}d_b8_s4_rho2_annotated_seed0")
  assert json.loads((base / "simulated/plans" / f"{sim['name']}.json").read_text()) == json.loads(
      (base / "real/plans" / f"{real['name']}.json").read_text())
  # Every field but those naming the selection (and the timings) is equal, per-volume Dice included, bit for bit.
  naming = {"name", "selection"}
  assert set(sim) == set(real)
  assert {k: v for k, v in results.comparable(sim).items() if k not in naming} == {
      k: v for k, v in results.comparable(real).items() if k not in naming}
  assert len(real["per_volume"]["dice"]) == 3 and len(real["val_curve"]["dice"]) == 5
  assert real["dice_mean"] > 0 and np.ptp(np.ravel(real["per_volume"]["dice"]).astype(float)) > 0
  # The loss and validation curves, at every log step.
  for kind in ("loss", "val_dice"):
    steps, values = curves["simulated"][f"{kind}/group_{sim['group']}/{sim['name']}"]
    real_steps, real_values = curves["real"][f"{kind}/group_{real['group']}/{real['name']}"]
    np.testing.assert_array_equal(real_steps, steps)
    np.testing.assert_array_equal(real_values, values)


@pytest.mark.slow
def test_3d_patches_of_a_plane_annotated_in_part_hold_its_annotated_voxels(same_plan_runs, tmp_path):
  """One plane of the export keeps only a 3 x 3 corner of its labels: every patch centred on it holds that corner,
  and ignore voxels weigh 0 in every 3D batch."""
  base, _, _, _ = same_plan_runs
  folder = tmp_path / "Dataset502_Partial"
  shutil.copytree(base / "Dataset501_Phantom", folder)
  config = _sparse_config(folder, _study_config(base / "msd"))
  case, slices = next(iter(json.loads(next((base / "real/plans").glob("3d_*.json")).read_text()).items()))
  path = folder / "labelsTr" / f"{case}.nii.gz"
  label = nifti.read_array(path).astype(np.uint8)
  label[3:, :, slices[0]] = IGNORE
  label[:, 3:, slices[0]] = IGNORE
  nifti.save_like(path, label, nifti.load(path))

  dataset, splits, _, points, plans = train.read_inputs(config)
  point = next(p for p in points if p.dims == 3)
  bank, per_model, _ = three_d.training_data(config, [point], [plans[point.name]], splits["train"],
                                             dataset.num_classes, tuple(config.three_d.patch))
  v = [volume.case_id for volume in splits["train"] if volume.case_id in plans[point.name]].index(case)  # bank row
  assert (bank["labels"][v, slices[0]] == patches.UNANNOTATED).sum() == 16 * 16 - 9
  sample = jax.jit(lambda key, planes: patches.sample_patches(
      key, jax.tree.map(jnp.asarray, bank), planes, tuple(config.three_d.patch), 256,
      foreground_prob=config.three_d.foreground_prob, label_rows=jnp.asarray(per_model["label_rows"][0])))
  # The model's own planes: ignore voxels weigh 0 and no patch is left without a weighted voxel.
  _, labels, weights = sample(jax.random.key(0), jnp.asarray(per_model["planes"][0]))
  labels, weights = np.asarray(labels), np.asarray(weights)
  assert (labels == patches.UNANNOTATED).any() and (weights[labels == patches.UNANNOTATED] == 0).all()
  assert (weights.reshape(256, -1).sum(axis=1) > 0).all()
  # Patches centred on the partial plane alone: each holds its 9 annotated voxels and no other weighted voxel (a
  # uniform in-plane start, 8 x 8 of 16 x 16, would miss the corner in 8 patches of 9).
  only = np.zeros_like(per_model["planes"][0])
  only[v, slices[0]] = 1.0
  _, labels, weights = sample(jax.random.key(1), jnp.asarray(only))
  np.testing.assert_array_equal(np.asarray(weights).reshape(256, -1).sum(axis=1), 9.0)
