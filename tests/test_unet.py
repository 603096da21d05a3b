"""The U-Net: shapes, stage names, per-example independence, 3D convolutions run as 2D ones, sub-pixel upsampling,
bfloat16 compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slicejax.model import unet


@pytest.mark.slow
def test_shapes_and_stage_names_2d():
  model = unet.UNet(num_classes=3, features=4, num_stages=3)
  x = jnp.ones((2, 20, 12, 1))  # 20 and 12 need not be multiples of 4: resize-then-crop handles odd sizes
  params = model.init(jax.random.key(0), x)["params"]
  assert model.apply({"params": params}, x).shape == (2, 20, 12, 3)
  assert sorted(params) == ["down_0_0", "down_0_1", "down_1_0", "down_1_1", "down_2_0", "down_2_1", "head",
                            "up_0_0", "up_0_1", "up_0_resize", "up_1_0", "up_1_1", "up_1_resize"]
  assert params["down_2_0"]["conv"]["kernel"].shape == (3, 3, 8, 16)


@pytest.mark.slow
def test_examples_are_independent():
  # Instance norm keeps no batch statistics: an example's output does not depend on the rest of its batch.
  model = unet.UNet(num_classes=2, features=4, num_stages=2)
  x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
  params = model.init(jax.random.key(0), x)
  np.testing.assert_allclose(model.apply(params, x)[1:2], model.apply(params, x[1:2]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strides", [None, ((1, 2, 2), (2, 2, 2))])
@pytest.mark.slow
def test_3d_as_2d_equals_native(strides):
  x = jax.random.normal(jax.random.key(0), (2, 6, 10, 8, 2))
  native = unet.UNet(num_classes=3, dims=3, features=4, num_stages=3, strides=strides)
  as_2d = unet.UNet(num_classes=3, dims=3, features=4, num_stages=3, strides=strides, conv3d_as_2d=True)
  params = native.init(jax.random.key(1), x)
  # One compiled program per network: op by op, the gradients alone take half a minute on 2 cores.
  def output_and_grads(model):
    loss = lambda p: jnp.sum(model.apply(p, x) ** 2)
    return jax.jit(lambda p: (model.apply(p, x), jax.grad(loss)(p)))(params)
  outputs, grads = zip(*[output_and_grads(m) for m in (native, as_2d)])
  np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(jnp.abs(a).max()))


@pytest.mark.slow
def test_anisotropic_kernels_and_wrong_rank():
  model = unet.UNet(num_classes=2, dims=3, features=4, num_stages=2, kernel_sizes=((1, 3, 3), (3, 3, 3)),
                    strides=((1, 2, 2),))
  x = jnp.ones((1, 3, 8, 8, 1))
  params = model.init(jax.random.key(0), x)["params"]
  assert params["down_0_0"]["conv"]["kernel"].shape == (1, 3, 3, 1, 4)
  assert model.apply({"params": params}, x).shape == (1, 3, 8, 8, 2)
  with pytest.raises(ValueError, match="dims=3"):
    model.apply({"params": params}, jnp.ones((1, 8, 8, 1)))


def test_phase_taps_by_hand():
  # Nearest upsampling by 2, then a 3-tap "SAME" convolution: even outputs 2i read rows (i-1, i, i), odd outputs
  # 2i+1 read rows (i, i, i+1); offsets -1, 0, +1 are the middle axis.
  np.testing.assert_array_equal(unet._phase_taps(2, 3), [[[1, 0, 0], [0, 1, 1], [0, 0, 0]],  # pylint: disable=protected-access
                                                         [[0, 0, 0], [1, 1, 0], [0, 0, 1]]])
  np.testing.assert_array_equal(unet._phase_taps(1, 3)[0], np.eye(3))  # pylint: disable=protected-access
  np.testing.assert_array_equal(unet._phase_taps(2, 1), [[[1]], [[1]]])  # pylint: disable=protected-access


@pytest.mark.parametrize("shape,kernel,strides,as_2d", [
    ((2, 5, 6, 3), (3, 3), (2, 2), False),
    ((1, 4, 5, 3), (5, 1), (3, 2), False),
    ((2, 3, 4, 5, 3), (3, 3, 3), (2, 2, 2), False),
    ((2, 3, 4, 5, 3), (1, 3, 3), (1, 2, 2), True),
])
@pytest.mark.slow
def test_upsample_conv_equals_upsample_then_conv(shape, kernel, strides, as_2d):
  x = jax.random.normal(jax.random.key(0), shape)
  w = jax.random.normal(jax.random.key(1), kernel + (shape[-1], 4))

  def reference(x, w):
    for axis, stride in enumerate(strides, start=1):
      x = jnp.repeat(x, stride, axis=axis)
    return unet.conv(x, w, (1,) * len(strides), as_2d)

  expected = reference(x, w)
  got = unet.upsample_conv(x, w, strides, as_2d)
  assert got.shape == expected.shape == shape[:1] + tuple(n * s for n, s in zip(shape[1:-1], strides)) + (4,)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  for a, b in zip(jax.grad(loss(reference), (0, 1))(x, w),
                  jax.grad(loss(lambda x, w: unet.upsample_conv(x, w, strides, as_2d)), (0, 1))(x, w)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(jnp.abs(a).max()))
  with pytest.raises(ValueError, match="odd kernel"):
    unet.upsample_conv(x, jnp.ones((2,) * len(strides) + (shape[-1], 4)), strides, as_2d)


@pytest.mark.parametrize("kwargs, shape", [
    ({}, (2, 10, 12, 1)),  # 10 x 12 -> 5 x 6 -> 3 x 3: sub-pixel upsampling and upsample-crop-convolve
    ({"dims": 3, "strides": ((1, 2, 2), (2, 2, 2)), "conv3d_as_2d": True}, (1, 4, 8, 8, 1)),
])
@pytest.mark.slow
def test_bfloat16_compute_follows_float32(kwargs, shape):
  x = jax.random.normal(jax.random.key(0), shape)
  model = unet.UNet(num_classes=3, features=4, num_stages=3, **kwargs)
  params = jax.jit(model.init)(jax.random.key(1), x)
  exact = jax.jit(model.apply)(params, x)
  mixed = jax.jit(model.clone(dtype=jnp.bfloat16).apply)(params, x)
  assert mixed.dtype == jnp.float32
  # Measured 1.4% for both: every activation is rounded to bfloat16's 8 significant bits, by up to 0.4% each.
  assert jnp.linalg.norm(mixed - exact) / jnp.linalg.norm(exact) < 0.05
