"""`launch.py --check`: what a run would do, without training or writing anything.

Loads and validates the config and the data (voxels are read without touching the cache, unless they exceed the
memory budget, when they are read through it as a run would; only the demo's phantom is generated into the cache
when it is not there yet), and reports the classes (with the number of test volumes in
which each occurs), channels, the spread of volume shapes and spacings, the in-plane shape and what padding and
cropping do to it (the share of each class's voxels cropped away), the split, the grid (points, allocations left out
and why, groups), and an estimate of the run's time and peak memory from a few measured training steps of one model
per dims. A config whose settings follow the dataset's fingerprint (`configs/msd.py`,
`slicejax.data.fingerprint.bind`)
also gets the fingerprint and the values derived from it.
"""

import dataclasses
import resource
import time

from absl import logging
import jax
import numpy as np

from slicejax import console
from slicejax.data import fingerprint as fingerprint_lib
from slicejax.data import load as data_lib
from slicejax.data import padding
from slicejax.evaluation import evaluate as evaluate_lib
from slicejax.report import comparisons as comparisons_lib
from slicejax.report import figures
from slicejax.report import render
from slicejax.report import runs
from slicejax.report import steps
from slicejax.study import encoder
from slicejax.training.inputs import two_d
from slicejax.training import parallel
from slicejax.training import rounds
from slicejax.training import train

_MEASURED_STEPS = 3


def _spread(values) -> str:
  values = np.asarray(values, np.float64)
  lo, mid, hi = np.min(values), np.median(values), np.max(values)
  fmt = (lambda v: f"{v:g}") if np.all(values == np.round(values)) else (lambda v: f"{v:.3g}")
  return fmt(lo) if lo == hi else f"{fmt(lo)}-{fmt(hi)} (median {fmt(mid)})"


def _cropped_share(volumes, shape, num_classes) -> np.ndarray:
  """Per foreground class, the share of its voxels in `volumes` that centre-cropping to `shape` removes."""
  total, kept = np.zeros(num_classes - 1), np.zeros(num_classes - 1)
  for volume in volumes:
    counts = np.bincount(volume.label.ravel(), minlength=num_classes)[1:num_classes]
    fitted = padding.fit_to_shape(volume.label, shape)[0]
    total += counts
    kept += np.bincount(fitted.ravel(), minlength=num_classes)[1:num_classes]
  return np.where(total > 0, 1.0 - kept / np.maximum(total, 1), 0.0)


def _measure(config, dims, points, plans, splits, dataset):
  """Measured seconds per step of one model, its compilation (the step's and the evaluation's programs, each
  compiled once per group), seconds per model and volume of the final test
  evaluation (label maps, Dice and, when on, the surface metrics) and of a Dice-only evaluation (validation and
  learning curves), and bytes."""
  step = train.one_model_step(config, dims, points, plans, splits, dataset)
  compiled, state, shared, per_model = step["compiled"], step["state"], step["shared"], step["per_model"]
  # A group's state goes into the model axis's form and back (compiled once per leaf shape and number of models).
  size = min(config.model_axis.max_models or len(points), len(points))
  group_axis = parallel.ModelAxis(_strategy(config), size, config.model_axis.chunk)
  start = time.perf_counter()
  stacked = jax.tree.map(lambda leaf: np.repeat(np.asarray(leaf)[None], size, 0), state)
  jax.block_until_ready(group_axis.to_stacked(group_axis.from_stacked(stacked)))
  stacking = time.perf_counter() - start
  state, _ = compiled(state, shared, per_model)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(_MEASURED_STEPS):
    state, _ = compiled(state, shared, per_model)
  jax.block_until_ready(state)
  step_seconds = (time.perf_counter() - start) / _MEASURED_STEPS
  axis = parallel.ModelAxis("sequential", 1)
  predict = train.DIMS[dims].predictor(config, step["programs"]["model"], axis)
  params = axis.from_stacked(jax.tree.map(lambda leaf: leaf[None], state["params"]))
  volumes = splits["test"][:2]
  start = time.perf_counter()
  list(predict(params, volumes, step["shape"]))  # compiles
  compile_eval = time.perf_counter() - start
  start = time.perf_counter()
  evaluate_lib.score(predict(params, volumes, step["shape"]), volumes, dataset.num_classes)
  dice_seconds = (time.perf_counter() - start) / max(len(volumes), 1)
  segment = train.DIMS[dims].segmenter(config, step["programs"]["model"], axis)
  start = time.perf_counter()
  list(segment(params, volumes, step["shape"]))  # compiles
  compile_eval += time.perf_counter() - start
  start = time.perf_counter()
  evaluate_lib.score_labels(segment(params, volumes, step["shape"]), volumes, dataset.num_classes,
                            tolerance_mm=config.eval.nsd_tolerance_mm, surface=config.eval.surface_metrics)
  test_seconds = (time.perf_counter() - start) / max(len(volumes), 1)
  return (step_seconds, (step["init_seconds"] + stacking, step["compile_seconds"], compile_eval), test_seconds,
          dice_seconds,
          step["model_bytes"], step["bank_bytes"])


