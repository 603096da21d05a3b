"""Trains and evaluates every point of a study grid: `train_and_evaluate(config, workdir)`.

Reads top to bottom: setup and data, model and optimiser, the training step, then per group of points that share
shapes: training data, state, the loop, evaluation and rows; last the study, which checks every input before the
workdir is touched. Everything that differs between 2D slices and 3D patches comes from the dims modules
(`slicejax.training.inputs.two_d`, `.three_d`, the same functions). A group's M models train together on the model
axis (`slicejax.training.parallel`), each with its own parameters, optimiser state, annotated slices and random
stream, whose keys come from its point's study seed alone; they share the step count and schedule, so budgets differ
only in data.

The workdir is the unit of record: `config.json` (the resolved config), `groups.json` (group -> model index -> point),
`plans/<point>.json` (annotation plans; a rerun keeps the recorded `ual` ones, `keep_recorded_plans`), `results.jsonl`
(one row per trained model, `slicejax.report.results`), `curves/` (TensorBoard loss curves) and the summary files. A
group whose rows are all in results.jsonl is skipped when the same command runs again.
"""

import contextlib
import json
import os
import pathlib
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from slicejax import config as config_lib
from slicejax import console
from slicejax import environment
from slicejax.data import fingerprint as fingerprint_lib
from slicejax.data import index as index_lib
from slicejax.data import load as data_lib
from slicejax.data import padding
from slicejax.data import split as split_lib
from slicejax.evaluation import evaluate as evaluate_lib
from slicejax import files
from slicejax.model import losses
from slicejax.model import unet
from slicejax.report import comparisons as comparisons_lib
from slicejax.report import results
from slicejax.report import runs as report_runs
from slicejax.report import summary as report
from slicejax.study import cost as cost_lib
from slicejax.study import encoder
from slicejax.study import grid as study
from slicejax.study import selection as selection_lib
from slicejax.study import sparse
from slicejax.training import checkpoint
from slicejax.training import distributed
from slicejax.training.inputs import augment as augment_lib
from slicejax.training.inputs import pipeline as input_pipeline
from slicejax.training.inputs import stream
from slicejax.training.inputs import three_d
from slicejax.training.inputs import two_d
from slicejax.training import parallel
from slicejax.training import precision
from slicejax.training import rounds as rounds_lib
from slicejax import workdir as workdir_lib

# The dims modules: the same functions for 2D slices and 3D patches (see `slicejax.training.inputs.two_d`).
DIMS = {2: two_d, 3: three_d}
# What `train_and_evaluate` records in a run's folder for applying its models later (`model_card`).
MODEL_CARD = "model.json"
# Backends on which the steps between log steps loop inside one compiled program (`make_multi_step`).
_LOOP_IN_PROGRAM = ("gpu", "tpu")


# ---------------------------------------------------------------------------------------------------------------------
# Setup and data.
# ---------------------------------------------------------------------------------------------------------------------

def split_index(config, index) -> dict:
  """The split of an indexed dataset (`index.index_msd`): "train"/"val"/"test" -> case ids."""
  cfg = config.data.split
  return split_lib.split_cases([case.case_id for case in index.cases], num_train=cfg.train, num_val=cfg.val,
                               num_test=cfg.test, seed=cfg.seed)


def make_model(config, num_classes: int, dims: int) -> unet.UNet:
  """The U-Net of `config.model`, sized for `dims` by `DIMS[dims].network`."""
  cfg = config.model
  return unet.UNet(num_classes=num_classes, dims=dims, max_features=cfg.max_features, norm=cfg.norm,
                   upsample=cfg.upsample, dtype=precision.compute_dtype(config), **DIMS[dims].network(config))


def make_schedule(cfg) -> optax.Schedule:
  """Linear warmup and cosine decay over `cfg.steps` (`cfg` is `config.train`)."""
  return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps, cfg.steps,
                                            cfg.learning_rate * cfg.final_lr_fraction)


def make_optimizer(cfg) -> optax.GradientTransformation:
  """Adam(W) on `make_schedule`; the same for every model of a grid."""
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(make_schedule(cfg), weight_decay=cfg.weight_decay))


# ---------------------------------------------------------------------------------------------------------------------
# The training step, for one model; `parallel.ModelAxis` maps it over the group.
# ---------------------------------------------------------------------------------------------------------------------

