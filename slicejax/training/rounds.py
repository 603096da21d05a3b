"""Selection in rounds: a point reaches its budget B over R rounds, each choosing slices with the models trained on
the slices chosen before.

The schedule (`quotas`): every one of the point's s volumes gets rho slices in all, `q_0 = max(1,
rounds.first_share x rho rounded half up)` of them in round 0 (at most rho - (R - 1), so that every later round adds
one) and the rest split as evenly as possible over rounds 1..R-1 (the earlier rounds take the remainder), so round r
adds `s x q_r` slices and the last round ends at exactly B.

  * Round 0 is a one-shot plan: `rounds.first_selection` (random, fixed or ual) at q_0 slices per volume, in the
    volumes a one-shot point of the same s and seed annotates (`study.make_plan`); with random or fixed, q_0 of the
    slices that one-shot point annotates at the full rho (`first_plan`), so the two share round 0's slices.
  * Each round r trains the group's models on what is annotated so far (`train.train_group`), predicts the
    not-yet-annotated candidate slices of the training pool (images only: a label is read only once its slice is
    annotated, when it enters the training bank), scores them with the point's selection module
    (`slicejax.study.selection.entropy`, `ensemble`, `hybrid`: `scores`) and adds the next ones (`choose`). The
    allocation rule: with `free` False, q_r slices inside each of the point's s volumes; with `free` True, the
    s x q_r best slices anywhere in the pool, which may open new volumes (the row records the resulting s and rho).
  * The last round's models are the points' results; every round's validation Dice is recorded.

Rounds of the points of a group train together on the model axis; an `ensemble` point trains its K members
(`rounds.members`, seeds `seed + k x MEMBER_SEED_STRIDE`, the first its own) beside it, on its plan. With
`rounds.warm_start` a round starts from the previous round's parameters (a fresh optimiser state and schedule);
otherwise every round trains from the same initialisation. The members serve to choose; without
`rounds.final_members` the last round trains each point's own model only (`trainings`), which a later `plan` with
`selection=ensemble` then cannot use as an ensemble.

Records, in the run's folder: `rounds/group_<g>.json` holds per round what each point added and, once trained, its
validation Dice; a round's models are checkpointed in `checkpoints/group_<g>_round_<r>` (the last round in
`checkpoints/group_<g>`, where `slicejax.modes.predict` finds them). A killed run resumes at the round it was in with
the
same selections, so its rows equal an uninterrupted run's.
"""

import dataclasses
import functools
import json
import math
import pathlib
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from slicejax.data import padding
from slicejax.errors import InputError
from slicejax.evaluation import evaluate
from slicejax import files
from slicejax.study import grid as study
from slicejax.study import selection as selection_lib
from slicejax.training import distributed

# An ensemble member k > 0 trains from seed `seed + k * MEMBER_SEED_STRIDE`: keys no study seed shares.
MEMBER_SEED_STRIDE = 1 << 20


# ---------------------------------------------------------------------------------------------------------------------
# The schedule, the models of a point and round 0.
# ---------------------------------------------------------------------------------------------------------------------

def quotas(point: study.Point, first_share: float) -> list:
  """Slices per volume added in each of the point's rounds: `[R]` positive ints summing to rho."""
  rho, rounds = point.slices_per_volume, point.rounds
  # Half up, not Python's half to even: a share of 0.5 gives 2 of 3 slices and 3 of 5 alike.
  first = min(max(1, math.floor(first_share * rho + 0.5)), rho - (rounds - 1))
  rest, extra = divmod(rho - first, rounds - 1)
  return [first] + [rest + (1 if r < extra else 0) for r in range(rounds - 1)]


def strategy(point: study.Point):
  return selection_lib.get(point.selection)


def _members(config, point: study.Point) -> list:
  """A point's models: the point, then (in rounds) its ensemble members (same plan, other seeds)."""
  k = strategy(point).members(config.rounds) if point.rounds > 1 else 1
  return [point] + [dataclasses.replace(point, seed=point.seed + i * MEMBER_SEED_STRIDE) for i in range(1, k)]


