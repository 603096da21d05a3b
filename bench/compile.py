"""Compile time of the training step against the number of models M, for every model-axis strategy.

    python bench/compile.py --json                       # 2D, M in 1, 2, 4, 8, 16, all strategies
    python bench/compile.py --json --dims 3 --models 1,8 --strategies vmap
    python bench/compile.py --json --quick

Workload: the real slicejax training step as in bench/model_axis.py (2D: batch 8 of 128 x 128; 3D: batch 2 of
32 x 64 x 64; base-16, 4-stage U-Net). For `vmap` and `loop` the timed work is
`ModelAxis.map(step).lower(state, bank, entries).compile()` on the M-model state; `sequential` compiles the
single-model step once whatever M is, so it is measured once and reported for every M. `lower_s` is tracing and
lowering to StableHLO, `compile_s` the XLA compilation, `total_s` their sum (medians over repetitions). JAX's
in-memory caches are cleared before every repetition and the persistent compilation cache is not used, so every
repetition compiles from scratch; one untimed compilation first absorbs one-time start-up costs.
"""

import argparse
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from model_axis import WORKLOADS  # pylint: disable=g-import-not-at-top,wrong-import-position

QUICK_WORKLOADS = {2: dict(shape=(16, 16), batch_size=2), 3: dict(shape=(8, 8, 8), batch_size=1)}


def compile_times(lower, repeats: int) -> dict:
  """Median `lower()` and `.compile()` seconds over `repeats` cold compilations after one untimed one."""
  import jax  # pylint: disable=g-import-not-at-top
  lowers, compiles = [], []
  for i in range(repeats + 1):
    jax.clear_caches()
    start = time.perf_counter()
    lowered = lower()
    lowered_at = time.perf_counter()
    lowered.compile()
    if i:
      lowers.append(lowered_at - start)
      compiles.append(time.perf_counter() - lowered_at)
  totals = [a + b for a, b in zip(lowers, compiles)]
  return {"lower_s": statistics.median(lowers), "compile_s": statistics.median(compiles),
          "total_s": statistics.median(totals), "min_total_s": min(totals), "max_total_s": max(totals),
          "repeats": repeats}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--json", action="store_true", help="print only JSON lines")
  parser.add_argument("--dims", type=int, default=2, choices=(2, 3))
  parser.add_argument("--models", default="1,2,4,8,16", help="comma-separated M values")
  parser.add_argument("--strategies", default="all", help="'all', 'default' or a comma-separated list")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--quick", action="store_true", help="tiny network and batch, M in 1, 2, 2 repetitions")
  args = parser.parse_args()
  network = dict(features=16, stages=4)
  if args.quick:
    args.models, args.repeats, network = "1,2", 2, dict(features=4, stages=2)
  work = (QUICK_WORKLOADS if args.quick else WORKLOADS)[args.dims]

  import jax  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top
  from slicejax import parallel, train  # pylint: disable=g-import-not-at-top

  default = parallel.default_strategy()
  strategies = {"all": list(parallel.STRATEGIES), "default": [default]}.get(args.strategies,
                                                                          args.strategies.split(","))
  config = common.step_config(args.dims, batch_size=work["batch_size"], **network)
  bank = common.synthetic_bank(work["shape"])
  single_model = None
  for num_models in [int(m) for m in args.models.split(",")]:
    entries = common.model_entries(num_models)
    model, tx, state = common.init_models(config, num_models, work["shape"])
    step = train.make_train_step(model, tx, config, train.slice_sampler(config.train.batch_size))
    for strategy in strategies:
      if strategy == "sequential":
        if single_model is None:
          one = jax.tree.map(lambda a: a[0], (state, entries))
          single_model = compile_times(
              lambda: jax.jit(step, donate_argnums=0).lower(one[0], bank, one[1]), args.repeats)
        timing = single_model
      else:
        axis = parallel.ModelAxis(strategy, num_models)
        timing = compile_times(lambda: axis.map(step, donate_state=True).lower(state, bank, entries),
                               args.repeats)
      common.emit({"benchmark": "compile", "dims": args.dims, "strategy": strategy, "models": num_models,
                   "default": strategy == default, "single_model_compile": strategy == "sequential",
                   "batch_size": work["batch_size"], "shape": list(work["shape"]), **network, "quick": args.quick,
                   **timing, **common.machine()}, args.json)


if __name__ == "__main__":
  main()
