"""The mixed-precision policy of `config.model.dtype`.

With bfloat16 compute, the U-Net's convolutions and activations run in bfloat16 and the images sit on the device in
bfloat16 (half the memory of the image bank); parameters, optimiser state, normalisation statistics, the logits and
every loss reduction stay float32 (see `slicejax.model.unet` and `slicejax.model.losses`), so no loss scaling is needed:
bfloat16
has float32's exponent range and only rounds the mantissa (8 significant bits).

"auto" picks bfloat16 on GPU and TPU, whose matrix units run it several times faster than float32, and float32 on
CPU, where bfloat16 steps are no faster (XLA:CPU) and float32 keeps CPU results as they were.
"""

from typing import Optional

import jax
import jax.numpy as jnp

# Backends whose "auto" compute dtype is bfloat16; any other (the CPU) computes in float32.
_BFLOAT16_BACKENDS = ("gpu", "tpu")


def compute_dtype(config, backend: Optional[str] = None) -> jnp.dtype:
  """The U-Net's compute dtype: `config.model.dtype`, with "auto" resolved for `backend`.

  Args:
    config: the experiment config (`model.dtype` is "auto", "float32" or "bfloat16").
    backend: the platform "auto" resolves for; None means `jax.default_backend()`.
  """
  name = config.model.dtype
  if name == "auto":
    name = "bfloat16" if (backend or jax.default_backend()) in _BFLOAT16_BACKENDS else "float32"
  return jnp.dtype(name)


def bank_dtype(config, backend: Optional[str] = None) -> jnp.dtype:
  """The dtype of images on the device: bfloat16 with bfloat16 compute, else float32 (arguments as `compute_dtype`).

  The U-Net rounds its input to the compute dtype anyway; storing the images rounded only moves that rounding
  before augmentation.
  """
  return jnp.dtype(jnp.bfloat16 if compute_dtype(config, backend) == jnp.bfloat16 else jnp.float32)