def make_train_step(model, tx, config, sample_fn, batch_split=parallel.BatchSplit()):
  """The training step of one model.

  Args:
    model: the U-Net.
    tx: the optimiser.
    config: the experiment config.
    sample_fn: `(key, bank, per_model) -> (images, labels, weights)` draws the model's batch.
    batch_split: computes the loss and gradients (`ModelAxis.batch_split`: the batch split over a mesh's data axis).
  """
  cfg = config.train

  def apply_fn(params, images):
    return model.apply({"params": params}, images)

  def loss_fn(logits, labels, weights):
    return losses.segmentation_loss(logits, labels, weights, ce_weight=cfg.ce_weight, dice_weight=cfg.dice_weight)

  def train_step(state, bank, entries):
    """One step of one model. state: {params, opt_state, step, rng, diverged, diverged_step}."""
    key = jax.random.fold_in(state["rng"], state["step"])
    k_sample, k_augment = jax.random.split(key)
    images, labels, weights = sample_fn(k_sample, bank, entries)
    images, labels, weights = augment_lib.augment_batch(k_augment, images, labels, weights, cfg.augment)
    (loss, aux), grads = batch_split.value_and_grad(apply_fn, loss_fn, state["params"], images, labels, weights)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    # A model whose loss or gradients are not finite is frozen; the others of its group are unaffected.
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    keep = finite & ~state["diverged"]
    pick = lambda new, old: jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)
    newly_diverged = ~finite & ~state["diverged"]
    new_state = {
        "params": pick(params, state["params"]),
        "opt_state": pick(opt_state, state["opt_state"]),
        "step": state["step"] + 1,
        "rng": state["rng"],
        "diverged": state["diverged"] | ~finite,
        "diverged_step": jnp.where(newly_diverged, state["step"], state["diverged_step"]),
    }
    return new_state, {"loss": loss, **aux, "diverged": new_state["diverged"]}

  return train_step


def make_multi_step(train_step):
  """Several steps of one model in one program: `(state, shared, per_model) -> (state, outputs of the last step)`.

  `shared` is `{"bank": ..., "steps": int32 []}`; the step count is an argument of the program, not a constant in it,
  so the segments between log and checkpoint steps, whatever their length, share one compiled program and the host
  dispatches once per segment rather than once per step.
  """
  def multi_step(state, shared, per_model):
    step = lambda carry: train_step(carry[0], shared["bank"], per_model)
    outputs = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(step, (state, None))[1])
    return jax.lax.fori_loop(0, shared["steps"], lambda _, carry: step(carry), (state, outputs))
  return multi_step


def make_init(model, tx, example_shape, base_seed: int = 0):
  """`seeds [M] uint32 -> stacked initial states [M, ...]`; model m's keys derive from `base_seed` and `seeds[m]` only.

  A model's initialisation and data-stream keys are `fold_in(key(base_seed), seed)` split in two: they depend on its
  point's study seed, not on its place in a group, so a point trains the same alone or in any grid, and points of
  one study seed share both keys (common random numbers: they differ only in what the study varies).
  """
  def init_one(seed):
    k_init, k_train = jax.random.split(jax.random.fold_in(jax.random.key(base_seed), seed))
    params = model.init(k_init, jnp.zeros((1,) + tuple(example_shape)))["params"]
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(k_train), "diverged": jnp.zeros((), bool),
            "diverged_step": jnp.full((), -1, jnp.int32)}
  return jax.vmap(init_one)


def init_state(model, tx, seeds, example_shape, *, base_seed: int = 0):
  """`make_init`'s stacked initial states for `seeds`, on the default device."""
  return jax.jit(make_init(model, tx, example_shape, base_seed))(jnp.asarray(np.asarray(seeds, np.uint32)))


def grid_programs(config, dims: int, num_classes: int, example_shape, batch_split, pipeline: str = "bank") -> dict:
  """What every group of one dims shares: the model, optimiser, schedule and the per-model functions.

  Built once per grid (`train_and_evaluate` keeps them), so that the model axis maps the same function objects in
  every group and groups of equal shapes reuse one compiled program. `pipeline` names the group's input
  (`inputs.pipeline`): with "stream" the step takes the batch read ahead on the host as its per-model input
  (`stream.batch_taker`) instead of drawing it from the bank.
  """
  dims_lib, group_input = DIMS[dims], input_pipeline.INPUTS[pipeline]
  model = make_model(config, num_classes, dims)
  tx = make_optimizer(config.train)
  step = make_train_step(model, tx, config, group_input.sample_fn(config, dims_lib), batch_split)
  # On accelerators the steps between two log steps run inside one program. XLA:CPU runs a training step inside a
  # loop about 45 times slower than the same step on its own (BENCHMARKS.md), so there the host dispatches each step.
  # Streamed batches arrive one step at a time.
  looped = jax.default_backend() in _LOOP_IN_PROGRAM and group_input.LOOPS
  return {"model": model, "schedule": make_schedule(config.train), "looped": looped,
          "step": make_multi_step(step) if looped else lambda state, shared, per_model: step(
              state, shared["bank"], per_model),
          "init": jax.jit(make_init(model, tx, example_shape, config.seed))}


# ---------------------------------------------------------------------------------------------------------------------
# One group: plans, training loop, evaluation.
# ---------------------------------------------------------------------------------------------------------------------

