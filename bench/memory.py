"""Training memory at LiTS scale with the streamed 2D input path, and its speed against the on-device bank.

    python bench/memory.py --mode=generate --store=/work/bench_data/lits_scale   # once: ~58,000 slices, 11.4 GB
    python bench/memory.py --mode=lits --store=/work/bench_data/lits_scale --steps=30 --json
    python bench/memory.py --mode=ratio --steps=30 --json
    python bench/memory.py --mode=nifti --root=/work/bench_data/lits_nifti   # once: the same data as NIfTI, 11.4 GB
    python bench/memory.py --mode=launch --root=/work/bench_data/lits_nifti --workdir=RUN --cache=CACHE --json

`generate` writes a slice store (`slicejax.training.inputs.stream`) with LiTS's shape of data: 131 volumes of 74 to 987
slices,
58,000 slices in all, at 256 x 256, one channel (float16) and three classes (uint8: background, an ellipse "liver"
whose size follows the slice, a small "tumour" inside it). It writes the store directly rather than NIfTI files
that the reader would then preprocess: the training side is what is measured, and 58,000 slices of NIfTI would
take longer to write and read than the run itself.

`lits` trains the fully annotated 2D reference (every one of the 58,000 slices is an entry) on that store for
`--steps` steps exactly as `train.train_group` does on the stream path (`train.grid_programs(pipeline="stream")`,
`stream.training_data`, `stream.Batches`, the model axis's mapped step), and reports the process's peak resident
memory (`getrusage` and `/proc/self/status` VmHWM) next to the bytes the bank would need.

`ratio` builds a small dataset (1,000 slices at 256 x 256) in memory, trains the same models on it from the bank,
from a slice store in a temporary folder and from the volumes mapped from `.npz` entries as the cache holds them
(`stream.VolumeRows`, the default source), alternating the three twice (the machine is shared), checks that all give
the same losses, and reports steps per second of each and their ratios to the bank.

`nifti` writes the same 131 volumes as an nnU-Net v2 raw folder of uncompressed NIfTI files (int16 CT-like
intensities, uint8 labels, 0.8 x 0.8 x 1 mm), and `launch` runs the whole product on it: `launch.py
--config=configs/lits.py` (fingerprint, preprocessing into the cache, the streamed input, training, learning curves,
dense evaluation with surface metrics, the summary) for the fully annotated reference (`LAUNCH_OVERRIDES`), in a child
process whose peak resident memory is the figure. A second `launch` with the same `--cache` and a new `--workdir`
measures a run on a warm cache.

Workload: a base-16, 4-stage 2D U-Net (`common.step_config`), batch 8, 256 x 256 slices, one model.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # pylint: disable=g-import-not-at-top
import nibabel as nib  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import common  # pylint: disable=g-import-not-at-top
from slicejax.data import load as data_lib  # pylint: disable=g-import-not-at-top
from slicejax.data import mapped  # pylint: disable=g-import-not-at-top
from slicejax.study import grid as study  # pylint: disable=g-import-not-at-top
from slicejax.training.inputs import stream  # pylint: disable=g-import-not-at-top
from slicejax.training.inputs import two_d  # pylint: disable=g-import-not-at-top
from slicejax.training import parallel  # pylint: disable=g-import-not-at-top
from slicejax.training import train  # pylint: disable=g-import-not-at-top

SHAPE = (256, 256)
NUM_CLASSES = 3
# `launch`: the fully annotated reference alone (every one of the pool's slices is an entry: the largest bank of any
# point), 125 / 2 / 4 volumes for training / validation / test, two learning-curve points on one validation volume.
LAUNCH_OVERRIDES = ("--config.study.budgets=()", "--config.study.reference=True", "--config.study.seeds=(0,)",
                    "--config.data.split.train=125", "--config.data.split.val=2", "--config.data.split.test=4",
                    "--config.eval.curve_volumes=1", "--config.eval.curve_points=2", "--config.train.log_every=10",
                    "--config.train.warmup_steps=5")
PHASE_WORDS = ("Loaded", "stay in the cache", "slice store", "streaming", "models per group", "Group 0", "Wrote")


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
    self.key = None  # no cache entry: `stream.store_key` hashes the voxels

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


  def hounsfield(self) -> np.ndarray:
    """`[D, H, W]` int16 CT-like intensities: soft tissue, a brighter "liver", a brighter "tumour", noise."""
    noise = np.random.default_rng(self.index).normal(0, 25, (8,) + self.shape)
    return (np.asarray([-80, 60, 130])[self.label] + noise[np.arange(self.depth) % 8]).astype(np.int16)


def write_nifti(root) -> dict:
  """The LiTS-scale dataset as an nnU-Net v2 raw folder of uncompressed NIfTI files (`.nii`, as LiTS ships):
  `imagesTr/case_NNN_0000.nii` int16, `labelsTr/case_NNN.nii` uint8, the slicing axis last, 0.8 x 0.8 x 1 mm."""
  root = pathlib.Path(root)
  (root / "imagesTr").mkdir(parents=True, exist_ok=True)
  (root / "labelsTr").mkdir(parents=True, exist_ok=True)
  depths = lits_depths()
  affine = np.diag([0.8, 0.8, 1.0, 1.0])
  start = time.perf_counter()
  for i, depth in enumerate(depths):
    volume = SyntheticVolume(i, depth)
    for path, array in ((root / "imagesTr" / f"{volume.case_id}_0000.nii", volume.hounsfield()),
                        (root / "labelsTr" / f"{volume.case_id}.nii", volume.label)):
      if not path.exists():
        nib.save(nib.Nifti1Image(np.ascontiguousarray(np.moveaxis(array, 0, 2)), affine), str(path))
  (root / "dataset.json").write_text(json.dumps({
      "name": "lits_scale", "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
      "numTraining": len(depths), "file_ending": ".nii"}, indent=1))
  size = sum(f.stat().st_size for f in root.rglob("*.nii"))
  return {"volumes": len(depths), "slices": sum(depths), "bytes": size, "seconds": time.perf_counter() - start,
          **peak_rss_bytes()}


def launch(args) -> dict:
  """`launch.py --config=configs/lits.py` on the NIfTI folder of `write_nifti`, in a child process whose peak resident
  memory (getrusage of the children, and /usr/bin/time's where it exists) is the figure."""
  repo = pathlib.Path(__file__).resolve().parent.parent
  command = [sys.executable, str(repo / "launch.py"), "--config=configs/lits.py", f"--config.data.root={args.root}",
             f"--workdir={args.workdir}", *LAUNCH_OVERRIDES, f"--config.train.steps={args.steps}",
             f"--config.train.batch_size={args.batch_size}", f"--config.model.features={args.features}"]
  env = {**os.environ, "SLICEJAX_CACHE": args.cache}
  start = time.perf_counter()
  done = subprocess.run(command, cwd=repo, env=env, check=False, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  (pathlib.Path(args.workdir) / "bench_launch.log").write_text(done.stderr)
  if done.returncode:
    raise SystemExit(f"launch.py exited {done.returncode}:\n{done.stderr[-3000:]}")
  rows = [json.loads(line) for line in (pathlib.Path(args.workdir) / "results.jsonl").read_text().splitlines()]
  phases = [line for line in done.stderr.splitlines() if any(w in line for w in PHASE_WORDS)]
  return {"command": " ".join(command[1:]), "seconds": seconds, "rows": len(rows),
          "dice_mean": [row["dice_mean"] for row in rows], "log": [line[-160:] for line in phases],
          "child_peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}


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
    # The volumes as the trainer maps them from their cache entries (`data.load_volumes(mapped=True)`).
    for volume in volumes:
      np.savez(pathlib.Path(folder) / f"{volume.case_id}.npz", image=volume.image, label=volume.label)
    on_disk = [dataclasses.replace(v, image=arrays["image"], label=arrays["label"]) for v, arrays in zip(
        volumes, (mapped.open_npz(pathlib.Path(folder) / f"{v.case_id}.npz") for v in volumes))]
    sources = {"stream": lambda: stream.SliceStore(store),
               "stream_volumes": lambda: stream.VolumeRows(on_disk, SHAPE, folder)}
    runs = {"bank": [], "stream": [], "stream_volumes": []}
    for _ in range(2):
      runs["bank"].append(train_steps(config, "bank", bank, bank_entries, args.steps))
      for name, rows in sources.items():  # each stream run owns its source (closed with its batches)
        source, entries, _ = stream.training_data(config, [point], [plan], volumes, NUM_CLASSES, rows())
        runs[name].append(train_steps(config, "stream", source, entries, args.steps))
  same = all(r["losses"] == runs["bank"][0]["losses"] for rs in runs.values() for r in rs)
  speed = {name: max(r["steps_per_s"] for r in rs) for name, rs in runs.items()}
  return {"slices": sum(depths), "steps": args.steps, "same_losses": same,
          **{f"{name}_steps_per_s": [r["steps_per_s"] for r in rs] for name, rs in runs.items()},
          "ratio_of_best": speed["stream"] / speed["bank"],
          "ratio_of_best_volumes": speed["stream_volumes"] / speed["bank"], **peak_rss_bytes()}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--mode", choices=("generate", "lits", "ratio", "nifti", "launch"), required=True)
  parser.add_argument("--store", default="/work/bench_data/lits_scale")
  parser.add_argument("--root", default="/work/bench_data/lits_nifti")
  parser.add_argument("--workdir", default="/work/bench_data/lits_run")
  parser.add_argument("--cache", default="/work/bench_data/lits_cache")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--features", type=int, default=16)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  config = common.step_config(2, features=args.features, batch_size=args.batch_size)
  config.data.shape = SHAPE
  result = {"generate": generate, "lits": lambda a: lits(a, config), "ratio": lambda a: ratio(a, config),
            "nifti": lambda a: write_nifti(a.root), "launch": launch}[args.mode](args)
  result.update(mode=args.mode, features=args.features, batch_size=args.batch_size, shape=list(SHAPE))
  print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