def models(config, points) -> list:
  """Every model a group of points may train: each point, followed by its ensemble members."""
  return [m for point in points for m in _members(config, point)]


def family(point: study.Point) -> tuple:
  """What decides a round point's round-0 plan (`first_plan`) besides the config: its dims, s, rho, round count,
  allocation rule and seed. The points of one family (e.g. entropy, ensemble and hybrid of one seed) annotate the same
  slices in round 0 and train the same models on them, seed for seed: `round_models` trains each once."""
  return (point.dims, point.volumes, point.slices_per_volume, point.rounds, point.free, point.seed)


def group(config, points, max_models: int, steps_of) -> list:
  """`study.group` for a grid's points: a group of round points holds whole `family`s, sized by the models its
  largest round trains (`round_models`)."""
  def size_of(group_points):
    if group_points[0].rounds == 1:
      return len(group_points)
    return max(len(round_models(config, group_points, r)) for r in range(group_points[0].rounds))
  return study.group(points, max_models, size_of, steps_of, lambda p: family(p) if p.rounds > 1 else None)


def uses_model(point: study.Point) -> bool:
  """Whether a round point's selection chooses with its models' predictions (all but `passive`)."""
  return strategy(point).NEEDS_MODEL


def needs_model(config, point: study.Point) -> bool:
  """Whether a round point trains in the rounds before its last: to choose with its models, or to hand their
  parameters to the next round (`rounds.warm_start`)."""
  return uses_model(point) or bool(config.rounds.warm_start)


def round_models(config, points, round_index: int) -> list[tuple]:
  """`(model, owners)` of the models round `round_index` trains, in order, `owners` the names of the points whose
  model it is: before the last round every model of a point that `needs_model` (none of `passive`'s without warm
  start), and in round 0 one model for each member of a `family` (its points annotate the same slices with the same
  seeds there: the same model); in the last round each point's own model, and its members too with
  `rounds.final_members` (members serve only to choose the next slices). A point's own model comes before its
  members."""
  last = round_index == points[0].rounds - 1
  out, where = [], {}
  for point in points:
    members = _members(config, point)
    if last and not config.rounds.final_members:
      members = members[:1]
    elif not last and not needs_model(config, point):
      members = []
    for k, model in enumerate(members):
      key = (family(point), k) if round_index == 0 and not last else (point.name, k)
      if key in where:
        shared, owners = out[where[key]]
        out[where[key]] = (shared, owners + (point.name,))
      else:
        where[key] = len(out)
        out.append((model, (point.name,)))
  return out


def final_models(config, points) -> list:
  """The models of a group's last round, in its checkpoint's order (`round_models`)."""
  return [m for m, _ in round_models(config, points, points[0].rounds - 1)]


def trainings(config, points) -> int:
  """The models a group of points trains over all its rounds (`round_models`), a model shared by a `family` once."""
  return sum(len(round_models(config, points, r)) for r in range(points[0].rounds)) if points[0].rounds > 1 else len(
      points)


# A round's draws (`passive`) come from the point's seed, the round and this tag.
_ROUND_TAG = 0x50A55


def round_rng(point: study.Point, round_index: int) -> np.random.Generator:
  return np.random.default_rng([point.seed, round_index, _ROUND_TAG])


def needs_embeddings(config, point) -> bool:
  """Whether a round point needs the pool's slice embeddings: for its round-0 selection or its `choose`."""
  return (strategy(point).NEEDS_EMBEDDINGS or selection_lib.get(config.rounds.first_selection).NEEDS_EMBEDDINGS)


# Round 0's pick among a one-shot plan's slices (`first_plan`) comes from the point's seed, the case and this tag.
_NESTED_TAG = 0x0E57ED