def train_group(config, points, plans, splits, dataset, group_index: int, checkpoint_dir: pathlib.Path, *,
                sizes=None, programs=None, curves=None, eval_seconds=None, init_params=None, keep=None,
                evaluate_test: bool = True) -> list:
  """Trains the points of one group together on their plans and returns their result rows.

  The group's state is checkpointed to `checkpoint_dir` every `train.checkpoint_every` steps and at the end; a
  group that finds a checkpoint there continues from it. `sizes` pads the group's data to the grid's largest
  (`data_sizes` of the dims module) and `programs` caches `grid_programs` by dims, so that the groups of a grid share
  compiled programs; None: the group's own. Each model's loss at every log step goes to `curves` (a
  `console.CurveWriter`, or None); `eval_seconds` estimates the group's evaluation for the progress line's ETA.
  `init_params` (stacked `[M, ...]`) replaces the initial parameters when there is no checkpoint (a warm-started
  round, `slicejax.training.rounds`); `keep`, a dict, receives the trained `model`, `axis`, `params` (axis form),
  `stacked` state and input `shape`. Without `evaluate_test` only the validation volumes are scored and the rows
  carry no test fields (a round before the last, whose models only choose the next slices).
  """
  dims_lib = DIMS[points[0].dims]
  pool, num_classes = splits["train"], dataset.num_classes
  shape = dims_lib.example_shape(config, pool + splits["val"] + splits["test"])
  axis = parallel.ModelAxis(config.model_axis.strategy, len(points), chunk=config.model_axis.chunk,
                            mesh=tuple(config.model_axis.mesh), batch_size=dims_lib.batch_size(config))
  # The bank on the device when it fits `data.memory_budget_gb`, else the pool's slices on the disk (`inputs.stream`).
  group_input = input_pipeline.choose(config, points[0].dims, sizes or dims_lib.data_sizes(config, points, plans),
                                      shape, dataset.num_channels)(config, dims_lib, points, plans, pool, num_classes,
                                                                   shape, sizes, axis)

  # Model, optimiser, state: the latest checkpoint of this group if there is one.
  key = (points[0].dims, axis.batch_split.axis_name, axis.batch_split.size, group_input.NAME, config.train.steps)
  programs = {} if programs is None else programs
  if key not in programs:
    programs[key] = grid_programs(config, points[0].dims, num_classes, shape + (dataset.num_channels,),
                                  axis.batch_split, group_input.NAME)
  model, schedule, looped = programs[key]["model"], programs[key]["schedule"], programs[key]["looped"]
  # One model at a time (one compiled initialisation for groups of any size), stacked on the host.
  init = programs[key]["init"]
  initial = jax.tree.map(lambda *leaves: np.concatenate(leaves), *[
      jax.tree.map(np.asarray, init(np.asarray([p.seed], np.uint32))) for p in points])
  if init_params is not None:
    initial["params"] = jax.tree.map(np.asarray, init_params)
  checkpoints = checkpoint.GroupCheckpoints(checkpoint_dir)
  initial = axis.to_stacked(axis.from_stacked(initial))  # where the model axis keeps it: the restore's template
  restored = checkpoints.restore_latest(initial)
  state = axis.from_stacked(initial if restored is None else restored)
  first_step = 0 if restored is None else int(axis.fetch(restored["step"])[0])
  before = 0.0 if restored is None else checkpoints.seconds_at(first_step)  # earlier launches' training seconds
  inputs = group_input.start(axis.fetch(initial["rng"]), first_step)
  step_fn = axis.map(programs[key]["step"], donate_state=True)
  logging.info("Group %d: %d %dD models (%s), %s strategy, inputs %s, %d steps of batch %d from step %d.",
               group_index, len(points), points[0].dims, ", ".join(p.name for p in points[:4]) +
               (" ..." if len(points) > 4 else ""), axis.strategy, shape, config.train.steps,
               dims_lib.batch_size(config), first_step)

  # Learning curves: validation Dice on a fixed subset of the validation volumes at `curve_steps`, kept in a file
  # beside the loss curves so that a resumed group keeps the points it had.
  steps, names = config.train.steps, [p.name for p in points]
  curve_volumes = splits["val"][:config.eval.curve_volumes]
  curve_steps = set(curve_schedule(steps, config.eval.curve_points)) if curve_volumes else set()
  predict = dims_lib.predictor(config, model, axis)
  curve_path = None if curves is None else pathlib.Path(curves.logdir) / f"val_group_{group_index}.json"
  val_curve = _read_val_curve(curve_path, names)

  # Loop: segments between the first step (compilation), log steps, checkpoint steps and curve steps; one dispatch
  # per segment where the step loops inside its program, one per step otherwise.
  boundary = lambda s: s % config.train.log_every == 0 or s % config.train.checkpoint_every == 0 or s in curve_steps
  ends = sorted({first_step + 1, steps} | {s for s in range(first_step + 1, steps + 1) if boundary(s)})
  start, done = time.perf_counter(), first_step
  one_step = {"bank": group_input.shared, "steps": axis.put_shared(np.int32(1))}
  with console.GroupProgress(group_index, len(points), steps, first_step, eval_seconds=eval_seconds) as progress, \
       inputs:
    for end in ends if first_step < steps else ():
      if looped:
        state, outputs = step_fn(state, {"bank": group_input.shared, "steps": axis.put_shared(np.int32(end - done))},
                                 group_input.per_model())
      for _ in range(0 if looped else end - done):
        state, outputs = step_fn(state, one_step, group_input.per_model())
        done += 1
        if done < end and done > first_step + 1 and progress.due():  # never quiet for long between log steps
          progress.update(done, *axis.fetch((outputs["loss"], outputs["diverged"])))
      done = end
      if end == first_step + 1 or end % config.train.log_every == 0 or end == steps:
        loss, diverged = axis.fetch((outputs["loss"], outputs["diverged"]))
        progress.update(end, loss, diverged)
        if curves is not None:
          curves.write_scalars(end, console.curve_scalars(group_index, names, loss, lr=float(schedule(end - 1)),
                                                          diverged=diverged))
      if end in curve_steps:
        progress.phase(f"validation curve at step {end} ({console.count(len(curve_volumes), 'volume')})")
        params = axis.from_stacked(axis.to_stacked(state)["params"])
        dice = evaluate_lib.score(predict(params, curve_volumes, shape), curve_volumes, num_classes)["dice_mean"]
        val_curve[end] = [float(d) for d in dice]
        if curve_path is not None:
          files.atomic_write(curve_path, json.dumps({"names": names, "curve": val_curve}))
          curves.write_scalars(end, {f"val_dice/group_{group_index}/{name}": d for name, d in zip(names, dice)})
      if end % config.train.checkpoint_every == 0 or end == steps:
        checkpoints.save(end, axis.to_stacked(state), seconds=before + time.perf_counter() - start)
    jax.block_until_ready(state)
  checkpoints.close()
  train_seconds = before + time.perf_counter() - start

  # Evaluation: dense, on the test volumes and the validation volumes.
  console.phase_line(group_index, ("test evaluation (" + console.count(len(splits['test']), 'test volume') + ", "
                                   if evaluate_test else "evaluation (")
                     + f"{console.count(len(splits['val']), 'validation volume')})")
  stacked = axis.to_stacked(state)
  params = axis.from_stacked(stacked["params"])
  start = time.perf_counter()
  segment = dims_lib.segmenter(config, model, axis)
  scores = {}
  if evaluate_test:
    scores["test"] = evaluate_lib.score_labels(segment(params, splits["test"], shape), splits["test"], num_classes,
                                               tolerance_mm=config.eval.nsd_tolerance_mm,
                                               surface=config.eval.surface_metrics)
  if splits["val"]:
    scores["val"] = evaluate_lib.score_labels(segment(params, splits["val"], shape), splits["val"], num_classes,
                                              tolerance_mm=config.eval.nsd_tolerance_mm, surface=False)
  eval_seconds = time.perf_counter() - start
  if keep is not None:
    keep.update(model=model, axis=axis, params=params, stacked=stacked, shape=shape)

  depths = {v.case_id: v.depth for v in pool}
  diverged = axis.fetch(stacked["diverged"])
  diverged_step = axis.fetch(stacked["diverged_step"])
  rows = [results.make_row(
      point, group=group_index, model_index=m, steps=steps,
      density=None if point.reference else point.slices_per_volume / float(np.mean([depths[c] for c in plan])),
      class_names=dataset.class_names[1:], test=_test_scores(config, scores["test"], m) if evaluate_test else None,
      val=_val_scores(scores.get("val"), val_curve, m),
      diverged=diverged[m], diverged_step=diverged_step[m], interpolation=group_input.interpolation.get(m),
      seconds={"train_seconds": train_seconds / len(points), "group_train_seconds": train_seconds,
               "eval_seconds": eval_seconds / len(points)})
      for m, (point, plan) in enumerate(zip(points, plans))]
  split = "test" if evaluate_test else "val"
  dice = (f"{split} Dice {np.array2string(scores[split]['dice_mean'], precision=3)}" if split in scores
          else "no validation volumes")
  console.say(f"group {group_index}: {dice} ({console.duration(train_seconds)} training, "
              f"{console.duration(eval_seconds)} evaluation)")
  return rows