def _strategy(config) -> str:
  """How one device runs a group's models: `model_axis.strategy`, with "auto" and "mesh" as the backend's default."""
  strategy = config.model_axis.strategy
  return parallel.default_strategy() if strategy in ("auto", "mesh") else strategy


def compile_seconds(config, group_sizes, init_s: float, step_s: float, eval_s: float) -> float:
  """Seconds a launch compiles for groups of `group_sizes` (one dims), from one model's measured compilations.

  Programs are compiled once per grid and shape (`train.grid_programs`): one initialisation of one model, and per
  distinct number of models in a program one training step and one evaluation. "loop" programs unroll their models
  (compilation grows with their number: chunks of `model_axis.chunk` and each group's remainder; evaluation always
  sees full chunks); "vmap" programs map them (one model's cost per distinct group size).
  """
  strategy = _strategy(config)
  if strategy == "vmap":
    return init_s + len(set(group_sizes)) * (step_s + eval_s)
  chunk = 1 if strategy == "sequential" else max(1, config.model_axis.chunk)
  sizes = {min(chunk, g) for g in group_sizes} | {g % chunk for g in group_sizes if g > chunk and g % chunk}
  return init_s + step_s * sum(sizes) + eval_s * chunk


def _steps_text(config, points) -> str:
  """"300 steps", or "300 steps (the reference 1500)" where the reference trains its own number."""
  text = f"{config.train.steps} steps"
  own = {train.steps_of(config, p) for p in points if p.reference} - {config.train.steps}
  return text + (f" (the reference {own.pop()})" if own else "")


def seeds_check(config, points) -> list[str]:
  """The seeds each Holm family of the grid `points` needs by the pilot run `config.stats.pilot`
  (`comparisons.seeds_needed` at the grid's own family sizes), and a warning line when the grid's `study.seeds` are
  fewer.

  Raises:
    InputError: the pilot folder is not a run.
  """
  rows, _ = runs.read_runs([config.stats.pilot])
  options = comparisons_lib.stats_options(config.stats.to_dict())
  sizes = comparisons_lib.grid_family_sizes(points)
  study = steps.study_rows(rows)  # a pilot's grid rows: a steps check in it never moves them
  needed = comparisons_lib.seeds_needed(comparisons_lib.paired_comparisons(study, options), options, sizes)
  have = len(config.study.seeds)
  if not needed:
    return [f"seeds: the grid has {have} and no comparison to size them for"]
  lines = [f"seeds: the grid has {have}; by the pilot {config.stats.pilot}, 80% power for a difference of "
           f"{options['margin']:g} at each family's Bonferroni level needs: " + ", ".join(
               f"{family} ({e['comparisons']} comparisons{'' if e['pooled_from'] == 'family' else ', pooled SD'}) "
               f"{render.seeds_text(e)}" for family, e in needed.items())]
  short = [family for family, e in needed.items()
           if e["unreachable"] or (e["seeds_needed"] is not None and e["seeds_needed"] > have)]
  if short:
    lines.append(f"warning: {have} seeds are fewer than the pilot says the {', '.join(short)} comparisons need "
                 "(--config.study.seeds)")
    logging.warning("%s", lines[-1])
  return lines


