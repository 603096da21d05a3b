"""Trains and evaluates every point of a study grid: `train_and_evaluate(config, workdir)`.

Reads top to bottom: setup, data, then per group of points that share shapes: plans, model and optimiser, the
training step, the loop, evaluation and results. A group's M models train together on the model axis
(`slicejax.parallel`), each with its own parameters, optimiser state, annotated slices and random stream; they share
the step count and schedule, so budgets differ only in data.

The workdir is the unit of record: `config.json` (the resolved config), `groups.json` (group -> model index ->
point), `plans/<point>.json` (annotation plans), `results.jsonl` (one row per trained model) and the summary
files. A group whose rows are all in results.jsonl is skipped when the same command runs again.
"""

import contextlib
import json
import pathlib
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from slicejax import augment as augment_lib
from slicejax import checkpoint
from slicejax import config_lib
from slicejax import data as data_lib
from slicejax import distributed
from slicejax import encoder
from slicejax import evaluate as evaluate_lib
from slicejax import interpolation
from slicejax import losses
from slicejax import parallel
from slicejax import patches
from slicejax import phantom
from slicejax import report
from slicejax import sampler
from slicejax import selection as selection_lib
from slicejax import study
from slicejax import unet
from slicejax import workdir as workdir_lib
from slicejax.errors import InputError


# ---------------------------------------------------------------------------------------------------------------------
# Setup and data.
# ---------------------------------------------------------------------------------------------------------------------

def load_data(config, workdir: pathlib.Path):
  """Loads the dataset named by `config.data` and splits it.

  Returns:
    (dataset, splits) where splits maps "train"/"val"/"test" to lists of Volumes.
  """
  cfg = config.data
  if cfg.source == "phantom":
    root = phantom.write_phantom(workdir / "phantom", num_cases=cfg.phantom.num_cases, shape=tuple(cfg.phantom.shape),
                                 num_channels=cfg.phantom.num_channels, seed=cfg.phantom.seed)
  elif cfg.source == "msd":
    if not cfg.root:
      raise InputError("config.data.root", cfg.get("missing_root_hint") or "set it to the dataset folder")
    root = pathlib.Path(cfg.root).expanduser()
  else:
    raise InputError("config.data.source", f"unknown source {cfg.source!r} (msd or phantom)")
  dataset = data_lib.load_msd(root, slicing_axis=cfg.slicing_axis, normalization=cfg.normalization,
                              ct_window=tuple(cfg.ct_window), cache_dir=cfg.cache_dir or workdir / "cache")
  split = data_lib.split_cases([v.case_id for v in dataset.volumes], num_train=cfg.split.train,
                               num_val=cfg.split.val, num_test=cfg.split.test, seed=cfg.split.seed)
  by_id = dataset.by_id()
  splits = {name: [by_id[c] for c in ids] for name, ids in split.items()}
  logging.info("Data %s: %d classes %s, %d channels; %d train / %d val / %d test volumes.", dataset.name,
               dataset.num_classes, dataset.class_names, dataset.num_channels, *(len(splits[k]) for k in
                                                                                  ("train", "val", "test")))
  return dataset, splits