def curve_schedule(steps: int, points: int) -> list:
  """The steps at which learning curves are measured: `points` evenly spaced steps, the last one `steps`."""
  return sorted({max(1, round(steps * i / points)) for i in range(1, points + 1)}) if points else []


def _read_val_curve(path, names) -> dict:
  """The learning-curve points a resumed group had measured: {step: [M] Dice}; {} without any."""
  if path is None or not path.exists():
    return {}
  saved = json.loads(path.read_text())
  return {int(step): dice for step, dice in saved["curve"].items()} if saved.get("names") == names else {}


def _test_scores(config, scores, m) -> dict:
  """Model m's test results for `results.make_row`."""
  out = {"volumes": scores["volumes"], "cases": scores["cases"], "class_volumes": scores["class_volumes"],
         "per_volume": {"dice": scores["dice"][m]}}
  for metric in ("dice", "hd95", "nsd") if config.eval.surface_metrics else ("dice",):
    out.update({f"{metric}_mean": scores[f"{metric}_mean"][m], f"{metric}_per_class": scores[f"{metric}_per_class"][m]})
    out["per_volume"][metric] = scores[metric][m]
  if config.eval.surface_metrics:
    out["nsd_tolerance_mm"] = config.eval.nsd_tolerance_mm
  return out


def _val_scores(scores, val_curve, m) -> dict | None:
  """Model m's validation results for `results.make_row`, with its learning curve."""
  if scores is None:
    return None
  steps = sorted(val_curve)
  return {"dice_mean": scores["dice_mean"][m], "dice_per_class": scores["dice_per_class"][m],
          "volumes": scores["volumes"], "curve": {"steps": steps, "dice": [val_curve[s][m] for s in steps]}}