def first_plan(config, point: study.Point, depths, embeddings=None) -> dict:
  """Round 0's plan: the one-shot `rounds.first_selection` at `quotas(...)[0]` = q_0 slices in each of the s volumes.

  With `random` or `fixed` (and allocation not `free`), round 0 is nested in the one-shot plan of the same selection,
  volumes and seed at the point's full rho (`study.make_plan`): in each volume it keeps q_0 of that plan's rho slices,
  picked by the same selection over their ranks (`fixed`: every (rho / q_0)-th slice from a random phase). The pick
  has the distribution of the one-shot selection at q_0 (`fixed` exactly when q_0 divides rho: a random phase of an
  interval-rho/q_0 subsequence of an equally spaced plan is an equally spaced plan with a uniform offset), and the
  round point shares its first q_0 slices with the one-shot cell it is compared with, so that the two differ only in
  the slices chosen after round 0. `ual` (k-means at q_0, not a subset of k-means at rho) plans q_0 slices directly.
  """
  first = quotas(point, config.rounds.first_share)[0]
  name = config.rounds.first_selection
  nested = name in ("random", "fixed") and not point.free
  one_shot = dataclasses.replace(point, budget=point.volumes * (point.slices_per_volume if nested else first),
                                 slices_per_volume=point.slices_per_volume if nested else first, selection=name,
                                 rounds=1, free=False)
  options = config.get(name) if name in config else None
  plan = study.make_plan(one_shot, depths, roi=config.study.roi, options=options, embeddings=embeddings)
  if nested:
    method = selection_lib.get(name)
    for case, slices in plan.items():
      rng = np.random.default_rng([point.seed, zlib.crc32(case.encode()), len(slices), first, _NESTED_TAG])
      plan[case] = [slices[i] for i in method.select(len(slices), first, rng)]
  for case in plan if not point.free else ():
    lo, hi = study.candidate_range(depths[case], config.study.roi)
    if point.slices_per_volume > hi - lo:
      raise InputError("study.slices_per_volume", f"rho = {point.slices_per_volume} exceeds the {hi - lo} candidate "
                       f"slices of volume {case}")
  return plan


# ---------------------------------------------------------------------------------------------------------------------
# Scoring the pool and choosing the next slices.
# ---------------------------------------------------------------------------------------------------------------------

@functools.cache
def _softmax(model):
  """One model's softmax of a batch of slices: `(params, (images [b, H, W, C],)) -> [b, H, W, K]` float32."""
  def softmax(params, chunk):
    return jax.nn.softmax(model.apply({"params": params}, chunk[0]).astype(jnp.float32), axis=-1)
  return softmax


def pool_probabilities(config, model, axis, params, volumes, shape):
  """Every model's softmax on every slice of `volumes`, one volume at a time (images only).

  Yields:
    `(volume, probs [M, D, H, W, K] float32, valid [D, H, W] bool)`, slices fitted to `shape` (`padding.fit_to_shape`).
  """
  softmax = axis.map_apply(_softmax(model))
  for volume in volumes:
    image, valid, _ = padding.fit_to_shape(volume.image, shape)
    yield volume, evaluate.map_slices(softmax, params, (image.astype(np.float32),), config.eval.batch_size), valid


def candidates(depth: int, roi, annotated, offered=None) -> np.ndarray:
  """The slices of a volume that may be added: inside `offered` (`[lo, hi)`, None: every slice) narrowed by `roi`
  (`study.candidate_range`), and not annotated."""
  start, stop = offered if offered is not None else (0, depth)
  lo, hi = study.candidate_range(stop - start, roi)
  return np.setdiff1d(np.arange(lo + start, hi + start), np.asarray(annotated, np.int64))


