"""The slicejax U-Net, loss and optimiser in PyTorch, for `bench/vs_torch.py` only.

Mirrors `slicejax.model.unet.UNet` with `norm="instance"` and `upsample="resize"`: bias-free convolutions with XLA's
"SAME"
padding (asymmetric where XLA pads asymmetrically, so strided convolutions see the same pixels), GroupNorm with
one channel per group, learnable scale and bias and epsilon 1e-6 (flax's `GroupNorm(group_size=1)`), leaky ReLU
0.01, strided-conv downsampling, nearest resize (half-pixel centres, as `jax.image.resize`) plus a convolution for
upsampling, skip concatenation after the upsampled tensor, and a 1 x 1 head with bias. Tensors are channels-first:
`[B, C, H, W]` for 2D and `[B, C, D, H, W]` for 3D. Parameter names follow the flax module names (`down_0_0`,
`up_1_resize`, `head`), so `load_flax_params` can copy a flax model's parameters for equivalence checks.

The loss and optimiser mirror `slicejax.model.losses.segmentation_loss` (masked cross-entropy plus soft Dice over the
foreground classes) and `slicejax.training.train.make_optimizer` (global-norm clipping, then AdamW with linear warmup
and
cosine decay).
"""

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def _same_padding(size: int, kernel: int, stride: int) -> tuple:
  """XLA's "SAME" padding (low, high) of one spatial axis."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class SameConv(nn.Module):
  """Convolution with XLA "SAME" padding; `weight` is `[out, in, *kernel]`."""

  def __init__(self, dims: int, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
               bias: bool = False):
    super().__init__()
    self.dims, self.kernel, self.stride = dims, kernel, stride
    conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(in_channels, out_channels, kernel, stride=stride, bias=bias)
    self.weight, self.bias = conv.weight, conv.bias
    self._conv = F.conv2d if dims == 2 else F.conv3d

  def forward(self, x):
    pads = [_same_padding(n, self.kernel, self.stride) for n in x.shape[2:]]
    if all(lo == hi for lo, hi in pads):
      return self._conv(x, self.weight, self.bias, stride=self.stride, padding=tuple(lo for lo, _ in pads))
    # F.pad takes (low, high) pairs starting from the last axis.
    x = F.pad(x, [p for pair in reversed(pads) for p in pair])
    return self._conv(x, self.weight, self.bias, stride=self.stride)


class ConvBlock(nn.Module):
  """Convolution, instance norm (GroupNorm with one channel per group), leaky ReLU."""

  def __init__(self, dims: int, in_channels: int, out_channels: int, stride: int = 1):
    super().__init__()
    self.conv = SameConv(dims, in_channels, out_channels, 3, stride)
    self.norm = nn.GroupNorm(out_channels, out_channels, eps=1e-6)

  def forward(self, x):
    return F.leaky_relu(self.norm(self.conv(x)), 0.01)


class UNet(nn.Module):
  """U-Net with `num_stages` resolutions, kernel 3 and stride 2 everywhere; maps `[B, C, *S]` to
  `[B, num_classes, *S]` logits."""

  def __init__(self, num_classes: int, dims: int = 2, in_channels: int = 1, features: int = 16,
               max_features: int = 320, num_stages: int = 4):
    super().__init__()
    self.num_stages = num_stages
    widths = [min(features * 2**i, max_features) for i in range(num_stages)]
    self.blocks = nn.ModuleDict()
    previous = in_channels
    for i, f in enumerate(widths):
      self.blocks[f"down_{i}_0"] = ConvBlock(dims, previous, f, 2 if i else 1)
      self.blocks[f"down_{i}_1"] = ConvBlock(dims, f, f)
      previous = f
    for i in reversed(range(num_stages - 1)):
      f = widths[i]
      self.blocks[f"up_{i}_resize"] = SameConv(dims, previous, f, 3)
      self.blocks[f"up_{i}_0"] = ConvBlock(dims, 2 * f, f)
      self.blocks[f"up_{i}_1"] = ConvBlock(dims, f, f)
      previous = f
    self.blocks["head"] = SameConv(dims, previous, num_classes, 1, bias=True)

  def forward(self, x):
    skips = []
    for i in range(self.num_stages):
      x = self.blocks[f"down_{i}_1"](self.blocks[f"down_{i}_0"](x))
      skips.append(x)
    for i in reversed(range(self.num_stages - 1)):
      skip = skips[i]
      x = F.interpolate(x, size=skip.shape[2:], mode="nearest-exact")
      x = torch.cat([self.blocks[f"up_{i}_resize"](x), skip], dim=1)
      x = self.blocks[f"up_{i}_1"](self.blocks[f"up_{i}_0"](x))
    # The head in float32 even under autocast, as slicejax's U-Net computes its logits in float32 in any dtype.
    with torch.autocast(x.device.type, enabled=False):
      return self.blocks["head"](x.float())


def load_flax_params(model: UNet, params) -> None:
  """Copies the parameters of a `slicejax.model.unet.UNet(norm="instance", upsample="resize")` into `model`.

  Args:
    model: a UNet of the same configuration.
    params: the flax model's `params` collection (kernels `[*kernel, in, out]`).
  """
  def to_torch(array):
    return torch.tensor(np.asarray(array, np.float32))

  def kernel(array):
    array = np.asarray(array, np.float32)
    return to_torch(np.transpose(array, (array.ndim - 1, array.ndim - 2) + tuple(range(array.ndim - 2))))

  with torch.no_grad():
    for name, module in model.blocks.items():
      tree = params[name]
      if isinstance(module, ConvBlock):
        module.conv.weight.copy_(kernel(tree["conv"]["kernel"]))
        module.norm.weight.copy_(to_torch(tree["GroupNorm_0"]["scale"]))
        module.norm.bias.copy_(to_torch(tree["GroupNorm_0"]["bias"]))
      else:
        module.weight.copy_(kernel(tree["kernel"]))
        if module.bias is not None:
          module.bias.copy_(to_torch(tree["bias"]))


def _divide(total, normalizer):
  return total / torch.clamp(normalizer, min=1e-12) * (normalizer > 0)


def segmentation_loss(logits, labels, weights, *, ce_weight: float = 1.0, dice_weight: float = 1.0,
                      smooth: float = 1e-5):
  """Masked cross-entropy plus soft Dice, as `slicejax.model.losses.segmentation_loss`.

  Args:
    logits: `[B, K, *S]`.
    labels: `[B, *S]` int64 labels in [0, K).
    weights: `[B, *S]` voxel weights (0 = not annotated).
    ce_weight: weight of the cross-entropy term.
    dice_weight: weight of the Dice term.
    smooth: additive smoothing of the Dice ratio.

  Returns:
    The scalar loss.
  """
  num_classes = logits.shape[1]
  w = weights[:, None]
  logits = torch.where(w > 0, logits, torch.zeros_like(logits))
  picked = F.log_softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]
  ce = _divide(-(picked * weights).sum(), weights.sum())

  probs = F.softmax(logits, dim=1)
  onehot = F.one_hot(labels, num_classes).movedim(-1, 1).to(probs.dtype)
  axes = [0] + list(range(2, logits.ndim))
  intersection = (w * probs * onehot).sum(axes)[1:]
  predicted = (w * probs).sum(axes)[1:]
  target = (w * onehot).sum(axes)[1:]
  dice = (2.0 * intersection + smooth) / (predicted + target + smooth)
  counted = (weights.sum() > 0).to(probs.dtype)
  dice_loss = _divide((1.0 - dice).sum() * counted, (num_classes - 1) * counted)
  return ce_weight * ce + dice_weight * dice_loss


def make_optimizer(model: nn.Module, *, learning_rate: float, warmup_steps: int, steps: int,
                   final_lr_fraction: float, weight_decay: float):
  """AdamW with optax's `warmup_cosine_decay_schedule(0, lr, warmup, steps, lr * final_lr_fraction)`.

  Returns:
    (optimizer, scheduler); call `scheduler.step()` after each `optimizer.step()`.
  """
  optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.999), eps=1e-8,
                                weight_decay=weight_decay)

  def factor(step):
    if step < warmup_steps:
      return step / warmup_steps
    progress = min((step - warmup_steps) / max(steps - warmup_steps, 1), 1.0)
    return final_lr_fraction + (1.0 - final_lr_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))

  return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_train_step(model: nn.Module, optimizer, scheduler, *, grad_clip: float, ce_weight: float,
                    dice_weight: float, autocast_dtype=None):
  """One optimiser step on a fixed batch: `step(images [B, C, *S], labels [B, *S], weights [B, *S]) -> loss`.

  `autocast_dtype` (e.g. torch.bfloat16) runs the forward pass under `torch.autocast`, the counterpart of slicejax's
  `model.dtype`: convolutions in that dtype, parameters, gradients and optimiser state float32; the logits (the head
  runs in float32) and the loss float32. None: everything float32.
  """

  def step(images, labels, weights):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
      logits = model(images)
    loss = segmentation_loss(logits.float(), labels, weights, ce_weight=ce_weight, dice_weight=dice_weight)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    return loss.detach()

  return step
