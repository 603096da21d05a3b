"""Training memory at LiTS scale with the streamed 2D input path, and its speed against the on-device bank.

    python bench/memory.py --mode=generate --store=/work/bench_data/lits_scale   # once: ~58,000 slices, 11.4 GB
    python bench/memory.py --mode=lits --store=/work/bench_data/lits_scale --steps=30 --json
    python bench/memory.py --mode=ratio --steps=30 --json

`generate` writes a slice store (`slicejax.stream`) with LiTS's shape of data: 131 volumes of 74 to 987 slices,
58,000 slices in all, at 256 x 256, one channel (float16) and three classes (uint8: background, an ellipse "liver"
whose size follows the slice, a small "tumour" inside it). It writes the store directly rather than NIfTI files
that the reader would then preprocess: the training side is what is measured, and 58,000 slices of NIfTI would
take longer to write and read than the run itself.

`lits` trains the fully annotated 2D reference (every one of the 58,000 slices is an entry) on that store for
`--steps` steps exactly as `train.train_group` does on the stream path (`train.grid_programs(pipeline="stream")`,
`stream.training_data`, `stream.Batches`, the model axis's mapped step), and reports the process's peak resident
memory (`getrusage` and `/proc/self/status` VmHWM) next to the bytes the bank would need.

`ratio` builds a small dataset (1,000 slices at 256 x 256) in memory, trains the same models on it from the bank and
from a slice store in a temporary folder, alternating the two twice (the machine is shared), checks that both give
the same losses, and reports steps per second of each and their ratio.

Workload: a base-16, 4-stage 2D U-Net (`common.step_config`), batch 8, 256 x 256 slices, one model.
"""

import argparse
import json
import pathlib
import resource
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import common  # pylint: disable=g-import-not-at-top
from slicejax import data as data_lib  # pylint: disable=g-import-not-at-top
from slicejax import parallel  # pylint: disable=g-import-not-at-top
from slicejax import stream  # pylint: disable=g-import-not-at-top
from slicejax import study  # pylint: disable=g-import-not-at-top
from slicejax import train  # pylint: disable=g-import-not-at-top
from slicejax import two_d  # pylint: disable=g-import-not-at-top

SHAPE = (256, 256)
NUM_CLASSES = 3


def lits_depths(num_volumes: int = 131, total: int = 58_000, lo: int = 74, hi: int = 987, seed: int = 0) -> list:
  """`num_volumes` depths in [lo, hi] summing to `total` (LiTS: 131 volumes, 74-987 slices, about 58,000)."""
  rng = np.random.default_rng(seed)
  depths = rng.integers(lo, hi + 1, num_volumes).astype(float)
  depths[:2] = lo, hi  # the extremes occur
  for _ in range(50):
    rest = depths[2:]
    depths[2:] = np.clip(np.round(rest * (total - lo - hi) / rest.sum()), lo, hi)
  depths[2 + np.argmax(depths[2:])] += total - depths.sum()
  return [int(d) for d in depths]


class SyntheticVolume:
  """A CT-like volume generated on access (never kept): `image [D, H, W, 1]` float16, `label [D, H, W]` uint8."""

  def __init__(self, index: int, depth: int, shape=SHAPE):
    self.case_id, self.depth, self.shape, self.index = f"case_{index:03d}", depth, tuple(shape), index
    self.spacing, self.affine, self.slicing_axis = (1.0, 0.8, 0.8), np.eye(4), 2

  @property
  def label(self) -> np.ndarray:
    d = np.linspace(-1, 1, self.depth)[:, None, None]
    y = np.linspace(-1, 1, self.shape[0])[None, :, None]
    x = np.linspace(-1, 1, self.shape[1])[None, None, :]
    radius = 0.6 * np.sqrt(np.clip(1 - d**2, 0, 1))
    liver = ((y + 0.1) / 0.8)**2 + ((x - 0.1 * (self.index % 3 - 1)) / 1.0)**2 <= radius**2
    tumour = (y + 0.1)**2 + (x - 0.2)**2 + d**2 <= 0.04
    return (liver.astype(np.uint8) + (liver & tumour)).astype(np.uint8)

  @property
  def image(self) -> np.ndarray:
    label = self.label
    noise = np.random.default_rng(self.index).normal(0, 0.3, (8,) + self.shape).astype(np.float16)
    image = np.asarray([-1.0, 0.5, 1.2], np.float16)[label] + noise[np.arange(self.depth) % 8]
    return image[..., None]


def peak_rss_bytes() -> dict:
  """Peak resident memory of this process: getrusage's ru_maxrss (KiB on Linux) and /proc/self/status VmHWM."""
  status = dict(line.split(":", 1) for line in pathlib.Path("/proc/self/status").read_text().splitlines())
  kib = lambda key: int(status[key].split()[0]) * 1024
  return {"ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "vm_hwm": kib("VmHWM"),
          "rss_now": kib("VmRSS"), "rss_file_now": kib("RssFile"), "rss_anon_now": kib("RssAnon")}


def reference(case_depths: dict):
  """The fully annotated reference point and its plan (every slice of every case)."""
  point = study.Point(2, sum(case_depths.values()), len(case_depths), None, "all", False, 0, reference=True)
  return point, {case: list(range(depth)) for case, depth in case_depths.items()}


