"""Independent PyTorch plausibility check of one slicejax study cell.

Self-contained (stdlib + numpy + nibabel + torch); deliberately shares no code
with slicejax. Trains a plain 2D U-Net on exactly the annotated slices listed
in a plan JSON ({case_id: [slice indices along NIfTI axis 2]}) and reports the
mean test Dice over the test cases of a slicejax results row, so the two
figures can be compared.

Example:
  nice -n 5 .venv/bin/python bench/independent_torch.py \
  --plan=/work/runs/conv/grid_b72/plans/2d_b72_s72_rho1_random_seed0.json \
  --results=docs/hippocampus_study/converged/grid_b72/results.jsonl \
  --name=2d_b72_s72_rho1_random_seed0 --steps=2000 --seed=0 \
  --out=/tmp/indep/b72_s72.json
"""

import argparse
import json
import math
import os
import sys
import time

import nibabel as nib
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PAD_H, PAD_W = 48, 64
NUM_CLASSES = 3


def log(msg):
  print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------

def case_paths(root):
  ds = json.load(open(os.path.join(root, "dataset.json")))
  labels = {int(k): v for k, v in ds["labels"].items()}
  paths = {}
  for e in ds["training"]:
    cid = os.path.basename(e["image"]).split(".")[0]
    paths[cid] = (os.path.join(root, e["image"]), os.path.join(root, e["label"]))
  return paths, labels


def load_case(paths, cid):
  """Returns (z-scored image float32 [H,W,Z], label int64 [H,W,Z])."""
  ip, lp = paths[cid]
  img = np.asarray(nib.load(ip).dataobj, dtype=np.float64)
  lab = np.asarray(nib.load(lp).dataobj)
  if img.ndim == 4:
    img = img[..., 0]
  assert img.shape == lab.shape, (cid, img.shape, lab.shape)
  std = img.std()
  img = (img - img.mean()) / (std if std > 0 else 1.0)
  lab = np.rint(lab).astype(np.int64)
  return img.astype(np.float32), lab


def pad_slices(img, lab):
  """[H,W,Z] -> [Z,1,PAD_H,PAD_W] float, [Z,PAD_H,PAD_W] long (padded at end)."""
  h, w, z = img.shape
  assert h <= PAD_H and w <= PAD_W, (h, w)
  x = np.zeros((z, 1, PAD_H, PAD_W), np.float32)
  y = np.zeros((z, PAD_H, PAD_W), np.int64)
  x[:, 0, :h, :w] = np.transpose(img, (2, 0, 1))
  y[:, :h, :w] = np.transpose(lab, (2, 0, 1))
  return x, y


# ----------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------

class ConvBlock(nn.Sequential):
  def __init__(self, cin, cout):
    super().__init__(
      nn.Conv2d(cin, cout, 3, padding=1),
      nn.InstanceNorm2d(cout, affine=True),
      nn.LeakyReLU(0.01, inplace=True),
      nn.Conv2d(cout, cout, 3, padding=1),
      nn.InstanceNorm2d(cout, affine=True),
      nn.LeakyReLU(0.01, inplace=True),
    )


class SJConvBlock(nn.Sequential):
  """Bias-free conv (optionally strided), one-channel-per-group GroupNorm (eps 1e-6), leaky ReLU."""
  def __init__(self, cin, cout, stride=1):
    super().__init__(
      nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
      nn.GroupNorm(cout, cout, eps=1e-6),
      nn.LeakyReLU(0.01, inplace=True),
    )


def lecun_normal_(w):
  fan_in = w.shape[1] * w[0, 0].numel()
  with torch.no_grad():
    # flax's lecun_normal: truncated normal (+-2 sd) rescaled to variance 1 / fan_in
    nn.init.trunc_normal_(w, 0.0, 1.0, -2.0, 2.0)
    w.mul_(math.sqrt(1.0 / fan_in) / 0.87962566103423978)


