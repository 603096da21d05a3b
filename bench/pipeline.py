"""Headroom of the on-device data pipeline: batches the sampler can make against batches the training step uses.

    python bench/pipeline.py --json                                   # synthetic bank, hippocampus-like sizes
    python bench/pipeline.py --json --data PATH/Task04_Hippocampus
    python bench/pipeline.py --json --quick

Workload: M = 8 models with batch 32 of 48 x 64 slices (the hippocampus grid), a base-16, 4-stage U-Net. The
sampler side is exactly the data half of `slicejax.training.train.make_train_step` (key folded with the step,
`two_d.batch_sampler`, i.e. `sampler.sample`, then `augment.augment_batch`), mapped over the M models with the
step's model-axis strategy and returning the batches; the step side is the whole training step. Both are timed as
M x steps / seconds, in batches (one model's batch) per second; `headroom` = sampler batches/s / step batches/s.
Inside the real step the sampler's work is part of the step, so a headroom h means the data take about 1 / h of
the step's time.

The bank is synthetic (180 x 36 random slices, each model annotating a random half) unless `--data` names an MSD
Task04 folder, whose volumes (`slicejax.data.load.load_msd`, slicing axis 2, z-score) fill the bank through
`slicejax.training.inputs.sampler.slice_bank`.

Records: one with `"partial": true` and the sampler's rate alone, written before the training step compiles, then
the complete one.
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))


def make_data_step(sample_fn, augment_cfg):
  """The data half of the training step for one model: `(state, bank, entries) -> (state, batch)`.

  Args:
    sample_fn: `(key, bank, entries) -> (images, labels, weights)`, as passed to `train.make_train_step`.
    augment_cfg: the config's `train.augment` block.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from slicejax.training.inputs import augment  # pylint: disable=g-import-not-at-top

  def data_step(state, bank, entries):
    key = jax.random.fold_in(state["rng"], state["step"])
    k_sample, k_augment = jax.random.split(key)
    images, labels, weights = sample_fn(k_sample, bank, entries)
    batch = augment.augment_batch(k_augment, images, labels, weights, augment_cfg)
    return {"rng": state["rng"], "step": state["step"] + 1}, batch

  return data_step


def load_bank(args, shape):
  """The bank (device arrays) and its number of slices: real volumes from `--data`, else synthetic."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top
  from slicejax.data import load as data
  from slicejax.training.inputs import sampler  # pylint: disable=g-import-not-at-top

  if args.data:
    dataset = data.load_msd(args.data, slicing_axis=2, normalization="zscore", max_cases=args.cases)
    bank = sampler.slice_bank(dataset.volumes, shape)
    return {k: jnp.asarray(bank[k]) for k in ("images", "labels", "extents")}, len(bank["images"])
  return common.synthetic_bank(shape, num_slices=args.slices), args.slices


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--json", action="store_true", help="print only JSON lines")
  parser.add_argument("--models", type=int, default=8, help="M, models trained together")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--shape", default="48,64", help="slice height,width")
  parser.add_argument("--strategy", default="auto", help="model-axis strategy; auto = the backend's default")
  parser.add_argument("--data", help="MSD Task04 folder (dataset.json, imagesTr/, labelsTr/); default: synthetic")
  parser.add_argument("--cases", type=int, help="with --data: load only the first CASES cases")
  parser.add_argument("--slices", type=int, default=180 * 36, help="synthetic bank size")
  parser.add_argument("--steps", type=int, default=5, help="steps per timed repetition")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--quick", action="store_true",
                      help="M = 2, batch 4 of 16 x 16, tiny network and bank, 2 repetitions of 1 step")
  args = parser.parse_args()
  shape = tuple(int(n) for n in args.shape.split(","))
  network = dict(features=16, stages=4)
  if args.quick:
    args.models, args.batch_size, shape, args.slices, args.steps, args.repeats = 2, 4, (16, 16), 32, 1, 2
    args.cases = args.cases or 4
    network = dict(features=4, stages=2)

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top
  from slicejax.training import parallel
  from slicejax.training import train
  from slicejax.training.inputs import two_d  # pylint: disable=g-import-not-at-top

  config = common.step_config(2, batch_size=args.batch_size, **network)
  bank, num_slices = load_bank(args, shape)
  entries = common.model_entries(args.models, num_slices)
  model, tx, state = common.init_models(config, args.models, shape)
  axis = parallel.ModelAxis(args.strategy, args.models)
  axis_entries, bank = axis.from_stacked(entries), axis.put_shared(bank)

  sample_fn = two_d.batch_sampler(config)
  data_fn = axis.map(make_data_step(sample_fn, config.train.augment), donate_state=True)
  # A copy: the data step donates its state, and the training step still needs the same streams.
  data_state = [axis.from_stacked(jax.tree.map(jnp.copy, {"rng": state["rng"], "step": state["step"]}))]

  def run_data():
    for _ in range(args.steps):
      data_state[0], batch = data_fn(data_state[0], bank, axis_entries)
    jax.block_until_ready((data_state[0], batch))

  step_fn = axis.map(train.make_train_step(model, tx, config, sample_fn), donate_state=True)
  train_state = [axis.from_stacked(state)]

  def run_step():
    for _ in range(args.steps):
      train_state[0], _ = step_fn(train_state[0], bank, axis_entries)
    jax.block_until_ready(train_state[0])

  described = {"benchmark": "pipeline", "models": args.models, "batch_size": args.batch_size, "shape": list(shape),
               **network, "strategy": axis.strategy, "data": args.data or "synthetic", "bank_slices": num_slices,
               "steps": args.steps, "repeats": args.repeats, "quick": args.quick}
  data_timing = common.time_calls(run_data, repeats=args.repeats)
  sampler_rate = args.models * args.steps / data_timing["median_s"]
  # The sampler's half on its own first, so that a run cut short while the step compiles keeps it.
  common.emit({**described, "partial": True, "sampler_batches_per_s": sampler_rate,
               "sampler_median_s": data_timing["median_s"], **common.machine()}, args.json)
  step_timing = common.time_calls(run_step, repeats=args.repeats)
  step_rate = args.models * args.steps / step_timing["median_s"]
  common.emit({**described, "sampler_batches_per_s": sampler_rate, "step_batches_per_s": step_rate,
               "headroom": sampler_rate / step_rate, "sampler_median_s": data_timing["median_s"],
               "step_median_s": step_timing["median_s"], **common.machine()}, args.json)


if __name__ == "__main__":
  main()