# ---------------------------------------------------------------------------------------------------------------------
# The study.
# ---------------------------------------------------------------------------------------------------------------------

def read_inputs(config, *, use_cache: bool = True, left_out: list | None = None):
  """Checks the config and the data and builds the grid and the plans that need no voxels; writes nothing but cache
  entries (none with `use_cache=False`, unless the volumes exceed the memory budget: they are then read through the
  cache, mapped).

  Order: the config (`config_lib.validate`), the dataset's structure and headers (`index.index_msd`), the split and the
  grid against the pool's depths, the plans that need no voxels; only then are voxels read.

  Returns:
    (dataset, splits, depths, points, plans): splits maps "train"/"val"/"test" to lists of Volumes, depths the
    training pool's case ids to their depths; plans maps point name -> annotation plan for every point whose
    selection needs no slice embeddings. `left_out`, if given, receives the allocations the grid leaves out.
  """
  config_lib.validate(config)
  cfg = config.data
  index = index_lib.index_msd(data_lib.dataset_root(config), slicing_axis=cfg.slicing_axis,
                              target_spacing=tuple(cfg.target_spacing))
  split = split_index(config, index)
  depths = {case.case_id: case.depth for case in index.cases if case.case_id in set(split["train"])}
  # Labels with an ignore label are real sparse annotations: their plan is read from the voxels (`study.sparse`).
  annotated = sparse.check_study(config.study, index.ignore_label)
  points = [] if annotated else study.expand(config.study, depths, left_out)
  plans = {p.name: plan_of(config, p, depths) for p in points if not needs_embeddings(p, config)}
  used = index.select(split["train"] + split["val"] + split["test"])
  # Volumes beyond the memory budget (or for the streamed input) stay in the cache, read a part at a time; beyond the
  # budget even without `use_cache`, as they could not be held otherwise.
  loaded_bytes = used.loaded_bytes()
  mapped = loaded_bytes > stream.budget_bytes(config) or (use_cache and cfg.pipeline == "stream")
  if mapped:
    logging.info("The volumes (%.2f GB) stay in the cache and are read as needed.", loaded_bytes / 2**30)
    use_cache = True
  dataset = data_lib.load_volumes(used, normalization=cfg.normalization, ct_window=tuple(cfg.ct_window),
                                  cache_dir=data_lib.cache_dir(config) if use_cache else None, mapped=mapped)
  by_id = dataset.by_id()
  splits = {name: [by_id[c] for c in ids] for name, ids in split.items()}
  if annotated:
    plan = sparse.annotated_plan(splits["train"], dataset.ignore_label)
    points = sparse.points(config.study, plan)
    plans = {p.name: plan for p in points}
  logging.info("Data %s: %d classes %s, %d channels; %d train / %d val / %d test volumes.", dataset.name,
               dataset.num_classes, dataset.class_names, dataset.num_channels,
               *(len(splits[k]) for k in ("train", "val", "test")))
  return dataset, splits, depths, points, plans


def steps_of(config, point) -> int:
  """The training steps of `point`: `study.reference_steps` for the fully annotated reference where set, else
  `train.steps`."""
  return (point.reference and config.study.reference_steps) or config.train.steps


def with_steps(config, steps: int):
  """`config` itself, or a copy of it whose `train.steps` is `steps` (a group that trains its own number of
  steps)."""
  if steps == config.train.steps:
    return config
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.train.steps = steps
  copy.lock()
  return copy


def needs_embeddings(point, config=None) -> bool:
  """Whether `point`'s plan needs the training pool's slice embeddings (`ual`, or a round point's selections)."""
  if point.rounds > 1:
    return rounds_lib.needs_embeddings(config, point)
  return not point.reference and selection_lib.get(point.selection).NEEDS_EMBEDDINGS