class UNet2DSlicejax(nn.Module):
  """--arch=slicejax: stride-2 3x3 conv downsampling, nearest resize + 3x3 conv upsampling, no conv bias,
  lecun-normal init, GroupNorm(group size 1, eps 1e-6), 1x1 head with bias."""
  def __init__(self, cin=1, ncls=NUM_CLASSES, base=16, levels=4):
    super().__init__()
    ch = [base * 2 ** i for i in range(levels)]
    self.enc = nn.ModuleList()
    c = cin
    for i, co in enumerate(ch):
      self.enc.append(nn.Sequential(SJConvBlock(c, co, 2 if i else 1), SJConvBlock(co, co)))
      c = co
    self.up = nn.ModuleList()
    self.dec = nn.ModuleList()
    for i in range(levels - 1, 0, -1):
      self.up.append(nn.Conv2d(ch[i], ch[i - 1], 3, padding=1, bias=False))
      self.dec.append(nn.Sequential(SJConvBlock(2 * ch[i - 1], ch[i - 1]), SJConvBlock(ch[i - 1], ch[i - 1])))
    self.head = nn.Conv2d(ch[0], ncls, 1)
    for m in self.modules():
      if isinstance(m, nn.Conv2d) and m is not self.head:
        lecun_normal_(m.weight)

  def forward(self, x):
    skips = []
    for blk in self.enc:
      x = blk(x)
      skips.append(x)
    skips.pop()
    for up, dec in zip(self.up, self.dec):
      x = up(F.interpolate(x, scale_factor=2, mode="nearest"))
      x = dec(torch.cat([x, skips.pop()], dim=1))
    return self.head(x)


class UNet2D(nn.Module):
  def __init__(self, cin=1, ncls=NUM_CLASSES, base=16, levels=4):
    super().__init__()
    ch = [base * 2 ** i for i in range(levels)]
    self.enc = nn.ModuleList()
    c = cin
    for co in ch:
      self.enc.append(ConvBlock(c, co))
      c = co
    self.up = nn.ModuleList()
    self.dec = nn.ModuleList()
    for i in range(levels - 1, 0, -1):
      self.up.append(nn.ConvTranspose2d(ch[i], ch[i - 1], 2, stride=2))
      self.dec.append(ConvBlock(2 * ch[i - 1], ch[i - 1]))
    self.head = nn.Conv2d(ch[0], ncls, 1)

  def forward(self, x):
    skips = []
    for i, blk in enumerate(self.enc):
      x = blk(x)
      if i < len(self.enc) - 1:
        skips.append(x)
        x = F.max_pool2d(x, 2)
    for up, dec in zip(self.up, self.dec):
      x = up(x)
      x = dec(torch.cat([skips.pop(), x], dim=1))
    return self.head(x)


# ----------------------------------------------------------------------------
# training pieces
# ----------------------------------------------------------------------------

def augment(x, y, gen, w=None):
  """x [B,1,H,W] float, y [B,H,W] long; per-sample random augmentation. Optional w [B,H,W] float loss
  weights move with the label (nearest; 0 where read from outside) and are returned third."""
  b = x.shape[0]
  u = lambda *s: torch.rand(*s, generator=gen)
  # flips of each in-plane axis, p 0.5 each
  fh = u(b) < 0.5
  fw = u(b) < 0.5
  x = torch.where(fh[:, None, None, None], x.flip(2), x)
  y = torch.where(fh[:, None, None], y.flip(1), y)
  if w is not None:
    w = torch.where(fh[:, None, None], w.flip(1), w)
  x = torch.where(fw[:, None, None, None], x.flip(3), x)
  y = torch.where(fw[:, None, None], y.flip(2), y)
  if w is not None:
    w = torch.where(fw[:, None, None], w.flip(2), w)
  # rotation +-15 deg and scale 0.85-1.15 with p 0.3
  do = u(b) < 0.3
  if bool(do.any()):
    ang = (u(b) * 2 - 1) * math.radians(15.0)
    sc = 0.85 + 0.3 * u(b)
    ang = torch.where(do, ang, torch.zeros_like(ang))
    sc = torch.where(do, sc, torch.ones_like(sc))
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    xr = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    yr = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                       align_corners=False)[:, 0].round().long()
    x = torch.where(do[:, None, None, None], xr, x)
    y = torch.where(do[:, None, None], yr, y)
    if w is not None:
      wr = F.grid_sample(w[:, None], grid, mode="nearest", padding_mode="zeros",
                         align_corners=False)[:, 0]
      w = torch.where(do[:, None, None], wr, w)
  # intensity scale / shift
  x = x * (0.9 + 0.2 * u(b, 1, 1, 1)) + (u(b, 1, 1, 1) * 0.2 - 0.1)
  if w is not None:
    return x, y, w
  return x, y


