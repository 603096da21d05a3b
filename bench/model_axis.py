"""Model-axis throughput: every strategy against M single-model runs one after another.

    python bench/model_axis.py --json                      # the default strategy, M = 8, 2D
    python bench/model_axis.py --json --strategies=all --models=1,4,8,16
    python bench/model_axis.py --json --dims 3
    python bench/model_axis.py --json --strategies=loop --chunk=2   # models per compiled program of `loop`
    python bench/model_axis.py --json --quick --models=1,8          # tiny sizes, to check the script
    python bench/model_axis.py --json --shape=48,64 --batch-size=16 --models=4 --chunk=2   # another workload

Workload: the real training step of slicejax (on-device sampling, augmentation, U-Net, masked loss, Adam) for a
base-16 U-Net, 2D: batch 8 of 128 x 128 slices; 3D: batch 2 of 32 x 64 x 64 patches. The baseline trains each of
the M models with its own single-model jitted step, one model after the other. Throughput is models x steps per
second; `ratio_vs_sequential` is a strategy's throughput over the baseline's. Each (strategy, M) runs in a fresh
process so that its peak memory is its own; this process never starts a JAX backend, so that on a GPU it holds no
device memory while they run. A run that fails leaves a record with its `error` (its stderr goes to stderr), the
other runs go on, and the script exits non-zero at the end. `--quick`: a base-4, 3-stage U-Net on 2D batches of
2 x 32 x 32 (3D: 1 x 8 x 16 x 16), 2 repetitions of 1 step, only to check the script. `--shape` and `--batch-size`
replace the workload's input shape and batch (the hippocampus study's slices: `--shape=48,64 --batch-size=16`).
"""

import argparse
import json
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

WORKLOADS = {2: dict(shape=(128, 128), batch_size=8), 3: dict(shape=(32, 64, 64), batch_size=2)}
NETWORK = dict(features=16, stages=4)
# `--quick` sizes, shared by the other scripts' `--quick`.
QUICK_WORKLOADS = {2: dict(shape=(32, 32), batch_size=2), 3: dict(shape=(8, 16, 16), batch_size=1)}
QUICK_NETWORK = dict(features=4, stages=3)


