"""One training step of the slicejax U-Net in JAX against the same network, loss and optimiser in PyTorch.

    python bench/vs_torch.py --json                 # 2D and 3D, float32 and bfloat16
    python bench/vs_torch.py --json --dims 3 --dtypes float32 --check
    python bench/vs_torch.py --json --quick --check # tiny sizes, to check the script

Workload (as bench/model_axis.py): a base-16, 4-stage U-Net with instance norm and resize upsampling, 3 classes,
one input channel; 2D: batch 8 of 128 x 128 slices; 3D: batch 2 of 32 x 64 x 64 patches. One step is forward,
masked cross-entropy plus soft Dice on an all-ones mask, backward, global-norm clipping and AdamW with the
warmup-cosine schedule, on one fixed random batch (no sampling or augmentation, so both sides do the same work).
The JAX step is one jitted function built from `slicejax.training.train.make_model`, `slicejax.model.losses` and
`slicejax.training.train.make_optimizer`, donating its state; the PyTorch step is eager `bench/torch_unet.py` with
`torch.set_num_threads(os.cpu_count())` on the CPU (`--torch-threads`), cuDNN autotuning on a GPU. Each framework
runs in a fresh process (one per framework and dims, timing each dtype in turn). PyTorch's CPU thread pool spins
while it waits, so it slows down by orders of magnitude when other processes share its cores: time it on an
otherwise idle machine.

Both sides run in the same precision, named by `dtype` in each record (`--dtypes`): float32 (each framework's
default float32 convolutions, which on recent NVIDIA GPUs both run as TF32: `jax_default_matmul_precision` null,
`torch_conv_fp32_precision` "tf32"), or bfloat16 (slicejax's `model.dtype`, against `torch.autocast` with
bfloat16; on both sides convolutions in bfloat16, parameters, optimiser and loss float32, the 1 x 1 head float32).

Per dims and dtype, one record: `jax_step_s` and `torch_step_s` (median over repetitions of `--steps` steps, per
step) and `jax_over_torch` (their ratio; below 1 means JAX is faster). Peak memory is each process's peak so far,
so for the second dtype of a process it is an upper bound. `--check` also copies the flax initial parameters
into the PyTorch model and, on the CPU, records the largest logit difference and the loss difference before and
after `--check-steps` optimiser steps, failing if they disagree.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from model_axis import (  # pylint: disable=g-import-not-at-top,wrong-import-position
    NETWORK, QUICK_NETWORK, QUICK_WORKLOADS, WORKLOADS)

NUM_CLASSES = 3
TORCH_MISSING = "vs_torch needs PyTorch: pip install -e '.[bench]' (or pip install torch==2.13.0)"


def workload(dims: int, quick: bool) -> dict:
  work = dict((QUICK_WORKLOADS if quick else WORKLOADS)[dims])
  work.update(QUICK_NETWORK if quick else NETWORK)
  return work


def fixed_batch(work: dict, seed: int = 0):
  """A random batch in channels-last layout: images `[B, *S, 1]` float32, labels `[B, *S]` int32."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  shape = (work["batch_size"],) + tuple(work["shape"])
  return rng.normal(size=shape + (1,)).astype(np.float32), rng.integers(0, NUM_CLASSES, size=shape).astype(np.int32)


def make_jax_step(model, tx, train_cfg):
  """Jitted `step(params, opt_state, images, labels) -> (params, opt_state, loss)` on an all-ones mask.

  Args:
    model: a `slicejax.model.unet.UNet`.
    tx: the optax optimiser.
    train_cfg: the `train` block of a config (loss weights).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from slicejax.model import losses  # pylint: disable=g-import-not-at-top

  def loss_fn(params, images, labels):
    logits = model.apply({"params": params}, images)
    loss, _ = losses.segmentation_loss(logits, labels, jnp.ones(labels.shape, jnp.float32),
                                       ce_weight=train_cfg.ce_weight, dice_weight=train_cfg.dice_weight)
    return loss

  def step(params, opt_state, images, labels):
    loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def jax_setup(dims: int, work: dict, dtype: str = "float32"):
  """The slicejax model (computing in `dtype`), optimiser, config and initial parameters for a workload."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top
  from slicejax.training import train  # pylint: disable=g-import-not-at-top

  config = common.step_config(dims, features=work["features"], batch_size=work["batch_size"],
                              stages=work["stages"])
  # 3D models take their size from `config.three_d`.
  config.three_d.update(features=work["features"], num_stages=work["stages"])
  config.model.dtype = dtype
  model = train.make_model(config, NUM_CLASSES, dims)
  tx = train.make_optimizer(config.train)
  params = model.init(jax.random.key(0), jnp.zeros((1,) + tuple(work["shape"]) + (1,)))["params"]
  return config, model, tx, params