def static_shape(config, volumes) -> tuple:
  """In-plane (H, W) for the group: `config.data.shape`, or the largest in-plane size rounded up so that every
  downsampling divides it."""
  if config.data.shape:
    return tuple(config.data.shape)
  multiple = 2 ** (config.model.num_stages - 1)
  sizes = np.max([v.label.shape[1:] for v in volumes], axis=0)
  return tuple(int(-(-s // multiple) * multiple) for s in sizes)


def _interpolate(config, volume, annotated, num_classes):
  return interpolation.interpolate(volume.label, annotated, num_classes, spacing=volume.spacing[1:],
                                   align_centroids=config.interpolation.align_centroids)


def slice_data(config, points, plans, pool, shape, num_classes):
  """2D training data of a group: the slice bank and each model's entries over it.

  Interpolated slices of a model with interpolation on are appended to the bank's labels, and enter its entries with
  weight `config.interpolation.weight`.

  Returns:
    (bank, entries, quality): bank of `images [N, H, W, C]`, `labels [L, H, W]`, `valid [N, H, W]`; the stacked
    entries of `sampler.model_entries`; per model index with interpolation, the Dice of its interpolated slices.
  """
  bank = sampler.slice_bank(pool, shape)
  offsets = bank.pop("offsets")
  by_id = {v.case_id: v for v in pool}
  extra, label_rows, quality = [], [bank["labels"]], {}
  next_row = len(bank["labels"])
  for m, (point, plan) in enumerate(zip(points, plans)):
    entries = []
    if point.interpolation:
      filleds, cases = [], sorted(plan)
      for case in cases:
        filled, known = _interpolate(config, by_id[case], plan[case], num_classes)
        between = np.setdiff1d(np.flatnonzero(known), plan[case])
        label_rows.append(data_lib.fit_to_shape(filled[between], shape)[0])
        entries += [(offsets[case] + d, next_row + i, config.interpolation.weight) for i, d in enumerate(between)]
        next_row += len(between)
        filleds.append(filled)
      quality[m] = interpolation.pooled_interpolation_dice([by_id[c].label for c in cases], filleds,
                                                           [plan[c] for c in cases], num_classes)
    extra.append(entries)
  bank["labels"] = np.concatenate(label_rows).astype(np.int32)
  return bank, sampler.model_entries(plans, offsets, extra), quality


def volume_data(config, points, plans, pool, num_classes):
  """3D training data of a group: the volume bank and each model's plane weights.

  Every pool volume is padded at the end to the largest size in the pool (and at least the patch). A model's
  `planes [V, Dm]` are 1 on its annotated planes and `config.interpolation.weight` on interpolated ones; a model
  with interpolation gets its own label volume (true labels on annotated planes, interpolated ones between) appended
  to the bank's labels, and `label_rows [V]` says which label row each volume uses.

  Returns:
    (bank, per_model, quality) as in `slice_data`, with per_model = {planes [M, V, Dm], label_rows [M, V]}.
  """
  patch = tuple(config.three_d.patch)
  shape = tuple(int(max([v.label.shape[i] for v in pool] + [patch[i]])) for i in range(3))
  index = {v.case_id: i for i, v in enumerate(pool)}
  bank = {"images": np.stack([data_lib.pad_volume(v.image, shape) for v in pool]).astype(np.float32),
          "valid": np.stack([data_lib.pad_volume(np.ones(v.label.shape, np.float32), shape) for v in pool])}
  labels = [data_lib.pad_volume(v.label, shape) for v in pool]
  planes = np.zeros((len(points), len(pool), shape[0]), np.float32)
  label_rows = np.tile(np.arange(len(pool), dtype=np.int32), (len(points), 1))
  quality = {}
  for m, (point, plan) in enumerate(zip(points, plans)):
    filleds, cases = [], sorted(plan)
    for case in cases:
      v = index[case]
      if point.interpolation:
        filled, known = _interpolate(config, pool[v], plan[case], num_classes)
        planes[m, v, :len(known)] = known * config.interpolation.weight
        label_rows[m, v] = len(labels)
        labels.append(data_lib.pad_volume(filled, shape))
        filleds.append(filled)
      planes[m, v, plan[case]] = 1.0
    if point.interpolation:
      quality[m] = interpolation.pooled_interpolation_dice([pool[index[c]].label for c in cases], filleds,
                                                           [plan[c] for c in cases], num_classes)
  bank["labels"] = np.stack(labels).astype(np.int32)
  return bank, {"planes": planes, "label_rows": label_rows}, quality


def make_model(config, num_classes: int, dims: int) -> unet.UNet:
  """The U-Net of `config.model`; 3D models take width, depth, kernels and strides from `config.three_d`."""
  cfg = config.model
  if cfg.name != "unet":
    raise InputError("config.model.name", f"unknown model {cfg.name!r} (available: unet)")
  if dims not in (2, 3):
    raise InputError("config.study.dims", f"dims must be 2 or 3, got {dims}")
  sizes = dict(features=cfg.features, num_stages=cfg.num_stages, kernel_sizes=None, strides=None)
  if dims == 3:
    c3 = config.three_d
    if c3.conv_impl not in ("auto", "2d", "3d"):
      raise InputError("config.three_d.conv_impl", f"must be auto, 2d or 3d, got {c3.conv_impl!r}")
    as_2d = c3.conv_impl == "2d" or (c3.conv_impl == "auto" and jax.default_backend() == "cpu")
    sizes = dict(features=c3.features, num_stages=c3.num_stages, kernel_sizes=tuple(c3.kernel_sizes) or None,
                 strides=tuple(c3.strides) or None, conv3d_as_2d=as_2d)
  return unet.UNet(num_classes=num_classes, dims=dims, max_features=cfg.max_features, norm=cfg.norm,
                   upsample=cfg.upsample, dtype=jnp.dtype(cfg.dtype), **sizes)


def make_optimizer(cfg) -> optax.GradientTransformation:
  """Adam(W) with linear warmup and cosine decay over `cfg.steps`; the same for every model of a grid."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps, cfg.steps,
                                                cfg.learning_rate * cfg.final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(schedule, weight_decay=cfg.weight_decay))


# ---------------------------------------------------------------------------------------------------------------------
# The training step, for one model; `parallel.ModelAxis` maps it over the group.
# ---------------------------------------------------------------------------------------------------------------------

def slice_sampler(batch_size: int):
  """2D: a batch of annotated (or interpolated) slices from the bank; see `sampler.sample`."""
  return lambda key, bank, entries: sampler.sample(key, bank, entries, batch_size)


def patch_sampler(config):
  """3D: a batch of patches that each hold an annotated plane; see `patches.sample_patches`."""
  c3 = config.three_d
  return lambda key, bank, per_model: patches.sample_patches(
      key, bank, per_model["planes"], tuple(c3.patch), c3.batch_size, foreground_prob=c3.foreground_prob,
      label_rows=per_model["label_rows"])


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
    return new_state, {"loss": loss, **aux}

  return train_step


def init_state(model, tx, seeds, example_shape, axis=None):
  """Stacked initial states `[M, ...]`, one per seed; model m's init and data streams derive from its seed.

  With a `parallel.ModelAxis`, the states are created where it keeps the stacked state (over a device mesh).
  """
  def init_one(seed):
    key = jax.random.key(seed)
    k_init, k_train = jax.random.split(key)
    params = model.init(k_init, jnp.zeros((1,) + tuple(example_shape)))["params"]
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(k_train), "diverged": jnp.zeros((), bool),
            "diverged_step": jnp.full((), -1, jnp.int32)}
  if axis is not None:
    return axis.create_stacked(jax.vmap(init_one), np.asarray(seeds, np.uint32))
  return jax.jit(jax.vmap(init_one))(jnp.asarray(seeds, jnp.uint32))


# ---------------------------------------------------------------------------------------------------------------------
# One group: plans, training loop, evaluation.
# ---------------------------------------------------------------------------------------------------------------------

def train_group(config, points, plans, splits, dataset, group_index: int, checkpoint_dir: pathlib.Path) -> list:
  """Trains the points of one group together on their plans and returns their result rows.

  The group's state is checkpointed to `checkpoint_dir` every `train.checkpoint_every` steps and at the end; a
  group that finds a checkpoint there continues from it.
  """
  pool = splits["train"]
  dims = points[0].dims
  if dims == 2:
    shape = static_shape(config, pool + splits["test"])
    bank, per_model, interp_quality = slice_data(config, points, plans, pool, shape, dataset.num_classes)
    sample_fn, example_shape, batch_size = slice_sampler(config.train.batch_size), shape, config.train.batch_size
  else:
    bank, per_model, interp_quality = volume_data(config, points, plans, pool, dataset.num_classes)
    sample_fn, example_shape = patch_sampler(config), tuple(config.three_d.patch)
    batch_size = config.three_d.batch_size
  axis = parallel.ModelAxis(config.model_axis.strategy, len(points), chunk=config.model_axis.chunk,
                            mesh=tuple(config.model_axis.mesh), batch_size=batch_size)
  device_bank = axis.put_shared(bank)

  # Model, optimiser, state: the latest checkpoint of this group if there is one.
  model = make_model(config, dataset.num_classes, dims)
  tx = make_optimizer(config.train)
  seeds = [config.seed * 1_000_003 + group_index * 1_009 + m for m in range(len(points))]
  initial = init_state(model, tx, seeds, example_shape + (dataset.num_channels,), axis)
  checkpoints = checkpoint.GroupCheckpoints(checkpoint_dir)
  restored = checkpoints.restore_latest(initial)
  state = axis.from_stacked(initial if restored is None else restored)
  first_step = 0 if restored is None else int(axis.fetch(restored["step"])[0])
  per_model = axis.from_stacked(per_model)
  step_fn = axis.map(make_train_step(model, tx, config, sample_fn, axis.batch_split), donate_state=True)
  logging.info("Group %d: %d %dD models (%s), %s strategy, inputs %s, %d steps of batch %d from step %d.",
               group_index, len(points), dims, ", ".join(p.name for p in points[:4]) +
               (" ..." if len(points) > 4 else ""), axis.strategy, example_shape, config.train.steps, batch_size,
               first_step)

  # Loop.
  steps = config.train.steps
  start = time.perf_counter()
  for step in range(first_step + 1, steps + 1):
    state, outputs = step_fn(state, device_bank, per_model)
    if step % config.train.log_every == 0 or step == steps:
      loss = axis.fetch(outputs["loss"])
      elapsed = time.perf_counter() - start
      per_step = elapsed / (step - first_step)
      logging.info("group %d step %d/%d  loss %s  %.3f s/step  ETA %.0f s", group_index, step, steps,
                   np.array2string(loss, precision=3, max_line_width=200), per_step, per_step * (steps - step))
    if step % config.train.checkpoint_every == 0 or step == steps:
      checkpoints.save(step, axis.to_stacked(state))
  jax.block_until_ready(state)
  checkpoints.close()
  train_seconds = time.perf_counter() - start

  # Evaluation.
  stacked = axis.to_stacked(state)
  params = axis.from_stacked(stacked["params"])
  start = time.perf_counter()
  if dims == 2:
    apply = lambda p, images: jnp.argmax(model.apply({"params": p}, images), axis=-1).astype(jnp.uint8)
    scores = evaluate_lib.evaluate(axis.map_apply(apply), params, splits["test"], shape, dataset.num_classes,
                                   config.eval.batch_size)
  else:
    logits = axis.map_apply(lambda p, windows: model.apply({"params": p}, windows))
    scores = evaluate_lib.evaluate_volumes(lambda windows: logits(params, windows), splits["test"],
                                           tuple(config.three_d.patch), dataset.num_classes,
                                           overlap=config.three_d.overlap, batch_size=config.three_d.eval_batch_size)
  eval_seconds = time.perf_counter() - start

  depths = {v.case_id: v.depth for v in pool}
  rows = []
  diverged = axis.fetch(stacked["diverged"])
  diverged_step = axis.fetch(stacked["diverged_step"])
  class_names = dataset.class_names[1:]
  for m, (point, plan) in enumerate(zip(points, plans)):
    annotated_depths = [depths[c] for c in plan]
    row = {"name": point.name, **point.fields(), "group": group_index, "model_index": m,
           "density": (None if point.reference else point.slices_per_volume / float(np.mean(annotated_depths))),
           "steps": steps, "dice_mean": float(scores["dice_mean"][m]),
           "dice_per_class": {n: float(d) for n, d in zip(class_names, scores["dice_per_class"][m])},
           "test_volumes": len(splits["test"]), "train_seconds": train_seconds / len(points),
           "group_train_seconds": train_seconds, "eval_seconds": eval_seconds / len(points),
           "diverged": bool(diverged[m])}
    if diverged[m]:
      row["diverged_step"] = int(diverged_step[m])
    if m in interp_quality:
      quality = interp_quality[m]
      # No slice between annotated ones (rho = 1): there is nothing to score.
      row.update(interp_dice=float(quality["dice_mean"]) if quality["num_slices"] else None,
                 interp_slices=int(quality["num_slices"]))
    rows.append(row)
  logging.info("Group %d: dice_mean %s (%.0f s training, %.0f s evaluation).", group_index,
               np.array2string(scores["dice_mean"], precision=3), train_seconds, eval_seconds)
  return rows


# ---------------------------------------------------------------------------------------------------------------------
# The study.
# ---------------------------------------------------------------------------------------------------------------------

def prepare(config, workdir: pathlib.Path):
  """Loads the data and builds every group's points and plans, so that bad input fails before anything is written.

  Returns:
    (dataset, splits, groups, plans, costs): plans maps point name -> annotation plan; costs holds the encoder's
    seconds (training plus embedding) when a strategy needs slice embeddings.
  """
  dataset, splits = load_data(config, workdir)
  depths = {v.case_id: v.depth for v in splits["train"]}
  points = study.expand(config.study, depths)
  for dims in {p.dims for p in points}:
    make_model(config, dataset.num_classes, dims)
  embeddings, costs = None, {}
  if any(selection_lib.get(p.selection).NEEDS_EMBEDDINGS for p in points if not p.reference):
    shape = static_shape(config, splits["train"] + splits["test"])
    images = {v.case_id: data_lib.fit_to_shape(v.image, shape)[0] for v in splits["train"]}
    embeddings, info = encoder.slice_embeddings(images, config.ual.encoder, seed=config.ual.seed,
                                                cache_dir=pathlib.Path(config.data.cache_dir or workdir / "cache") /
                                                "encoder")
    costs = {"encoder_seconds": info["train_seconds"] + info["embed_seconds"]}
  plans = {}
  for point in points:
    options = config.get(point.selection) if point.selection in config else None
    plans[point.name] = study.make_plan(point, depths, roi=config.study.roi, options=options, embeddings=embeddings)
  return dataset, splits, study.group(points, config.model_axis.max_models), plans, costs


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
  config_lib.validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  # Of the processes of a multi-process run, only the writer (process 0) locks the workdir and writes records; the
  # others read what it wrote (see slicejax.distributed).
  writer = distributed.is_writer()
  with contextlib.ExitStack() as lock:
    with distributed.writer_first("setup"):
      if writer:
        lock.enter_context(workdir_lib.WorkdirLock(workdir))
      dataset, splits, groups, plans, costs = prepare(config, workdir)
      rundir = workdir_lib.check_config(workdir, json.loads(config.to_json_best_effort()), fresh=fresh)
    if writer:
      workdir_lib.atomic_write_text(rundir / "groups.json", json.dumps(
          [{str(m): p.name for m, p in enumerate(g)} for g in groups], indent=1))
      (rundir / "plans").mkdir(exist_ok=True)
      for name, plan in plans.items():
        workdir_lib.atomic_write_text(rundir / "plans" / f"{name}.json", json.dumps(plan, sort_keys=True))
    logging.info("%d points in %d groups; results in %s.", len(plans), len(groups), rundir)

    results_path = rundir / "results.jsonl"
    # Read once, before any group runs, so that every process skips the same groups.
    done = {row["name"] for row in report.read_rows(results_path)}
    for index, group_points in enumerate(groups):
      if all(p.name in done for p in group_points):
        logging.info("Group %d: results exist, skipped.", index)
        continue
      rows = train_group(config, group_points, [plans[p.name] for p in group_points], splits, dataset, index,
                         rundir / "checkpoints" / f"group_{index}")
      for point, row in zip(group_points, rows):
        if not point.reference and selection_lib.get(point.selection).NEEDS_EMBEDDINGS:
          row.update(costs)  # The encoder is part of the price of these plans.
      if writer:
        report.append_rows(results_path, rows)

    with distributed.writer_first("summary"):
      rows = report.read_rows(results_path)
      if writer:
        report.write_summary(rundir, rows)
        logging.info("Wrote %s, summary.md, summary.csv and dice_vs_allocation.png.", results_path)
  return rows
