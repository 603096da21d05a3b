"""Masked losses: hand-computed values and zero gradient off the annotated voxels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slicejax.model import losses


def test_cross_entropy_hand_computed():
  logits = jnp.array([[0.0, 0.0], [np.log(3.0), 0.0], [5.0, -5.0]])
  labels = jnp.array([0, 0, 1])
  weights = jnp.array([1.0, 2.0, 0.0])
  total, norm = losses.masked_cross_entropy(logits, labels, weights)
  # -log(1/2) * 1 + -log(3/4) * 2; the third voxel is not annotated.
  np.testing.assert_allclose(total, np.log(2.0) + 2 * np.log(4.0 / 3.0), rtol=1e-6)
  np.testing.assert_allclose(norm, 3.0)


@pytest.mark.slow
def test_soft_dice_hand_computed():
  # Two voxels, two classes; probabilities of class 1: 0.5 and sigmoid(2).
  logits = jnp.array([[0.0, 0.0], [0.0, 2.0]])
  labels = jnp.array([1, 0])
  weights = jnp.array([1.0, 1.0])
  p1 = np.array([0.5, 1 / (1 + np.exp(-2.0))])
  expected = 1 - (2 * 0.5 + 1e-5) / (p1.sum() + 1 + 1e-5)
  total, norm = losses.masked_soft_dice(logits, labels, weights)
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  assert norm == 1.0


@pytest.mark.slow
def test_empty_mask_gives_zero_loss_and_gradient():
  logits = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  labels = jnp.ones((2, 4, 4), jnp.int32)
  weights = jnp.zeros((2, 4, 4))
  loss_fn = lambda z: losses.segmentation_loss(z, labels, weights)[0]
  loss, grad = jax.value_and_grad(loss_fn)(logits)
  assert loss == 0.0
  assert not np.any(np.asarray(grad))


@pytest.mark.slow
def test_zero_gradient_off_annotated_slices():
  # A batch of 4 slices of which slices 1 and 3 are annotated.
  logits = jax.random.normal(jax.random.key(1), (4, 6, 6, 3))
  labels = jax.random.randint(jax.random.key(2), (4, 6, 6), 0, 3)
  weights = jnp.zeros((4, 6, 6)).at[1].set(1.0).at[3].set(1.0)
  grad = jax.grad(lambda z: losses.segmentation_loss(z, labels, weights)[0])(logits)
  assert not np.any(np.asarray(grad[0])) and not np.any(np.asarray(grad[2]))
  assert np.all(np.abs(np.asarray(grad[1])).sum(-1) > 0)
  # Non-finite logits where nothing is annotated do not leak into the loss or the gradient.
  bad = logits.at[0].set(jnp.nan)
  loss, grad = jax.value_and_grad(lambda z: losses.segmentation_loss(z, labels, weights)[0])(bad)
  np.testing.assert_allclose(loss, losses.segmentation_loss(logits, labels, weights)[0], rtol=1e-6)
  assert not np.any(np.asarray(grad[0]))


@pytest.mark.slow
def test_loss_equals_loss_on_annotated_voxels_only():
  logits = jax.random.normal(jax.random.key(3), (3, 5, 5, 3))
  labels = jax.random.randint(jax.random.key(4), (3, 5, 5), 0, 3)
  weights = jnp.zeros((3, 5, 5)).at[2].set(1.0)
  masked = losses.segmentation_loss(logits, labels, weights)[0]
  alone = losses.segmentation_loss(logits[2:], labels[2:], jnp.ones((1, 5, 5)))[0]
  np.testing.assert_allclose(masked, alone, rtol=1e-6)


@pytest.mark.slow
def test_bfloat16_inputs_reduce_in_float32():
  # 4097 voxels of weight 1 with logits (0, 0): CE sum 4097 log 2 = 2839.79 and normalizer 4097, neither of which
  # bfloat16 holds (it rounds them to 2832 and 4096).
  logits = jnp.zeros((4097, 2), jnp.bfloat16)
  labels = jnp.zeros((4097,), jnp.int32)
  weights = jnp.ones((4097,), jnp.bfloat16)
  total, norm = losses.masked_cross_entropy(logits, labels, weights)
  assert total.dtype == norm.dtype == jnp.float32
  np.testing.assert_allclose(total, 4097 * np.log(2.0), rtol=1e-6)
  assert norm == 4097.0
  loss_fn = lambda z: losses.segmentation_loss(z, labels, weights)[0]
  loss, grad = jax.value_and_grad(loss_fn)(logits)
  assert loss == loss_fn(logits.astype(jnp.float32)) and loss.dtype == jnp.float32
  assert grad.dtype == jnp.bfloat16  # the gradient comes back in the logits' dtype