def choose_next(point: study.Point, plan: dict, scores: dict, quota: int, *, options, roi=(), offered=None,
                embeddings=None, rng=None) -> dict:
  """The slices a round adds to `plan` for `point`.

  Args:
    point: a round point (its selection, `free` and s).
    plan: case id -> annotated slices so far.
    scores: case id -> `[D]` slice scores of every volume the rule may add to (the plan's, or with `free` the pool's).
    quota: slices per volume this round; with `free`, s x quota slices anywhere.
    options: the `rounds` config block.
    roi: () or (lo, hi) fractions of the depth (`study.roi`).
    offered: None or case id -> `[lo, hi)`, the slices a volume offers (`plan.offered_slices`).
    embeddings: case id -> `[D, F]` slice embeddings (hybrid).
    rng: the round's draws (`round_rng`; passive).

  Returns:
    case id -> sorted new slice indices (volumes that get none left out); never an annotated slice.
  """
  method = strategy(point)
  cases = sorted(scores) if point.free else sorted(plan)
  free_of = lambda c: candidates(len(scores[c]), roi, plan.get(c, ()), None if offered is None else offered[c])
  if not point.free:
    added = {}
    for case in cases:
      free = free_of(case)
      picked = method.choose(scores[case], free, min(quota, len(free)), annotated=np.asarray(plan[case], np.int64),
                             embeddings=None if embeddings is None else embeddings[case], options=options,
                             rng=rng)
      added[case] = [int(i) for i in picked]
    return {case: slices for case, slices in added.items() if slices}
  # Free allocation: one ranking over the pool, volumes concatenated in case order.
  offsets = np.cumsum([0] + [len(scores[c]) for c in cases])
  flat = np.concatenate([scores[c] for c in cases])
  free = np.concatenate([free_of(c) + o for c, o in zip(cases, offsets)])
  annotated = np.concatenate([np.asarray(plan.get(c, ()), np.int64) + o for c, o in zip(cases, offsets)])
  picked = method.choose(flat, free, min(point.volumes * quota, len(free)), annotated=annotated,
                         embeddings=None if embeddings is None else np.concatenate([embeddings[c] for c in cases]),
                         options=options, rng=rng)
  added = {}
  for index in picked:
    v = int(np.searchsorted(offsets, index, side="right") - 1)
    added.setdefault(cases[v], []).append(int(index - offsets[v]))
  return added


def merge(plan: dict, added: dict) -> dict:
  """`plan` with `added`'s slices (case id -> sorted slice indices)."""
  out = {case: list(slices) for case, slices in plan.items()}
  for case, slices in added.items():
    out[case] = sorted(set(out.get(case, [])) | set(slices))
  return out


def next_round(config, points, plans: dict, probabilities, owners, round_index: int, embeddings=None) -> dict:
  """What every point of a group adds in round `round_index`, from its models' predictions of the pool.

  Args:
    points: the group's points.
    plans: point name -> plan so far.
    probabilities: `pool_probabilities`' output for the volumes any point may add to (probs and valid None when no
      point of the group needs a model).
    owners: the names of the points that own each model whose predictions `probabilities` holds (`round_models`).
    round_index: r >= 1.

  Returns:
    point name -> `choose_next`'s added slices.
  """
  rows = {p.name: [i for i, names in enumerate(owners) if p.name in names] for p in points}
  scores = {p.name: {} for p in points}
  for volume, probs, valid in probabilities:
    for point in points:
      if point.free or volume.case_id in plans[point.name]:
        scores[point.name][volume.case_id] = (
            strategy(point).scores(probs[rows[point.name]], valid, config.rounds)
            if uses_model(point) else np.zeros(volume.depth, np.float32))
  return {p.name: choose_next(p, plans[p.name], scores[p.name], quotas(p, config.rounds.first_share)[round_index],
                              options=config.rounds, roi=config.study.roi, embeddings=embeddings,
                              rng=round_rng(p, round_index))
          for p in points}


# ---------------------------------------------------------------------------------------------------------------------
# The rounds of one group.
# ---------------------------------------------------------------------------------------------------------------------

def _record_path(rundir, group_index: int) -> pathlib.Path:
  return pathlib.Path(rundir) / "rounds" / f"group_{group_index}.json"


def read_record(rundir, group_index: int, names) -> list:
  """The rounds recorded for a group of these point names: `[{"round", "added", "val_dice"?}]`; [] without any."""
  path = _record_path(rundir, group_index)
  if not path.is_file():
    return []
  record = json.loads(path.read_text())
  return record["rounds"] if record.get("names") == list(names) else []


def _write_record(rundir, group_index: int, names, entries) -> None:
  if not distributed.is_writer():  # every process holds the same entries; the writer keeps them
    return
  path = _record_path(rundir, group_index)
  path.parent.mkdir(exist_ok=True)
  files.atomic_write(path, json.dumps({"names": list(names), "rounds": entries}, sort_keys=True))


