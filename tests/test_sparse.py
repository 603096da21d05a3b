"""Real sparse annotations (`slicejax.sparse`, `losses.without_ignored`): the plan read from ignore-label files, and
training on them equal to training on the same plan as a simulated selection."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slicejax import config_lib
from slicejax import data as data_lib
from slicejax import losses
from slicejax import sparse
from slicejax import study
from slicejax import two_d
from slicejax import unet
from slicejax.errors import InputError

ROOT = pathlib.Path(__file__).resolve().parent.parent
IGNORE = 3


def _volume(case_id, label, seed):
  image = np.random.default_rng(seed).standard_normal(label.shape + (1,)).astype(np.float16)
  return data_lib.Volume(case_id=case_id, image=image, label=label.astype(np.uint8), spacing=(2., 1., 1.),
                         affine=np.eye(4), slicing_axis=2)


def _labels(seed, shape=(5, 8, 8)):
  return np.random.default_rng(seed).integers(0, 3, shape)


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
