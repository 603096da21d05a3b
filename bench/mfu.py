"""Model FLOPs utilisation (MFU) of the training step, for 2D and 3D U-Nets in float32 and bfloat16.

    python bench/mfu.py --json                          # 2D and 3D, float32 and bfloat16, M = 8
    python bench/mfu.py --json --dims 3 --dtypes bfloat16 --models 16
    python bench/mfu.py --json --quick                  # tiny sizes, to check the script (CPU too)

Workload: the real slicejax training step (on-device sampling, augmentation, U-Net, masked loss, optimiser) of M
models on the model axis with the backend's default strategy, sized as bench/model_axis.py (2D: batch 8 of
128 x 128 slices; 3D: batch 2 of 32 x 64 x 64 patches; base-16, 4-stage U-Net), with `config.model.dtype` set to
each dtype.

Model FLOPs per step are analytic: the multiply-adds of every convolution of one forward pass, times 2 FLOPs each,
times 3 for training (forward, gradient of the inputs, gradient of the weights), times the batch and M. Norms,
activations, the loss, augmentation and the optimiser are not model FLOPs. MFU = model FLOPs per step / step time
/ the accelerator's peak, where the peak is the dense bfloat16 tensor-core peak for both dtypes (H100 SXM and H200:
989 TFLOP/s), read from the GPU name (`nvidia-smi`, else the JAX device kind); `--peak-tflops` sets it for other
devices. Cross-checks from XLA's cost analysis of the lowered programs (lowered for the host CPU and never
compiled, so they cost no compilation; see `lowered_flops`): `xla_forward_flops` (one model's forward on one batch,
to compare with `analytic_forward_flops`) and `xla_step_flops` (M times the single-model step, which also counts
the work that is not model FLOPs), with `mfu_xla` = xla_step_flops / step time / peak. On a CPU without
`--peak-tflops` the MFU fields are null and `achieved_tflops` is the figure.

Records: per (dims, dtype) first one with `"partial": true` holding the FLOP counts, written before the timed step
compiles, then the complete one; a run cut short keeps the first.
"""

import argparse
import math
import pathlib
import shutil
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from model_axis import (  # pylint: disable=g-import-not-at-top,wrong-import-position
    NETWORK, QUICK_NETWORK, QUICK_WORKLOADS, WORKLOADS)

NUM_CLASSES = 3
# Dense bfloat16 tensor-core peaks in FLOP/s, matched in order against the GPU name.
PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))


def _per_dim(value, dims: int) -> tuple:
  return (value,) * dims if isinstance(value, int) else tuple(value)