def dry_run(config) -> list[str]:
  """Checks `config` and its data like a launch would and describes the run; returns the report's lines.

  Raises:
    InputError: bad config values or data, exactly as a launch would.
  """
  start = time.perf_counter()
  # Start-up (the imports so far, nearly all CPU) and reading the data, as a launch pays them before training.
  startup = time.process_time()
  cfg = config.data
  left_out = []
  dataset, splits, depths, points, plans = train.read_inputs(config, use_cache=False, left_out=left_out)
  startup += time.perf_counter() - start
  for point in points:
    if point.name not in plans:  # ual: the same allocation, without training the encoder
      plans[point.name] = train.plan_of(config, dataclasses.replace(point, selection="random", rounds=1, free=False),
                                        depths)
  max_models = train.group_size(config, points, plans, splits, dataset)
  groups = rounds.group(config, points, max_models, lambda p: train.steps_of(config, p))
  names = dataset.class_names[1:]
  shapes = np.array([v.label.shape for v in dataset.volumes])
  spacings = np.array([v.spacing for v in dataset.volumes])
  lines = [f"data: {dataset.root} ({dataset.name}), {len(dataset.volumes)} cases in the split, "
           f"{dataset.num_channels} channel(s), slicing along NIfTI axis {cfg.slicing_axis}"]
  fingerprint = fingerprint_lib.of_config(config)
  if fingerprint is not None:
    lines += fingerprint_lib.describe(fingerprint, config=config)
    lines.append("  (derived values hold unless set: --config.data.slicing_axis, target_spacing, shape, "
                 "normalization, split.*, --config.study.budgets, slices_per_volume)")
  present = [sum(bool(np.any(v.label == k)) for v in splits["test"]) for k in range(1, dataset.num_classes)]
  lines.append("classes (test volumes containing each): " + ", ".join(
      f"{k} {n} ({c}/{len(splits['test'])})" for k, (n, c) in enumerate(zip(names, present), start=1)))
  lines.append("volume shape (slices x H x W): " + " x ".join(_spread(shapes[:, i]) for i in range(3)))
  lines.append("spacing (mm, slice x H x W): " + " x ".join(_spread(spacings[:, i]) for i in range(3)))
  lines.append(f"split (seed {cfg.split.seed}): {len(splits['train'])} train / {len(splits['val'])} val / "
               f"{len(splits['test'])} test")
  everything = dataset.volumes
  if 2 in config.study.dims:
    shape = two_d.example_shape(config, splits["train"] + splits["val"] + splits["test"])
    padded = sum(v.label.shape[1] < shape[0] or v.label.shape[2] < shape[1] for v in everything)
    cropped = sum(v.label.shape[1] > shape[0] or v.label.shape[2] > shape[1] for v in everything)
    share = _cropped_share(everything, shape, dataset.num_classes)
    lines.append(f"2D in-plane shape {shape[0]} x {shape[1]} ({'config.data.shape' if cfg.shape else 'derived'}): "
                 f"{padded} volumes padded, {cropped} centre-cropped; voxels cropped away: " +
                 ", ".join(f"{n} {100 * s:.2f}%" for n, s in zip(names, share)))
  if 3 in config.study.dims:
    lines.append(f"3D patch {' x '.join(map(str, config.three_d.patch))}; volumes are padded to at least the patch, "
                 "never cropped")
  per_dims = {d: [p for p in points if p.dims == d] for d in sorted({p.dims for p in points})}
  lines.append(f"grid: {len(points)} points in {len(groups)} groups of at most {max_models} "
               "models; " + "; ".join(f"{d}D {len(ps)} ({sum(p.reference for p in ps)} reference)"
                                       for d, ps in per_dims.items()))
  lines += [f"  left out: {reason}" for reason in left_out]
  total, peak = startup, 0
  if any(train.needs_embeddings(p, config) for p in points):
    seconds = encoder.estimate_seconds(train.pool_images(config, splits), config.ual.encoder, seed=config.ual.seed,
                                       cache_dir=data_lib.cache_dir(config) / "encoder")
    total += seconds
    lines.append(f"  ual points use a slice encoder ({config.ual.encoder.steps} steps, cached per dataset and encoder "
                 "config): " + (f"about {console.duration(seconds)} to train and embed (measured)" if seconds
                                 else "in the cache"))
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  for dims, dims_points in per_dims.items():
    step_s, compiles, test_s, dice_s, step_bytes, bank_bytes = _measure(config, dims, dims_points, plans, splits,
                                                                         dataset)
    group_sizes = [len(g) for g in groups if g[0].dims == dims]
    compile_s = sum(compiles)
    # Trainings (members, every round) and their steps; a group with steps of its own compiles programs of its own.
    # The rounds before the last score the validation volumes only, without learning curves.
    models = sum(rounds.trainings(config, g) for g in groups if g[0].dims == dims)
    final = sum(len(rounds.final_models(config, g)) for g in groups if g[0].dims == dims)
    model_steps = sum(rounds.trainings(config, g) * train.steps_of(config, g[0]) for g in groups if g[0].dims == dims)
    by_steps = {}
    for g in groups:
      if g[0].dims == dims:
        by_steps.setdefault(train.steps_of(config, g[0]), []).append(len(g))
    curve_points = len(train.curve_schedule(config.train.steps, config.eval.curve_points)) if min(
        config.eval.curve_volumes, len(splits["val"])) else 0
    parts = {"training": sum(compile_seconds(config, sizes, *compiles) for sizes in by_steps.values())
                         + model_steps * step_s,
             "test evaluation": final * test_s * len(splits["test"]) + models * dice_s * len(splits["val"]),
             "validation curves": final * dice_s * curve_points * min(config.eval.curve_volumes, len(splits["val"]))}
    seconds = sum(parts.values())
    total += seconds
    per_program = min(max(group_sizes), config.model_axis.chunk)
    peak = max(peak, rss + bank_bytes + per_program * step_bytes)
    lines.append(f"{dims}D: {step_s:.3f} s per step and model (measured, {_MEASURED_STEPS} steps), compile "
                 f"{compile_s:.1f} s (one model's initialisation, training and evaluation programs), evaluation "
                 f"{test_s:.2f} s per model and test volume, "
                 f"{dice_s:.2f} s per validation volume -> {len(dims_points)} models"
                 + (f" ({models} trainings: ensemble members, rounds)" if models != len(dims_points) else "")
                 + " x "
                 f"{_steps_text(config, dims_points)} in {len(group_sizes)} groups: about {console.duration(seconds)} ("
                 + ", ".join(f"{name} {console.duration(s)}" for name, s in parts.items()) + ")")
  # The report: its figures (one per kind, and the loss curves), drawn at the end of the launch.
  report_s = (len(figures.FIGURES) + 1) * figures.seconds_per_figure()
  total += report_s
  lines.append(f"estimate: about {console.duration(total)} on this machine ({jax.default_backend()}, models of a group "
               f"counted one after another; start-up and reading the data {console.duration(startup)}, the report "
               f"{console.duration(report_s)}), peak memory "
               f"about {peak / 2**30:.1f} GiB")
  if config.stats.pilot:
    lines += seeds_check(config, points)
  lines.append(f"checked in {time.perf_counter() - start:.1f} s; nothing was trained or written")
  return lines