def loss_fn(logits, y, smooth=1e-5):
  ce = F.cross_entropy(logits, y)
  p = logits.softmax(1)[:, 1:]                          # [B,2,H,W]
  t = F.one_hot(y, NUM_CLASSES).permute(0, 3, 1, 2)[:, 1:].float()
  inter = (p * t).sum((0, 2, 3))
  denom = p.sum((0, 2, 3)) + t.sum((0, 2, 3))
  dice = (2 * inter + smooth) / (denom + smooth)
  return ce + (1 - dice.mean())


def masked_loss_fn(logits, y, w, smooth=1e-5):
  """--mask_padding: CE mean and batch soft Dice over pixels with weight w > 0 only (slicejax's masking)."""
  wsum = w.sum()
  ce = (F.cross_entropy(logits, y, reduction="none") * w).sum() / wsum.clamp_min(1e-12)
  p = logits.softmax(1)[:, 1:] * w[:, None]
  t = F.one_hot(y, NUM_CLASSES).permute(0, 3, 1, 2)[:, 1:].float() * w[:, None]
  inter = (p * t).sum((0, 2, 3))
  denom = p.sum((0, 2, 3)) + t.sum((0, 2, 3))
  dice = (2 * inter + smooth) / (denom + smooth)
  return ce + (1 - dice.mean())


def lr_at(step, total, base, warmup=50, floor=0.01):
  if step < warmup:
    return base * (step + 1) / warmup
  t = (step - warmup) / max(1, total - warmup)
  return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


# ----------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------

def volume_dice(pred, truth, classes):
  """nnU-Net rule: class absent from both -> skipped; returns dict cls->dice."""
  out = {}
  for c in classes:
    p, t = pred == c, truth == c
    ps, ts = int(p.sum()), int(t.sum())
    if ps + ts == 0:
      continue
    out[c] = 2.0 * int((p & t).sum()) / (ps + ts)
  return out


@torch.no_grad()
def evaluate(model, paths, cases, classes):
  model.eval()
  vol_means, per_class = [], {c: [] for c in classes}
  for cid in cases:
    img, lab = load_case(paths, cid)
    h, w, _ = img.shape
    x, _ = pad_slices(img, lab)
    logits = torch.cat([model(torch.from_numpy(x[i:i + 32]))
              for i in range(0, x.shape[0], 32)])
    pred = logits.argmax(1)[:, :h, :w].numpy().transpose(1, 2, 0)   # [H,W,Z]
    d = volume_dice(pred, lab, classes)
    for c, v in d.items():
      per_class[c].append(v)
    if d:
      vol_means.append(float(np.mean(list(d.values()))))
  model.train()
  return float(np.mean(vol_means)), {c: float(np.mean(v)) if v else float("nan")
                    for c, v in per_class.items()}


# ----------------------------------------------------------------------------