def measure_jax(dims: int, work: dict, steps: int, repeats: int, dtype: str) -> dict:
  """Seconds per JAX step on the default backend, computing in `dtype`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top

  config, model, tx, params = jax_setup(dims, work, dtype)
  step = make_jax_step(model, tx, config.train)
  images, labels = (jnp.asarray(a) for a in fixed_batch(work))
  state = [params, tx.init(params)]

  def run():
    for _ in range(steps):
      state[0], state[1], _ = step(state[0], state[1], images, labels)
    jax.block_until_ready(state)

  timing = common.time_calls(run, repeats=repeats)
  return {"step_s": timing["median_s"] / steps, "min_step_s": timing["min_s"] / steps,
          "max_step_s": timing["max_s"] / steps, "peak_memory_mb": common.peak_memory_mb(),
          "jax_compute_dtype": str(model.dtype),
          "jax_default_matmul_precision": jax.config.jax_default_matmul_precision, "machine": common.machine()}


def torch_setup(dims: int, work: dict, config, device, autocast_dtype=None):
  """PyTorch model, optimiser step (under autocast to `autocast_dtype` if given) and the fixed batch
  (channels-first) on `device`."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch_unet  # pylint: disable=g-import-not-at-top

  cfg = config.train
  model = torch_unet.UNet(NUM_CLASSES, dims=dims, features=work["features"], max_features=config.model.max_features,
                          num_stages=work["stages"]).to(device)
  optimizer, scheduler = torch_unet.make_optimizer(
      model, learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_steps, steps=cfg.steps,
      final_lr_fraction=cfg.final_lr_fraction, weight_decay=cfg.weight_decay)
  step = torch_unet.make_train_step(model, optimizer, scheduler, grad_clip=cfg.grad_clip,
                                    ce_weight=cfg.ce_weight, dice_weight=cfg.dice_weight,
                                    autocast_dtype=autocast_dtype)
  images, labels = fixed_batch(work)
  images = torch.from_numpy(images).movedim(-1, 1).contiguous().to(device)
  labels = torch.from_numpy(labels).long().to(device)
  weights = torch.ones(labels.shape, dtype=torch.float32, device=device)
  return model, step, (images, labels, weights)


def torch_device():
  import torch  # pylint: disable=g-import-not-at-top
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def conv_fp32_precision(torch):
  """How cuDNN computes float32 convolutions: "tf32" or "ieee" (`torch.backends.cudnn.conv.fp32_precision` where
  the release has it, else `torch.backends.cudnn.allow_tf32`)."""
  conv = getattr(torch.backends.cudnn, "conv", None)
  if conv is not None and hasattr(conv, "fp32_precision"):
    return conv.fp32_precision
  return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"


def measure_torch(dims: int, work: dict, steps: int, repeats: int, threads: int, dtype: str) -> dict:
  """Seconds per PyTorch step on the GPU if there is one, else on the CPU with `threads` threads; bfloat16 `dtype`
  runs the forward pass under autocast."""
  import torch  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads)
  device = torch_device()
  if device.type == "cuda":
    torch.backends.cudnn.benchmark = True
    torch.cuda.reset_peak_memory_stats()
  config = common.step_config(dims, features=work["features"], batch_size=work["batch_size"], stages=work["stages"])
  autocast = {"float32": None, "bfloat16": torch.bfloat16}[dtype]
  _, step, batch = torch_setup(dims, work, config, device, autocast)

  def run():
    for _ in range(steps):
      step(*batch)
    if device.type == "cuda":
      torch.cuda.synchronize()

  timing = common.time_calls(run, repeats=repeats)
  peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else common.peak_memory_mb()
  return {"step_s": timing["median_s"] / steps, "min_step_s": timing["min_s"] / steps,
          "max_step_s": timing["max_s"] / steps, "peak_memory_mb": peak, "torch": torch.__version__,
          "torch_device": str(device), "torch_threads": torch.get_num_threads(),
          "torch_autocast": None if autocast is None else str(autocast).removeprefix("torch."),
          "torch_conv_fp32_precision": conv_fp32_precision(torch) if device.type == "cuda" else None}