def plans_after(entries, names) -> dict:
  """point name -> the plan after the recorded rounds."""
  plans = {name: {} for name in names}
  for entry in entries:
    plans = {name: merge(plans[name], entry["added"][name]) for name in names}
  return plans


def recorded_plans(rundir, groups, plans: dict) -> dict:
  """`plans` with each round point's plan replaced by the latest one its group recorded (for `plans/*.json`)."""
  out = dict(plans)
  for index, points in enumerate(groups):
    names = [p.name for p in points]
    entries = read_record(rundir, index, names) if points[0].rounds > 1 else []
    if entries:
      out.update(plans_after(entries, names))
  return out


def _has_checkpoint(folder: pathlib.Path) -> bool:
  return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def bank_sizes(points, depths: dict, sizes: dict) -> dict:
  """Bank and entry sizes that hold every round of a group's points (at most B slices each), at least `sizes`."""
  bound = min(sum(p.budget for p in points), sum(depths.values()))
  return {"images": max(sizes["images"], bound), "labels": max(sizes["labels"], bound),
          "entries": max(sizes["entries"], max(p.budget for p in points))}


def train_rounds(config, points, first_plans: dict, splits, dataset, group_index: int, rundir, *, train_group,
                 sizes, programs=None, curves=None, embeddings=None) -> list:
  """Runs every round of a group of round points (one round count) and returns the points' result rows.

  Args:
    config: the experiment config.
    points: the group's points (2D, one `rounds`).
    first_plans: point name -> round 0's plan (`first_plan`).
    splits, dataset: as `train.train_group`.
    group_index: the group's index in the grid.
    rundir: the run's folder (records and checkpoints).
    train_group: `train.train_group`.
    sizes: the grid's 2D `data_sizes`, raised to hold every round (`bank_sizes`).
    programs, curves: as `train.train_group` (curves for the last round only).
    embeddings: `() -> case id -> [D, F]` slice embeddings of the pool, called when a point's `choose` needs them.

  Returns:
    One row per point, its last round's, with `round_history` ([{"round", "slices", "added", "val_dice",
    "trained_models", "train_seconds", "eval_seconds"}]: the point's shares of the models trained in that round
    and of their seconds, members included, a model a family shares split equally), their sums `rounds_trained_models`,
    `rounds_train_seconds` and `rounds_eval_seconds` (the row's `train_seconds` and `eval_seconds` are its last
    round's), and the plan's resulting `annotated_volumes` and `annotated_slices_per_volume`.
  """
  rundir = pathlib.Path(rundir)
  names = [p.name for p in points]
  pool = splits["train"]
  depths = {v.case_id: v.depth for v in pool}
  sizes = bank_sizes(points, depths, sizes)
  num_rounds = points[0].rounds
  folder = lambda r: rundir / "checkpoints" / (f"group_{group_index}" if r == num_rounds - 1
                                               else f"group_{group_index}_round_{r}")
  entries = read_record(rundir, group_index, names)
  if not entries:
    # The record is written before a round trains, so a checkpoint without it belongs to other points (a group of
    # an earlier grouping): never restored into these.
    for r in range(num_rounds):
      if _has_checkpoint(folder(r)):
        raise InputError(folder(r), f"holds models of other points than group {group_index}'s ({', '.join(names)}): "
                         "its round record is missing or names others; move the folder away to train them afresh")
    entries = [{"round": 0, "added": {name: first_plans[name] for name in names}}]
    _write_record(rundir, group_index, names, entries)
  intermediate = config.copy_and_resolve_references()
  with intermediate.unlocked():
    intermediate.eval.update(surface_metrics=False, curve_points=0)
  need = {p.selection for p in points}
  pool_embeddings = None
  previous = previous_params = None
  for r in range(num_rounds):
    last = r == num_rounds - 1
    plans = plans_after(entries[:r + 1], names)
    if (not last and len(entries) > r + 1 and "val_dice" in entries[r]
        and not (config.rounds.warm_start and not _has_checkpoint(folder(r + 1)))):
      continue  # trained, and the next round's slices chosen
    held = {p.name: sum(map(len, plans[p.name].values())) for p in points} if last else {}
    short = [f"{p.name} ({held[p.name]})" for p in points if last and held[p.name] != p.budget]
    if short:  # the candidates ran out before the budget (a narrow `study.roi`, volumes of few slices)
      raise InputError("study.round_budgets", f"the last round would train {', '.join(short)} on fewer slices than "
                       "the budget: their volumes offer too few candidate slices")
    keep = {}
    chosen = round_models(config, points, r)
    models_r, owners_r = [m for m, _ in chosen], [o for _, o in chosen]
    init = None
    if config.rounds.warm_start and previous is not None:  # the previous round's parameters of the same models
      init = jax.tree.map(lambda leaf: leaf[np.asarray([previous[(o[0], m.seed)] for m, o in chosen])],
                          previous_params)
    rows = train_group(config if last else intermediate, models_r, [plans[o[0]] for o in owners_r], splits,
                       dataset, group_index, folder(r), sizes=sizes, programs=programs,
                       curves=curves if last else None, init_params=init, keep=keep,
                       evaluate_test=last) if models_r else []
    own = {}  # point name -> its own model's row (before its members')
    for i, owners in enumerate(owners_r):
      for name in owners:
        own.setdefault(name, rows[i])
    entries[r]["val_dice"] = {name: own[name].get("val_dice_mean") if name in own else None for name in names}
    seconds = {name: {"train": 0.0, "eval": 0.0} for name in names}  # each point's shares, members included
    models = {name: 0.0 for name in names}
    for row, owners in zip(rows, owners_r):
      for name in owners:  # a model a family shares, shared equally
        seconds[name]["train"] += row["train_seconds"] / len(owners)
        seconds[name]["eval"] += row["eval_seconds"] / len(owners)
        models[name] += 1 / len(owners)
    entries[r].update(seconds=seconds, models=models)
    _write_record(rundir, group_index, names, entries)
    if last:
      break
    previous_params = keep["stacked"]["params"] if models_r else None
    previous = {(name, m.seed): i for i, (m, owners) in enumerate(chosen) for name in owners} if models_r else None
    if len(entries) == r + 1:
      if pool_embeddings is None and any(selection_lib.get(s).NEEDS_EMBEDDINGS for s in need):
        pool_embeddings = embeddings()
      wanted = set(depths) if any(p.free for p in points) else set().union(*(plans[n] for n in names))
      volumes = [v for v in pool if v.case_id in wanted]
      probabilities = (pool_probabilities(config, keep["model"], keep["axis"], keep["params"], volumes, keep["shape"])
                       if models_r else ((v, None, None) for v in volumes))
      added = next_round(config, points, plans, probabilities, owners_r, r + 1, pool_embeddings)
      entries.append({"round": r + 1, "added": added})
      _write_record(rundir, group_index, names, entries)
  for name, plan in plans_after(entries, names).items() if distributed.is_writer() else ():
    files.atomic_write(rundir / "plans" / f"{name}.json", json.dumps(plan, sort_keys=True))
  out = []
  for point in points:
    row = own[point.name]
    history, plan = [], {}
    for entry in entries:
      plan = merge(plan, entry["added"][point.name])
      spent = entry.get("seconds", {}).get(point.name, {"train": 0.0, "eval": 0.0})
      history.append({"round": entry["round"], "slices": sum(map(len, plan.values())),
                      "added": entry["added"][point.name], "val_dice": entry["val_dice"][point.name],
                      "trained_models": entry.get("models", {}).get(point.name, 0.0),
                      "train_seconds": spent["train"], "eval_seconds": spent["eval"]})
    row.update(round_history=history, annotated_volumes=len(plan),
               annotated_slices_per_volume=sum(map(len, plan.values())) / len(plan),
               rounds_trained_models=sum(h["trained_models"] for h in history),
               rounds_train_seconds=sum(h["train_seconds"] for h in history),
               rounds_eval_seconds=sum(h["eval_seconds"] for h in history))
    out.append(row)
  return out