def plan_of(config, point, depths, embeddings=None) -> dict:
  """The annotation plan of `point` over the training pool's `depths` (`study.make_plan` with the config's options;
  a round point's round 0, `rounds.first_plan`)."""
  if point.rounds > 1:
    return rounds_lib.first_plan(config, point, depths, embeddings)
  options = config.get(point.selection) if point.selection in config else None
  return study.make_plan(point, depths, roi=config.study.roi, options=options, embeddings=embeddings)


def keep_recorded_plans(config, rundir: pathlib.Path, points, plans: dict, depths) -> dict:
  """`plans` with the embedding-made plan of each one-shot point that `rundir/plans/` already holds put back.

  A `ual` plan comes from slice embeddings, and the encoder trained on another machine (CPU, library build) gives
  other embeddings and so other slices. A run resumed there, or seeded there from committed rows and plans, keeps the
  slices its first launch chose, so that every group of a run trains on one set of plans. Random and fixed plans are
  the same everywhere and are made afresh; a round point's round 0 is kept by its round record
  (`rounds.read_record`).
  """
  out, moved = dict(plans), []
  for point in points:
    path = rundir / "plans" / f"{point.name}.json"
    if point.reference or point.rounds > 1 or not needs_embeddings(point, config) or not path.is_file():
      continue
    out[point.name] = study.read_plan(path, point, depths)
    if out[point.name] != {c: sorted(int(i) for i in s) for c, s in plans[point.name].items()}:
      moved.append(point.name)
  if moved:
    console.say(f"{len(moved)} plan(s) made from slice embeddings differ from the ones {rundir / 'plans'} records "
                f"(e.g. {moved[0]}): the recorded ones are kept")
  return out


def prepare(config):
  """Checks every input (`read_inputs`) and builds every group's points and plans; writes nothing but cache entries.

  Returns:
    (dataset, splits, groups, plans, costs): as `read_inputs`, with the points split into groups, plans for every
    point (those of `ual` points made from slice embeddings once the voxels are read), and costs holding the encoder's
    seconds (training plus embedding) when a strategy needs slice embeddings.
  """
  dataset, splits, depths, points, plans = read_inputs(config)
  fingerprint = fingerprint_lib.of_config(config)  # said once the config and the data have passed their checks
  for line in fingerprint_lib.describe(fingerprint, config=config) if fingerprint is not None else ():
    console.say(line)
  costs = {}
  if any(needs_embeddings(p, config) for p in points):
    embeddings, info = pool_embeddings(config, splits)
    costs = {"encoder_seconds": info["train_seconds"] + info["embed_seconds"]}
    plans.update({p.name: plan_of(config, p, depths, embeddings) for p in points if needs_embeddings(p, config)})
  plans = {p.name: plans[p.name] for p in points}
  max_models = group_size(config, points, plans, splits, dataset)
  groups = rounds_lib.group(config, points, max_models, lambda p: steps_of(config, p))
  return dataset, splits, groups, plans, costs


def pool_images(config, splits) -> dict:
  """The training pool's images as the UAL encoder sees them: case id -> `[D, H, W, C]` at the 2D example shape."""
  shape = two_d.example_shape(config, splits["train"] + splits["val"] + splits["test"])
  return {v.case_id: padding.fit_to_shape(v.image, shape)[0] for v in splits["train"]}


def pool_embeddings(config, splits) -> tuple:
  """The UAL encoder's slice embeddings of the training pool (`encoder.slice_embeddings`, cached): (case id ->
  `[D, F]`, info)."""
  return encoder.slice_embeddings(pool_images(config, splits), config.ual.encoder, seed=config.ual.seed,
                                  cache_dir=data_lib.cache_dir(config) / "encoder")


def one_model_step(config, dims: int, points, plans, splits, dataset) -> dict:
  """One model's training step of a dims, compiled over the bank of all `points` of that dims (the grid's largest).

  Used to size groups (`auto_max_models`) and to measure a run before it starts (`slicejax.modes.check`).

  Returns:
    dict of the `grid_programs`, the `compiled` step, its inputs `state`, `shared` and `per_model` (one model's, the
    first of `points`), `compile_seconds` (the step's), `init_seconds` (the first initialisation, compiling it),
    `pipeline` ("bank" or "stream", as `stream.choose` picks it for the grid's
    largest bank), and `model_bytes` (the step's temporary buffers and one model's state in and out, from XLA's memory
    analysis, plus on the stream path its batches in flight) and `bank_bytes` (0 on the stream path).
  """
  dims_lib, same = DIMS[dims], [p for p in points if p.dims == dims]
  shape = dims_lib.example_shape(config, splits["train"] + splits["val"] + splits["test"])
  sizes = dims_lib.data_sizes(config, same, [plans[p.name] for p in same])
  group_input = input_pipeline.choose(config, dims, sizes, shape, dataset.num_channels)
  bank, per_model, in_flight = group_input.one_model(config, dims_lib, same[0], plans[same[0].name], splits["train"],
                                                     dataset.num_classes, shape, sizes, dataset.num_channels)
  pipeline = group_input.NAME
  programs = grid_programs(config, dims, dataset.num_classes, shape + (dataset.num_channels,), parallel.BatchSplit(),
                           pipeline)
  start = time.perf_counter()  # one model's initialisation, compiled: a launch pays it once per grid and dims
  state = jax.block_until_ready(jax.tree.map(lambda leaf: leaf[0], programs["init"](
      np.asarray([same[0].seed], np.uint32))))
  init_seconds = time.perf_counter() - start
  shared = {"bank": jax.tree.map(jnp.asarray, bank), "steps": jnp.int32(1)}
  start = time.perf_counter()
  compiled = jax.jit(programs["step"], donate_argnums=0).lower(state, shared, per_model).compile()
  compile_seconds = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
  return {"programs": programs, "compiled": compiled, "state": state, "shared": shared, "per_model": per_model,
          "shape": shape, "compile_seconds": compile_seconds, "init_seconds": init_seconds,
          "pipeline": pipeline,
          "model_bytes": (analysis.temp_size_in_bytes if analysis else 0) + 2 * state_bytes + in_flight,
          "bank_bytes": sum(leaf.nbytes for leaf in jax.tree.leaves(bank))}


