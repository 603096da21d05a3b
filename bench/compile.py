"""Compile time of the training step against the number of models M, for every model-axis strategy.

    python bench/compile.py --json                       # 2D, M in 1, 2, 4, 8, 16, all strategies
    python bench/compile.py --json --dims 3 --models 1,8 --strategies vmap
    python bench/compile.py --json --quick

Workload: the real slicejax training step as in bench/model_axis.py (2D: batch 8 of 128 x 128 slices; 3D: batch 2
of 32 x 64 x 64 patches; base-16, 4-stage U-Net), mapped over M models by `parallel.ModelAxis`. What a strategy
compiles is what its first step compiles: `vmap` one M-model program, `loop` one program per chunk size
(`ModelAxis.chunk` models each), `sequential` one single-model program whatever M is, `mesh` one program over the
device mesh (with one device: every model in one program). The durations are the ones
JAX reports through `jax.monitoring` for every program compiled during that first step (the same work as
`jax.jit(...).lower(...).compile()`): `trace_s` (tracing to a jaxpr), `lower_s` (lowering to StableHLO),
`compile_s` (XLA compilation), `total_s` (their sum); `programs` counts the compiled programs (small eager
operations between chunks included) and `first_step_s` is the first step's wall time, execution included. JAX's
in-memory caches are cleared before every repetition and the persistent compilation cache is not used, so every
repetition compiles from scratch; one untimed first step comes first and absorbs one-time start-up costs.
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
# jax.monitoring events of one compilation, by the field they are summed into.
EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
          "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
          "/jax/core/compile/backend_compile_duration": "compile_s"}


class CompileEvents:
  """Sums the compilation durations that JAX reports while `recording` is set."""

  def __init__(self):
    import jax  # pylint: disable=g-import-not-at-top
    self.recording = False
    self.totals = {}
    jax.monitoring.register_event_duration_secs_listener(self._record)

  def _record(self, event: str, duration: float, **unused_metadata):
    if self.recording and event in EVENTS:
      self.totals[EVENTS[event]] = self.totals.get(EVENTS[event], 0.0) + duration
      if EVENTS[event] == "compile_s":
        self.totals["programs"] = self.totals.get("programs", 0) + 1

  def first_step(self, run) -> dict:
    """Clears JAX's caches, runs `run()` (which must block) and returns the durations it caused."""
    import jax  # pylint: disable=g-import-not-at-top
    jax.clear_caches()
    self.totals, self.recording = {}, True
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    self.recording = False
    return {**{name: 0.0 for name in EVENTS.values()}, "programs": 0, **self.totals, "first_step_s": wall}


def measure(events: CompileEvents, make_run, repeats: int) -> dict:
  """Medians of the compile durations of `make_run()()` over `repeats` cold first steps after one untimed one."""
  events.first_step(make_run())
  samples = [events.first_step(make_run()) for _ in range(repeats)]
  for sample in samples:
    sample["total_s"] = sample["trace_s"] + sample["lower_s"] + sample["compile_s"]
  out = {key: statistics.median(s[key] for s in samples)
         for key in ("trace_s", "lower_s", "compile_s", "total_s", "first_step_s")}
  totals = [s["total_s"] for s in samples]
  return dict(out, min_total_s=min(totals), max_total_s=max(totals), programs=samples[-1]["programs"],
              repeats=repeats)


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
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top
  import mfu  # pylint: disable=g-import-not-at-top
  from slicejax.training import parallel  # pylint: disable=g-import-not-at-top

  # Cold compilations only, even where JAX_COMPILATION_CACHE_DIR names a persistent cache.
  jax.config.update("jax_enable_compilation_cache", False)
  default = parallel.default_strategy()
  events = CompileEvents()
  for num_models in [int(m) for m in args.models.split(",")]:
    _, _, state, step, bank, entries = mfu.training_workload(args.dims, num_models, work, network)
    for strategy in common.strategies(args.strategies):
      axis = parallel.ModelAxis(strategy, num_models)

      def make_run(axis=axis):
        # A new jitted function on a fresh copy of the state, which the step donates.
        mapped = axis.map(step, donate_state=True)
        axis_state, axis_entries = axis.from_stacked(jax.tree.map(jnp.copy, state)), axis.from_stacked(entries)
        shared = axis.put_shared(bank)
        return lambda: jax.block_until_ready(mapped(axis_state, shared, axis_entries))

      common.emit({"benchmark": "compile", "dims": args.dims, "strategy": strategy, "models": num_models,
                   "chunk": getattr(axis, "chunk", None), "default": strategy == default,
                   "batch_size": work["batch_size"],
                   "shape": list(work["shape"]), **network, "quick": args.quick,
                   **measure(events, make_run, args.repeats), **common.machine()}, args.json)


if __name__ == "__main__":
  main()
