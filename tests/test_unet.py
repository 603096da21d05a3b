"""The U-Net: shapes, stage names, per-example independence, and 3D convolutions run as 2D ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slicejax import unet


def test_shapes_and_stage_names_2d():
  model = unet.UNet(num_classes=3, features=4, num_stages=3)
  x = jnp.ones((2, 20, 12, 1))  # 20 and 12 need not be multiples of 4: resize-then-crop handles odd sizes
  params = model.init(jax.random.key(0), x)["params"]
  assert model.apply({"params": params}, x).shape == (2, 20, 12, 3)
  assert sorted(params) == ["down_0_0", "down_0_1", "down_1_0", "down_1_1", "down_2_0", "down_2_1", "head",
                            "up_0_0", "up_0_1", "up_0_resize", "up_1_0", "up_1_1", "up_1_resize"]
  assert params["down_2_0"]["conv"]["kernel"].shape == (3, 3, 8, 16)


def test_examples_are_independent():
  # Instance norm keeps no batch statistics: an example's output does not depend on the rest of its batch.
  model = unet.UNet(num_classes=2, features=4, num_stages=2)
  x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
  params = model.init(jax.random.key(0), x)
  np.testing.assert_allclose(model.apply(params, x)[1:2], model.apply(params, x[1:2]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strides", [None, ((1, 2, 2), (2, 2, 2))])
def test_3d_as_2d_equals_native(strides):
  x = jax.random.normal(jax.random.key(0), (2, 6, 10, 8, 2))
  native = unet.UNet(num_classes=3, dims=3, features=4, num_stages=3, strides=strides)
  as_2d = unet.UNet(num_classes=3, dims=3, features=4, num_stages=3, strides=strides, conv3d_as_2d=True)
  params = native.init(jax.random.key(1), x)
  np.testing.assert_allclose(native.apply(params, x), as_2d.apply(params, x), rtol=1e-4, atol=1e-5)
  grads = [jax.grad(lambda p, m=m: jnp.sum(m.apply(p, x) ** 2))(params) for m in (native, as_2d)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(jnp.abs(a).max()))


def test_anisotropic_kernels_and_wrong_rank():
  model = unet.UNet(num_classes=2, dims=3, features=4, num_stages=2, kernel_sizes=((1, 3, 3), (3, 3, 3)),
                    strides=((1, 2, 2),))
  x = jnp.ones((1, 3, 8, 8, 1))
  params = model.init(jax.random.key(0), x)["params"]
  assert params["down_0_0"]["conv"]["kernel"].shape == (1, 3, 3, 1, 4)
  assert model.apply({"params": params}, x).shape == (1, 3, 8, 8, 2)
  with pytest.raises(ValueError, match="dims=3"):
    model.apply({"params": params}, jnp.ones((1, 8, 8, 1)))