def group_size(config, points, plans, splits, dataset) -> int:
  """Models trained together: `config.model_axis.max_models`, or where it is 0 as many as fit (`auto_max_models`)."""
  return config.model_axis.max_models or auto_max_models(config, points, plans, splits, dataset)


def auto_max_models(config, points, plans, splits, dataset, limit: int = 64) -> int:
  """The most models per group that fit in memory, from the compiled training step's memory analysis.

  One model's step is compiled for each dims of the grid (`one_model_step`); its temporary buffers and its state (in
  and out) are one model's share, the grid's largest bank is shared. The group size leaves a quarter of the device's
  memory (the host's on the CPU) free, and is at most `limit`.
  """
  stats = jax.devices()[0].memory_stats() or {}
  available = stats.get("bytes_limit") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  size = limit
  for dims in sorted({p.dims for p in points}):
    step = one_model_step(config, dims, points, plans, splits, dataset)
    fits = int((0.75 * available - step["bank_bytes"]) // max(step["model_bytes"], 1))
    logging.info("%dD: %.1f MB per model, bank %.1f MB, %.1f GB available: %d models per group fit.", dims,
                 step["model_bytes"] / 2**20, step["bank_bytes"] / 2**20, available / 2**30, fits)
    size = min(size, max(fits, 1))
  return size


def grid_sizes(config, groups, plans) -> dict:
  """dims -> the largest `data_sizes` over the groups of that dims: every group is padded to them."""
  sizes = {}
  for group_points in groups:
    dims = group_points[0].dims
    group = DIMS[dims].data_sizes(config, group_points, [plans[p.name] for p in group_points])
    sizes[dims] = {k: max(v, sizes.get(dims, {}).get(k, 0)) for k, v in group.items()}
  return sizes


def model_card(config, dataset, splits) -> dict:
  """What applying a run's models needs beyond config.json (`MODEL_CARD`, read by `slicejax.modes.predict`): classes,
  channels, ignore label, normalisation, slicing axis, the 2D in-plane shape and the training volumes' median
  spacing."""
  volumes = splits["train"] + splits["val"] + splits["test"]
  spacings = np.array([v.spacing for v in splits["train"]], np.float64)
  return {"format": 1, "class_names": list(dataset.class_names), "channel_names": list(dataset.channel_names),
          "ignore_label": getattr(dataset, "ignore_label", None),
          "normalization": config.data.normalization, "ct_window": list(config.data.ct_window),
          "slicing_axis": int(config.data.slicing_axis),
          "target_spacing": list(config.data.get("target_spacing", ()) or ()),
          "shape_2d": [int(n) for n in DIMS[2].example_shape(config, volumes)],
          "patch_3d": [int(n) for n in config.three_d.patch],
          "median_spacing": np.median(spacings, axis=0).tolist() if len(spacings) else None}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, *, fresh: bool = False) -> list:
  """Runs every group of the config's grid that has no results yet, then writes the summary.

  Args:
    config: the experiment config.
    workdir: the run's folder. A rerun with the same config resumes there; a different config is refused unless
      `fresh`, which starts the run in a new subfolder `run_<n>`.
    fresh: see above.

  Returns:
    All result rows in results.jsonl.
  """
  workdir = pathlib.Path(workdir)
  # Of the processes of a multi-process run, only the writer (process 0) locks the workdir and writes records; the
  # others read what it wrote (see slicejax.training.distributed).
  writer = distributed.is_writer()
  with contextlib.ExitStack() as lock:
    with distributed.writer_first("setup"):
      # Every input is checked before the workdir is touched.
      dataset, splits, groups, plans, costs = prepare(config)
      if writer:
        workdir.mkdir(parents=True, exist_ok=True)
        lock.enter_context(workdir_lib.WorkdirLock(workdir))
      rundir = workdir_lib.check_config(workdir, json.loads(config.to_json_best_effort()), fresh=fresh,
                                        defaults=json.loads(config_lib.base().to_json_best_effort()))
      plans = keep_recorded_plans(config, rundir, [p for g in groups for p in g], plans,
                                  {v.case_id: v.depth for v in splits["train"]})
    launch, recorded = None, False
    if writer:
      # The versions and machine this launch runs on, recorded before its first group trains (a launch that finds
      # every group done records nothing); its rows name the line (`environment`).
      launches = rundir / environment.LAUNCHES_NAME
      launch = len(results.read_rows(launches))
      # The Holm families of the whole grid, so that a report of the unfinished run counts the comparisons not yet
      # made (`report_runs.read_families`).
      files.atomic_write(rundir / workdir_lib.FAMILIES_NAME, json.dumps(
          comparisons_lib.grid_family_sizes([p for g in groups for p in g]), indent=1, sort_keys=True))
      files.atomic_write(rundir / "groups.json", json.dumps(
          [{str(m): p.name for m, p in enumerate(rounds_lib.final_models(config, g))} for g in groups], indent=1))
      (rundir / "plans").mkdir(exist_ok=True)
      for name, plan in rounds_lib.recorded_plans(rundir, groups, plans).items():  # a round point's latest
        files.atomic_write(rundir / "plans" / f"{name}.json", json.dumps(plan, sort_keys=True))
      # What applying the trained models later needs (classes, normalisation, shapes, spacing): `modes.predict`.
      files.atomic_write(rundir / MODEL_CARD, json.dumps(model_card(config, dataset, splits), indent=1))
      # Plans of points that are not in this grid were left by a launch whose config this one replaced.
      for stale in set((rundir / "plans").glob("*.json")) - {rundir / "plans" / f"{name}.json" for name in plans}:
        stale.unlink()
    console.say(f"{len(plans)} points in {len(groups)} groups; results in {rundir}")

    results_path = rundir / "results.jsonl"
    # Read once, before any group runs, so that every process skips the same groups.
    done = {row["name"] for row in results.read_rows(results_path)}
    curves = lock.enter_context(console.CurveWriter(rundir / "curves")) if writer else None
    eval_per_model = {}  # dims -> seconds of evaluation per model, measured on the last group of that dims
    sizes, programs = grid_sizes(config, groups, plans), {}
    for index, group_points in enumerate(groups):
      if all(p.name in done for p in group_points):
        console.say(f"group {index}: results exist, skipped")
        continue
      if writer and not recorded:
        results.append_rows(launches, [{"launch": launch, **environment.describe()}])
        recorded = True
      dims = group_points[0].dims
      estimate = eval_per_model[dims] * len(group_points) if dims in eval_per_model else None
      group_config = with_steps(config, steps_of(config, group_points[0]))
      if group_points[0].rounds > 1:
        rows = rounds_lib.train_rounds(group_config, group_points, plans, splits, dataset, index, rundir,
                                       train_group=train_group, sizes=sizes[dims], programs=programs, curves=curves,
                                       embeddings=lambda: pool_embeddings(config, splits)[0])
      else:
        rows = train_group(group_config, group_points, [plans[p.name] for p in group_points], splits, dataset, index,
                           rundir / "checkpoints" / f"group_{index}", sizes=sizes[dims], programs=programs,
                           curves=curves, eval_seconds=estimate)
      eval_per_model[dims] = rows[0]["eval_seconds"]
      final = plans
      if group_points[0].rounds > 1:
        names = [p.name for p in group_points]
        final = rounds_lib.plans_after(rounds_lib.read_record(rundir, index, names), names)
      for point, row in zip(group_points, rows):
        # The work the plan asked for: the foreground of its annotated slices (`slicejax.study.cost`).
        row["annotated_foreground"] = cost_lib.foreground_pixels(final[point.name], splits["train"],
                                                                 getattr(dataset, "ignore_label", None))
        if not point.reference:  # The slices the model trained on (the reference trains on every slice).
          row["plan"] = final[point.name]
        if needs_embeddings(point, config):
          row.update(costs)  # The encoder is part of the price of these plans.
        if launch is not None:
          row["launch"] = launch
      if writer:
        results.append_rows(results_path, rows)
        curves.flush()

    with distributed.writer_first("summary"):
      rows = results.read_rows(results_path)
      if writer:
        report.write_summary(rundir, rows, dict(config.stats.to_dict(),
                                                run_families=report_runs.read_families([rundir])),
                             cost=config.cost.to_dict(),
                             launches=report_runs.read_launches([rundir]))
        console.plot_curves(rundir / "curves", rundir / "curves.png")
        console.say(f"wrote {results_path}, summary.md, summary.csv, the figures and curves.png")
  return rows