def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--plan", required=True)
  ap.add_argument("--results", required=True, help="slicejax results.jsonl")
  ap.add_argument("--name", required=True, help="row name in --results")
  ap.add_argument("--steps", type=int, default=2000)
  ap.add_argument("--batch_size", type=int, default=16)
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--weight_decay", type=float, default=1e-4)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--features", type=int, default=16)
  ap.add_argument("--data", default=os.environ.get("SLICEJAX_HIPPOCAMPUS"),
                  help="the MSD Task04 Hippocampus folder; default $SLICEJAX_HIPPOCAMPUS")
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--out", default=None)
  ap.add_argument("--arch", choices=("plain", "slicejax"), default="plain",
                  help="plain: max-pool + transposed conv (default); slicejax: strided conv + resize-conv, "
                  "no conv bias, lecun-normal, GroupNorm eps 1e-6")
  ap.add_argument("--init", choices=("default", "lecun"), default="default",
                  help="lecun: re-initialise the 3x3 convolutions of --arch=plain (not the transposed convs "
                  "or the head) with slicejax's lecun-normal")
  ap.add_argument("--mask_padding", action="store_true",
                  help="loss only on the real (unpadded) pixels, as slicejax's loss weights do")
  ap.add_argument("--curve_every", type=int, default=0,
                  help="every N steps also print Dice on the 20 validation cases of the study split (0: off)")
  a = ap.parse_args()
  if not a.data:
    ap.error("--data: give the MSD Task04 Hippocampus folder (or set SLICEJAX_HIPPOCAMPUS)")

  torch.set_num_threads(a.threads)
  torch.manual_seed(a.seed)
  np.random.seed(a.seed)
  gen = torch.Generator().manual_seed(a.seed)

  row = None
  with open(a.results) as f:
    for line in f:
      line = line.strip()
      if line:
        r = json.loads(line)
        if r.get("name") == a.name:
          row = r
  if row is None:
    sys.exit(f"row {a.name!r} not found in {a.results}")
  test_cases = list(row["test_cases"])
  sj_dice = row.get("dice_mean")

  paths, label_names = case_paths(a.data)
  classes = sorted(c for c in label_names if c != 0)
  plan = json.load(open(a.plan))
  assert not set(plan) & set(test_cases), "plan and test cases overlap"

  xs, ys, box_sizes = [], [], []
  for cid, ks in sorted(plan.items()):
    img, lab = load_case(paths, cid)
    x, y = pad_slices(img, lab)
    for k in ks:
      assert 0 <= k < img.shape[2], (cid, k, img.shape)
      xs.append(x[k])
      box_sizes.append(img.shape[:2])
      ys.append(y[k])
  X = torch.from_numpy(np.stack(xs))
  Y = torch.from_numpy(np.stack(ys))
  fg = int((Y > 0).sum())
  log(f"{a.name}: {len(plan)} volumes, {X.shape[0]} slices, {fg} annotated fg pixels; "
    f"{len(test_cases)} test volumes")

  model = (UNet2DSlicejax if a.arch == "slicejax" else UNet2D)(base=a.features)
  if a.init == "lecun":
    for m in model.modules():
      if isinstance(m, nn.Conv2d) and m is not model.head:
        lecun_normal_(m.weight)
  if a.mask_padding:
    Wt = torch.zeros(Y.shape)
    for j, (h, w_) in enumerate(box_sizes):
      Wt[j, :h, :w_] = 1.0
  val_cases = []
  if a.curve_every:
    # the study split: sorted ids permuted with seed 0; 60 test first, then 20 validation
    ids = sorted(paths)
    order = [ids[i] for i in np.random.default_rng(0).permutation(len(ids))]
    assert sorted(order[:60]) == sorted(test_cases), "split reproduction does not match the row's test cases"
    val_cases = sorted(order[60:80])
    assert not set(val_cases) & set(plan)
  curve = []
  opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
  model.train()
  t0 = time.time()
  run_loss = 0.0
  for step in range(a.steps):
    for g in opt.param_groups:
      g["lr"] = lr_at(step, a.steps, a.lr)
    idx = torch.randint(0, X.shape[0], (a.batch_size,), generator=gen)
    if a.mask_padding:
      xb, yb, wb = augment(X[idx], Y[idx], gen, Wt[idx])
      loss = masked_loss_fn(model(xb), yb, wb)
    else:
      xb, yb = augment(X[idx], Y[idx], gen)
      loss = loss_fn(model(xb), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    run_loss += loss.item()
    if (step + 1) % 250 == 0 or step + 1 == a.steps:
      n = (step + 1) % 250 or 250
      log(f"step {step + 1}/{a.steps} loss {run_loss / n:.4f} "
        f"elapsed {time.time() - t0:.1f}s")
      run_loss = 0.0
    if a.curve_every and ((step + 1) % a.curve_every == 0 or step + 1 == a.steps):
      vd, _ = evaluate(model, paths, val_cases, classes)
      curve.append((step + 1, vd))
      log(f"step {step + 1} val_dice {vd:.4f}")
  train_s = time.time() - t0

  t1 = time.time()
  dice, per_class = evaluate(model, paths, test_cases, classes)
  eval_s = time.time() - t1

  res = {
    "name": a.name,
    "plan": a.plan,
    "steps": a.steps,
    "seed": a.seed,
    "dice_mean": dice,
    "dice_per_class": {label_names[c]: v for c, v in per_class.items()},
    "slicejax_dice_mean": sj_dice,
    "slicejax_dice_per_class": row.get("dice_per_class"),
    "difference": (dice - sj_dice) if sj_dice is not None else None,
    "train_seconds": train_s,
    "eval_seconds": eval_s,
    "annotated_slices": int(X.shape[0]),
    "annotated_foreground": fg,
    "slicejax_annotated_foreground": row.get("annotated_foreground"),
  }
  if a.arch != "plain" or a.mask_padding or a.init != "default":
    res.update(arch=a.arch, mask_padding=a.mask_padding, init=a.init)
  if a.curve_every:
    res.update(val_curve=curve, slicejax_val_curve=row.get("val_curve"))
  line = json.dumps(res)
  print(line, flush=True)
  if a.out:
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  main()