def trainer(config, pipeline: str, num_models: int = 1):
  """The pieces of `train.train_group` for a group of `num_models` 2D models on `pipeline`."""
  axis = parallel.ModelAxis(config.model_axis.strategy, num_models, chunk=config.model_axis.chunk,
                            batch_size=config.train.batch_size)
  programs = train.grid_programs(config, 2, NUM_CLASSES, SHAPE + (1,), axis.batch_split, pipeline)
  initial = jax.tree.map(lambda *leaves: np.concatenate(leaves), *[
      jax.tree.map(np.asarray, programs["init"](np.asarray([m], np.uint32))) for m in range(num_models)])
  return axis, programs, initial


def train_steps(config, pipeline: str, data, entries, steps: int, warmup: int = 3) -> dict:
  """Runs `warmup + steps` steps of one model on `pipeline` (data: the bank or the `stream.Source`); returns the
  steps per second after the warmup and every step's loss."""
  axis, programs, initial = trainer(config, pipeline)
  state = axis.from_stacked(initial)
  step_fn = axis.map(programs["step"], donate_state=True)
  shared = {"bank": axis.put_shared(data) if pipeline == "bank" else {}, "steps": axis.put_shared(np.int32(1))}
  total = warmup + steps
  losses = []
  if pipeline == "stream":
    inputs = stream.Batches(data, entries, axis.fetch(initial["rng"]), config.train.batch_size, 0, total,
                            axis.from_stacked, depth=config.data.prefetch)
  else:
    inputs, per_model = None, axis.from_stacked(entries)
  start = None
  for step in range(total):
    if step == warmup:
      jax.block_until_ready(state)
      start = time.perf_counter()
    state, out = step_fn(state, shared, per_model if inputs is None else next(inputs))
    losses.append(out["loss"])
  jax.block_until_ready(state)
  seconds = time.perf_counter() - start
  if inputs is not None:
    inputs.close()  # closes the source too
  return {"steps_per_s": steps / seconds, "seconds": seconds, "losses": [float(l[0]) for l in losses]}


def generate(args) -> dict:
  depths = lits_depths()
  volumes = [SyntheticVolume(i, d) for i, d in enumerate(depths)]
  start = time.perf_counter()
  store = stream.write_store(args.store, volumes, SHAPE, key="lits_scale")
  size = sum(f.stat().st_size for f in pathlib.Path(args.store).iterdir())
  return {"volumes": len(depths), "slices": len(store), "depth_range": [min(depths), max(depths)],
          "bytes": size, "seconds": time.perf_counter() - start, **peak_rss_bytes()}


def lits(args, config) -> dict:
  store = stream.SliceStore(args.store)
  case_depths = {case: len(rows) for case, rows in store.rows.items()}
  point, plan = reference(case_depths)
  sizes = two_d.data_sizes(config, [point], [plan])
  source, entries, _ = stream.training_data(config, [point], [plan], [], NUM_CLASSES, store)
  before = peak_rss_bytes()
  timing = train_steps(config, "stream", source, entries, args.steps)
  return {"volumes": len(case_depths), "slices": len(store), "entries": int(entries["count"][0]),
          "bank_bytes_needed": stream.bank_bytes(config, sizes, SHAPE, 1),
          "auto_budget_bytes": stream.budget_bytes(config),
          "auto_choice": stream.choose(config, 2, sizes, SHAPE, 1), "steps": args.steps,
          "steps_per_s": timing["steps_per_s"], "peak_before_training": before["vm_hwm"], **peak_rss_bytes()}


def ratio(args, config) -> dict:
  depths = [125] * 8  # 1,000 slices: a 262 MB float32 bank
  volumes = []
  for i, depth in enumerate(depths):
    synthetic = SyntheticVolume(i, depth)
    volumes.append(data_lib.Volume(synthetic.case_id, synthetic.image, synthetic.label, synthetic.spacing,
                                   synthetic.affine, 2))
  point, plan = reference({v.case_id: v.depth for v in volumes})
  bank, bank_entries, _ = two_d.training_data(config, [point], [plan], volumes, NUM_CLASSES, SHAPE)
  with tempfile.TemporaryDirectory() as folder:
    store = stream.store_for(folder, volumes, SHAPE).folder
    runs = {"bank": [], "stream": []}
    for _ in range(2):
      runs["bank"].append(train_steps(config, "bank", bank, bank_entries, args.steps))
      # Each stream run owns its source (closed with its batches).
      source, entries, _ = stream.training_data(config, [point], [plan], volumes, NUM_CLASSES,
                                                stream.SliceStore(store))
      runs["stream"].append(train_steps(config, "stream", source, entries, args.steps))
  same = all(r["losses"] == runs["bank"][0]["losses"] for r in runs["bank"] + runs["stream"])
  speed = {name: max(r["steps_per_s"] for r in rs) for name, rs in runs.items()}
  return {"slices": sum(depths), "steps": args.steps, "same_losses": same,
          "bank_steps_per_s": [r["steps_per_s"] for r in runs["bank"]],
          "stream_steps_per_s": [r["steps_per_s"] for r in runs["stream"]],
          "ratio_of_best": speed["stream"] / speed["bank"], **peak_rss_bytes()}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--mode", choices=("generate", "lits", "ratio"), required=True)
  parser.add_argument("--store", default="/work/bench_data/lits_scale")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--features", type=int, default=16)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  config = common.step_config(2, features=args.features, batch_size=args.batch_size)
  config.data.shape = SHAPE
  result = {"generate": generate, "lits": lambda a: lits(a, config), "ratio": lambda a: ratio(a, config)}[args.mode](
      args)
  result.update(mode=args.mode, features=args.features, batch_size=args.batch_size, shape=list(SHAPE))
  print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