def check(dims: int, work: dict, steps: int) -> dict:
  """Runs both frameworks from the same initial parameters on the same batch and compares them (on the CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch_unet  # pylint: disable=g-import-not-at-top

  config, model, tx, params = jax_setup(dims, work)
  torch_model, torch_step, batch = torch_setup(dims, work, config, torch.device("cpu"))
  torch_unet.load_flax_params(torch_model, params)
  images, labels = (jnp.asarray(a) for a in fixed_batch(work))

  jax_logits = np.asarray(model.apply({"params": params}, images))
  with torch.no_grad():
    torch_logits = torch_model(batch[0]).movedim(1, -1).numpy()
  jax_step = make_jax_step(model, tx, config.train)
  state = [jax.tree.map(jnp.copy, params), tx.init(params)]
  jax_losses, torch_losses = [], []
  for _ in range(steps + 1):
    state[0], state[1], loss = jax_step(state[0], state[1], images, labels)
    jax_losses.append(float(loss))
    torch_losses.append(float(torch_step(*batch)))
  # Each loss is computed before that step's update, so the last pair has seen `steps` updates.
  return {"check_logits_max_abs_diff": float(np.max(np.abs(jax_logits - torch_logits))),
          "check_logits_max_abs": float(np.max(np.abs(jax_logits))),
          "check_loss_abs_diff": abs(jax_losses[0] - torch_losses[0]),
          "check_loss_after_steps_abs_diff": abs(jax_losses[-1] - torch_losses[-1]), "check_steps": steps,
          "check_jax_losses": jax_losses, "check_torch_losses": torch_losses}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--json", action="store_true", help="print only JSON lines")
  parser.add_argument("--dims", default="2,3", help="comma-separated: 2, 3 or 2,3")
  parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
  parser.add_argument("--steps", type=int, default=3, help="steps per timed repetition")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                      help="PyTorch CPU threads (default: every core)")
  parser.add_argument("--check", action="store_true", help="also compare outputs from the same parameters")
  parser.add_argument("--check-steps", type=int, default=3, help="optimiser steps compared by --check")
  parser.add_argument("--tolerance", type=float, default=1e-3,
                      help="--check fails above this difference (relative to the largest logit, and for losses)")
  parser.add_argument("--quick", action="store_true", help="tiny network and batches, 2 repetitions of 1 step")
  parser.add_argument("--one", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.quick:
    args.steps, args.repeats = 1, 2

  dtypes = args.dtypes.split(",")
  if set(dtypes) - {"float32", "bfloat16"}:
    sys.exit(f"vs_torch: --dtypes={args.dtypes}: each must be float32 or bfloat16")
  if args.one:
    what, dims = args.one.split(":")
    work = workload(int(dims), args.quick)
    if what == "jax":
      result = {dtype: measure_jax(int(dims), work, args.steps, args.repeats, dtype) for dtype in dtypes}
    elif what == "torch":
      result = {dtype: measure_torch(int(dims), work, args.steps, args.repeats, args.torch_threads, dtype)
                for dtype in dtypes}
    else:
      result = check(int(dims), work, args.check_steps)
    print(json.dumps(result))
    return

  if importlib.util.find_spec("torch") is None:
    sys.exit(TORCH_MISSING)
  import common  # pylint: disable=g-import-not-at-top

  def run_one(what, dims):
    command = [sys.executable, __file__, f"--one={what}:{dims}", f"--dtypes={args.dtypes}", f"--steps={args.steps}",
               f"--repeats={args.repeats}", f"--check-steps={args.check_steps}",
               f"--torch-threads={args.torch_threads}"] + (["--quick"] if args.quick else [])
    # The check compares float32 results on the CPU, where neither side uses reduced-precision matmuls.
    env = dict(os.environ, JAX_PLATFORMS="cpu") if what == "check" else None
    out = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if out.returncode:
      last = (out.stderr.strip().splitlines() or ["no message"])[-1]
      sys.exit(f"vs_torch {what} dims={dims} failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])

  # The machine fields come from the JAX run: this process never starts a JAX backend, which on a GPU would hold
  # device memory while the next runs go.
  for dims in [int(d) for d in args.dims.split(",")]:
    work = workload(dims, args.quick)
    jax_results, torch_results = run_one("jax", dims), run_one("torch", dims)
    checked = run_one("check", dims) if args.check else None
    for dtype in dtypes:
      jax_result, torch_result = jax_results[dtype], torch_results[dtype]
      record = {"benchmark": "vs_torch", "dims": dims, "dtype": dtype, "batch_size": work["batch_size"],
                "shape": list(work["shape"]), "features": work["features"], "stages": work["stages"],
                "steps": args.steps, "repeats": args.repeats, "quick": args.quick,
                "jax_step_s": jax_result["step_s"], "torch_step_s": torch_result["step_s"],
                "jax_over_torch": jax_result["step_s"] / torch_result["step_s"],
                "jax_min_step_s": jax_result["min_step_s"], "jax_max_step_s": jax_result["max_step_s"],
                "torch_min_step_s": torch_result["min_step_s"], "torch_max_step_s": torch_result["max_step_s"],
                "jax_peak_memory_mb": jax_result["peak_memory_mb"],
                "torch_peak_memory_mb": torch_result["peak_memory_mb"],
                **{k: jax_result[k] for k in ("jax_compute_dtype", "jax_default_matmul_precision")},
                **{k: torch_result[k] for k in ("torch", "torch_device", "torch_threads", "torch_autocast",
                                                "torch_conv_fp32_precision")}, **jax_result["machine"]}
      if checked:  # float32 on the CPU, whatever the dtype timed
        record.update(checked)
        scale = max(checked["check_logits_max_abs"], 1.0)
        if (checked["check_logits_max_abs_diff"] > args.tolerance * scale or
            checked["check_loss_abs_diff"] > args.tolerance or
            checked["check_loss_after_steps_abs_diff"] > args.tolerance):
          common.emit(record, args.json)
          sys.exit(f"vs_torch dims={dims}: JAX and PyTorch disagree beyond tolerance {args.tolerance}")
      common.emit(record, args.json)


if __name__ == "__main__":
  main()