def unet_forward_flops(model, input_shape) -> int:
  """Convolution FLOPs (2 per multiply-add) of one forward pass of a `slicejax.model.unet.UNet`.

  Args:
    model: the UNet (its features, stages, kernel sizes, strides, upsampling and classes are read).
    input_shape: `[B, *S, C]`.

  Returns:
    FLOPs of all convolutions, the head included.
  """
  dims = model.dims
  batch, spatial, channels = input_shape[0], tuple(input_shape[1:-1]), input_shape[-1]
  kernels = [_per_dim(k, dims) for k in (model.kernel_sizes or [3] * model.num_stages)]
  strides = [_per_dim(s, dims) for s in (model.strides or [2] * (model.num_stages - 1))]
  widths = [min(model.features * 2**i, model.max_features) for i in range(model.num_stages)]

  def conv(out_spatial, kernel, c_in, c_out):
    return 2 * batch * math.prod(out_spatial) * math.prod(kernel) * c_in * c_out

  sizes, flops = [], 0
  for i, f in enumerate(widths):
    # "SAME" padding: a stride s maps n voxels to ceil(n / s).
    spatial = tuple(-(-n // s) for n, s in zip(spatial, strides[i - 1])) if i else spatial
    sizes.append(spatial)
    flops += conv(spatial, kernels[i], channels, f) + conv(spatial, kernels[i], f, f)
    channels = f
  for i in reversed(range(model.num_stages - 1)):
    f = widths[i]
    # A transposed convolution with kernel = stride does as many multiply-adds as a 1 x 1 conv at the output size.
    up_kernel = kernels[i] if model.upsample == "resize" else (1,) * dims
    flops += conv(sizes[i], up_kernel, channels, f) + conv(sizes[i], kernels[i], 2 * f, f)
    flops += conv(sizes[i], kernels[i], f, f)
    channels = f
  return flops + conv(sizes[0], (1,) * dims, channels, model.num_classes)


def gpu_name() -> str:
  """The first GPU's name from nvidia-smi, else the JAX device kind."""
  import jax  # pylint: disable=g-import-not-at-top
  if shutil.which("nvidia-smi"):
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                         text=True, check=False)
    if out.returncode == 0 and out.stdout.strip():
      return out.stdout.strip().splitlines()[0]
  return getattr(jax.devices()[0], "device_kind", str(jax.devices()[0]))


def peak_flops(name: str):
  """Dense bfloat16 peak FLOP/s of a GPU by name, or None if unknown."""
  return next((peak for key, peak in PEAK_FLOPS if key.lower() in name.lower()), None)


def lowered_flops(fn, *args):
  """FLOPs of `jax.jit(fn)(*args)` from XLA's cost analysis of the lowered program: nothing is compiled.

  The program is lowered for the host's CPU, whatever the default backend: `Lowered.cost_analysis` needs a backend
  that analyses the HLO itself, and the GPU's PJRT plugin does not (jax 0.10 and 0.11 return None there). The count
  is that of the unoptimised program, the same whichever backend it is lowered for.

  Returns:
    The FLOPs, or None where there is no CPU backend (JAX_PLATFORMS without cpu) or no analysis.
  """
  import jax  # pylint: disable=g-import-not-at-top
  try:
    cpu = jax.devices("cpu")[0]
  except RuntimeError:
    return None
  analysis = jax.jit(fn).lower(*jax.device_put(args, cpu)).cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
    analysis = analysis[0] if analysis else None
  return float(analysis["flops"]) if analysis and "flops" in analysis else None


def training_workload(dims: int, num_models: int, work: dict, network: dict, dtype: str = "float32"):
  """The real training step of M models, as bench/model_axis.py builds it.

  2D draws batches of slices from a synthetic bank of slices; 3D draws patches of `work["shape"]` from a synthetic
  bank of volumes twice the patch depth, each model annotating 4 planes per volume.

  Returns:
    (model, tx, state, step, bank, entries): `state` and `entries` stacked `[M, ...]`, `step` the single-model step.
  """
  import common  # pylint: disable=g-import-not-at-top
  from slicejax.training.inputs import three_d
  from slicejax.training import train
  from slicejax.training.inputs import two_d  # pylint: disable=g-import-not-at-top

  shape, batch_size = tuple(work["shape"]), work["batch_size"]
  config = common.step_config(dims, batch_size=batch_size, **network)
  config.model.dtype = dtype
  if dims == 2:
    bank, entries = common.synthetic_bank(shape), common.model_entries(num_models)
    sample_fn = two_d.batch_sampler(config)
  else:
    config.three_d.update(features=network["features"], num_stages=network["stages"], patch=shape,
                          batch_size=batch_size)
    volume = (2 * shape[0],) + shape[1:]
    bank, entries = common.synthetic_volume_bank(volume), common.volume_planes(num_models, volume)
    sample_fn = three_d.batch_sampler(config)
  model, tx, state = common.init_models(config, num_models, shape)
  return model, tx, state, train.make_train_step(model, tx, config, sample_fn), bank, entries


def measure(dims: int, dtype: str, num_models: int, strategy: str, work: dict, network: dict, steps: int,
            repeats: int, peak, emit) -> dict:
  """One (dims, dtype) record; `emit(record)` gets a partial record (FLOPs, no timing) before the step compiles."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top
  from slicejax.training import parallel  # pylint: disable=g-import-not-at-top

  shape = tuple(work["shape"])
  model, _, state, step, bank, entries = training_workload(dims, num_models, work, network, dtype)
  axis = parallel.ModelAxis(strategy, num_models)

  input_shape = (work["batch_size"],) + shape + (1,)
  one = jax.tree.map(lambda a: a[0], (state, entries))
  xla_forward = lowered_flops(lambda p, x: model.apply({"params": p}, x), one[0]["params"], jnp.zeros(input_shape))
  # Whatever the strategy, the M-model step does the work of M single-model steps.
  xla_step = lowered_flops(step, one[0], bank, one[1])
  xla_step = None if xla_step is None else num_models * xla_step
  forward_flops = unet_forward_flops(model, input_shape)
  step_flops = 3 * forward_flops * num_models
  ratio = lambda xla, analytic: None if xla is None else xla / analytic
  flops = {"analytic_forward_flops": forward_flops, "xla_forward_flops": xla_forward,
           "xla_forward_over_analytic": ratio(xla_forward, forward_flops), "analytic_step_flops": step_flops,
           "xla_step_flops": xla_step, "xla_step_over_analytic": ratio(xla_step, step_flops),
           "xla_flops_from": "lowered program (CPU), unoptimised"}
  described = {"benchmark": "mfu", "dims": dims, "dtype": dtype, "models": num_models,
               "batch_size": work["batch_size"], "shape": list(shape), **network, "steps": steps}
  emit(dict(described, partial=True, **flops, **common.machine()))

  mapped = axis.map(step, donate_state=True)
  holder = [axis.from_stacked(state), axis.from_stacked(entries)]
  shared = axis.put_shared(bank)

  def run():
    for _ in range(steps):
      holder[0], _ = mapped(holder[0], shared, holder[1])
    jax.block_until_ready(holder[0])

  timing = common.time_calls(run, repeats=repeats)
  step_s = timing["median_s"] / steps
  return {**described, "strategy": axis.strategy, "step_s": step_s, **flops,
          "achieved_tflops": step_flops / step_s / 1e12, "gpu_name": gpu_name() if jax.default_backend() == "gpu"
          else None, "peak_tflops": peak / 1e12 if peak else None,
          "mfu": step_flops / step_s / peak if peak else None,
          "mfu_xla": xla_step / step_s / peak if peak and xla_step else None,
          **{k: timing[k] for k in ("median_s", "min_s", "max_s", "repeats")}, **common.machine()}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--json", action="store_true", help="print only JSON lines")
  parser.add_argument("--dims", default="2,3", help="comma-separated: 2, 3 or 2,3")
  parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated model dtypes")
  parser.add_argument("--models", type=int, default=8, help="M, models trained together")
  parser.add_argument("--strategy", default="auto", help="model-axis strategy; auto = the backend's default")
  parser.add_argument("--steps", type=int, default=3, help="steps per timed repetition")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--peak-tflops", type=float, help="peak TFLOP/s of the device (default: from the GPU name)")
  parser.add_argument("--quick", action="store_true", help="tiny network and batches, M = 2, 2 repetitions of 1 step")
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top

  network = dict(QUICK_NETWORK if args.quick else NETWORK)
  if args.quick:
    args.models, args.steps, args.repeats = 2, 1, 2
  if args.peak_tflops:
    peak = args.peak_tflops * 1e12
  else:
    peak = peak_flops(gpu_name()) if jax.default_backend() == "gpu" else None
  for dims in [int(d) for d in args.dims.split(",")]:
    work = (QUICK_WORKLOADS if args.quick else WORKLOADS)[dims]
    for dtype in args.dtypes.split(","):
      emit = lambda record: common.emit(dict(record, quick=args.quick), args.json)
      emit(measure(dims, dtype, args.models, args.strategy, work, network, args.steps, args.repeats, peak, emit))


if __name__ == "__main__":
  main()