def measure(strategy: str, num_models: int, dims: int, steps: int, repeats: int, chunk: int, quick: bool,
            shape: tuple | None = None, batch_size: int | None = None) -> dict:
  """One (strategy, M) run: `strategy` "baseline" (M single-model runs in turn), "auto" or one of the strategies.

  `shape` ((H, W) or (D, H, W)) and `batch_size` replace the workload's when given.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top
  from slicejax.training import parallel
  from slicejax.training.inputs import three_d
  from slicejax.training import train
  from slicejax.training.inputs import two_d  # pylint: disable=g-import-not-at-top

  work, network = (QUICK_WORKLOADS, QUICK_NETWORK) if quick else (WORKLOADS, NETWORK)
  work = dict(work[dims])
  if shape:
    work["shape"] = tuple(shape)
  if batch_size:
    work["batch_size"] = batch_size
  config = common.step_config(dims, batch_size=work["batch_size"], **network)
  if dims == 2:
    bank = common.synthetic_bank(work["shape"])
    entries = common.model_entries(num_models)
    sample_fn = two_d.batch_sampler(config)
  else:
    config.three_d.update(features=network["features"], num_stages=network["stages"], patch=work["shape"],
                          batch_size=work["batch_size"])
    volume = (work["shape"][0] * 2,) + tuple(work["shape"][1:])
    bank = common.synthetic_volume_bank(volume)
    entries = common.volume_planes(num_models, volume)
    sample_fn = three_d.batch_sampler(config)
  model, tx, state = common.init_models(config, num_models, work["shape"])
  step = train.make_train_step(model, tx, config, sample_fn)

  if strategy == "baseline":
    single = jax.jit(step, donate_argnums=0)
    states = parallel.unstack_tree(state, num_models)
    per_model = parallel.unstack_tree(entries, num_models)

    def run():
      nonlocal states
      for m in range(num_models):
        s = states[m]
        for _ in range(steps):
          s, _ = single(s, bank, per_model[m])
        states[m] = jax.block_until_ready(s)
  else:
    axis = parallel.ModelAxis(strategy, num_models, chunk)
    mapped = axis.map(step, donate_state=True)
    axis_state, axis_entries = axis.from_stacked(state), axis.from_stacked(entries)

    def run():
      nonlocal axis_state
      for _ in range(steps):
        axis_state, _ = mapped(axis_state, bank, axis_entries)
      jax.block_until_ready(axis_state)

  timing = common.time_calls(run, repeats=repeats)
  return {"benchmark": "model_axis", "dims": dims, "strategy": strategy if strategy == "baseline" else axis.strategy,
          "models": num_models, "steps": steps, "batch_size": work["batch_size"], "shape": list(work["shape"]),
          **network, "quick": quick,
          "chunk": None if strategy == "baseline" else getattr(axis, "chunk", None),
          "throughput": num_models * steps / timing["median_s"], **timing,
          "peak_memory_mb": common.peak_memory_mb(), **common.machine()}


def main():
  from slicejax.training import parallel  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--json", action="store_true", help="print only JSON lines")
  parser.add_argument("--dims", type=int, default=2, choices=(2, 3))
  parser.add_argument("--models", default="8", help="comma-separated M values")
  parser.add_argument("--strategies", default="default", help="'default', 'all' or a comma-separated list")
  parser.add_argument("--steps", type=int, default=3, help="steps per model per timed repetition")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--chunk", type=int, default=parallel.DEFAULT_CHUNK,
                      help="models per compiled program of `loop`")
  parser.add_argument("--quick", action="store_true", help="tiny network and batches, 2 repetitions of 1 step")
  parser.add_argument("--shape", default="", help="input shape, e.g. 48,64 (default: the workload's)")
  parser.add_argument("--batch-size", type=int, default=0, help="batch per model (default: the workload's)")
  parser.add_argument("--one", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.quick:
    args.steps, args.repeats = 1, 2

  shape = tuple(int(n) for n in args.shape.split(",")) if args.shape else None
  if shape and len(shape) != args.dims:
    parser.error(f"--shape={args.shape} has {len(shape)} sizes; --dims={args.dims} needs {args.dims}")

  if args.one:
    strategy, models = args.one.split(":")
    print(json.dumps(measure(strategy, int(models), args.dims, args.steps, args.repeats, args.chunk, args.quick,
                             shape, args.batch_size or None)))
    return

  import common  # pylint: disable=g-import-not-at-top
  # "auto" lets each run pick the default strategy of its own backend, which this process never starts.
  strategies = {"all": list(parallel.STRATEGIES), "default": ["auto"]}.get(args.strategies, args.strategies.split(","))
  failed = []

  def run_one(strategy, models):
    out = subprocess.run([sys.executable, __file__, f"--one={strategy}:{models}", f"--dims={args.dims}",
                          f"--steps={args.steps}", f"--repeats={args.repeats}", f"--chunk={args.chunk}",
                          f"--shape={args.shape}", f"--batch-size={args.batch_size}"]
                         + (["--quick"] if args.quick else []), capture_output=True, text=True, check=False)
    lines = out.stdout.strip().splitlines()
    if out.returncode == 0 and lines:
      return json.loads(lines[-1])
    sys.stderr.write(out.stderr)
    failed.append(f"{strategy}:{models}")
    last = (out.stderr.strip().splitlines() or ["no message"])[-1]
    return {"benchmark": "model_axis", "dims": args.dims, "strategy": strategy, "models": models,
            "quick": args.quick, "rc": out.returncode, "error": last}

  for models in [int(m) for m in args.models.split(",")]:
    baseline = run_one("baseline", models)
    if "error" in baseline:
      common.emit(baseline, args.json)
    for strategy in strategies:
      record = run_one(strategy, models)
      if "error" not in record:
        record.update(default=record["strategy"] == parallel.default_strategy(record["backend"]),
                      baseline_throughput=baseline.get("throughput"),
                      baseline_peak_memory_mb=baseline.get("peak_memory_mb"),
                      ratio_vs_sequential=record["throughput"] / baseline["throughput"] if "throughput" in baseline
                      else None)
      common.emit(record, args.json)
  if failed:
    sys.exit(f"model_axis: {len(failed)} run(s) failed ({', '.join(failed)}); their records carry the error")


if __name__ == "__main__":
  main()
