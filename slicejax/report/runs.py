"""Reading the rows of one or several run folders, merged into one study when the runs trained alike.

Several runs merge into one report only if they trained on the same data, split, network and training, and, where
both select in rounds, with the same round schedule (`check_compatible`): a grid split over machines, or more seeds
run later. Their union gives the same summary as one run of all their points. Two exceptions: a run that trains
some points of another again for a different number of steps (a steps check, `slicejax.report.steps`) merges with
it; both rows of such a point are kept. And a later part merges at a budget whose every point was trained again at
the later part's length (`_complete_budgets`): its rows are the budget's study rows if the budget is declared
trained again (the report's `--retrained`, `steps.study_steps`), a check's otherwise.
"""

import json
import pathlib

import ml_collections

from slicejax import environment
from slicejax.errors import InputError
from slicejax.report import cells as cells_lib
from slicejax.report import comparisons as comparisons_lib
from slicejax.report import results
from slicejax.report import steps as steps_lib
from slicejax.study import grid
from slicejax.study import sparse
from slicejax import workdir as workdir_lib

# Config keys that must agree between runs merged into one report: what was trained on what, and how it was scored.
# Everything else (the grid, placement, paths, logging) may differ.
MERGE_KEYS = ("seed", "data", "model", "three_d", "train", "interpolation", "ual", "rounds",
              "eval.nsd_tolerance_mm")
_MERGE_IGNORED = ("data.root", "data.cache_dir", "data.missing_root_hint")
# Keys of the training length: they may differ between runs whose rows share no (dims, budget), since cells are
# compared only at equal budget (a study may train each budget to its own plateau), and between runs of different
# `train.steps` where, at every budget they share, one holds only points of the other (a steps check) or the budget's
# every point was trained again at one of the two lengths.
SCHEDULE_KEYS = ("train.steps", "train.warmup_steps", "train.checkpoint_every", "train.log_every", "eval.curve_points")


def _merge_view(config: dict, keys) -> dict:
  flat = workdir_lib.flatten(config)
  return {k: v for k, v in flat.items()
          if any(k == m or k.startswith(m + ".") for m in keys) and k not in _MERGE_IGNORED}


def _retrained_budgets(points: dict, steps: dict, planned: dict | None = None) -> dict:
  """{path: the budgets at which that run trains only points of a run of another `train.steps` again: points that
  run has trained, or plans (`planned`), so that a check merges with a grid still under way}.

  Args:
    points: `check_compatible`'s points.
    steps: {path: its `train.steps`}.
    planned: {path: {budget: the point keys its config's grid plans}} (`planned_points`); None: none.
  """
  planned = planned or {}
  return {path: {budget for budget, mine in here.items()
                 if any(other != path and steps[other] != steps[path]
                        and mine <= there.get(budget, set()) | planned.get(other, {}).get(budget, set())
                        for other, there in points.items())}
          for path, here in points.items()}


# A stand-in training pool for `planned_points`: large enough that every allocation of a grid fits.
_STAND_IN_POOL, _STAND_IN_DEPTH = 10_000, 1_000


def planned_points(config: dict) -> dict:
  """{(dims, budget, reference): the point keys (`steps.point_key`) of the sparse points a run's config plans}, from
  its `study` block (`grid.expand` on a stand-in pool, so allocations a small pool would leave out are counted too);
  {} for a config whose grid cannot be read (e.g. one without a `study` block)."""
  try:
    points = grid.expand(ml_collections.ConfigDict(config["study"]),
                         {f"case_{i}": _STAND_IN_DEPTH for i in range(_STAND_IN_POOL)}, quiet=True)
  except (InputError, KeyError, TypeError, AttributeError, ValueError):
    return {}
  out = {}
  for point in points:
    if not point.reference:
      out.setdefault((point.dims, point.budget, False), set()).add(steps_lib.point_key(point.fields()))
  return out


def _complete_budgets(points: dict, steps: dict) -> dict:
  """{budget: the longest step count at which, over all runs, every cell of the budget has every seed it has at any
  step count (`steps.complete`)}; budgets without one are left out. Every point of such a budget trained at another
  count is trained at that one too: a later part may train at it (a budget trained again in full, or its grid).

  Args:
    points: `check_compatible`'s points.
    steps: {path: its `train.steps`}.
  """
  seeds = {}
  for path, here in points.items():
    for budget, keys in here.items():
      for key in keys:
        seeds.setdefault(budget, {}).setdefault(key[:-1], {}).setdefault(steps[path], set()).add(key[-1])
  counts = {budget: steps_lib.complete(by_cell) for budget, by_cell in seeds.items()}
  return {budget: found[-1] for budget, found in counts.items() if found}


def check_compatible(configs: dict, dims: dict | None = None, points: dict | None = None,
                     in_rounds: dict | None = None) -> None:
  """Refuses to merge runs that differ in data, split, network or training.

  Args:
    configs: {path of config.json: its config dict}, in the order given.
    dims: {the same paths: the set of dims its rows hold}; the 2D network (`model`) is compared only between runs
      that both hold 2D rows, the 3D one (`three_d`) between runs that both hold 3D rows. None: both always.
    points: {the same paths: {(dims, budget, reference): the set of points (`steps.point_key`) its rows hold
      there}}; runs that share no budget may differ in `SCHEDULE_KEYS`, and so may runs of different `train.steps`
      where, at every budget they share, one of the two trains only points of a run of another `train.steps` again
      (points that run trained or its grid plans, `_retrained_budgets`): a steps check of the other, or of a third
      run that trained as long as the other; or
      where the budget's longest complete step count, over all runs (`_complete_budgets`), is one of the two (a part
      added at the length a budget was trained again to). None: they may not.
    in_rounds: {the same paths: whether its rows hold points that select in rounds}; the round schedule's options
      (`rounds`) are compared only between runs that both do. None: never.

  Raises:
    InputError: naming the later config.json of the first pair that differs, the first differing key, and both
      values.
  """
  items = list(configs.items())
  if points is not None:
    steps = {path: workdir_lib.flatten(config).get("train.steps") for path, config in items}
    planned = {path: planned_points(config) for path, config in items}
    retrained, complete = _retrained_budgets(points, steps, planned), _complete_budgets(points, steps)
  for j, (path, config) in enumerate(items):
    for first_path, first in items[:j]:
      keys = list(MERGE_KEYS)
      for name, d in (("model", 2), ("three_d", 3)):
        if dims is not None and not (d in dims[path] and d in dims[first_path]):
          keys.remove(name)
      if in_rounds is None or not (in_rounds[path] and in_rounds[first_path]):
        keys.remove("rounds")
      reference, view = _merge_view(first, keys), _merge_view(config, keys)
      shared = points[path].keys() & points[first_path].keys() if points is not None else None
      schedule_may_differ = points is not None and (
          not shared or (reference.get("train.steps") != view.get("train.steps")
                         and all(b in retrained[path] or b in retrained[first_path]
                                 or complete.get(b) in (steps[path], steps[first_path]) for b in shared)))
      for key in sorted(reference.keys() | view.keys()):
        if reference.get(key) != view.get(key) and not (schedule_may_differ and key in SCHEDULE_KEYS):
          hint = (" (runs of different lengths merge when they share no budget, or when one trains only points of "
                  "the other again: a steps check, or at the length every point of a budget was trained again to)"
                  if key in SCHEDULE_KEYS else "")
          raise InputError(path, f"{key} is {view.get(key)!r} here but {reference.get(key)!r} in {first_path}; "
                                 f"runs with different data, split, network or training cannot be merged{hint}")


def read_runs(workdirs) -> tuple:
  """Reads and merges the rows of one or several run folders (each holding config.json and results.jsonl).

  Returns:
    (rows, config): the rows of every run in order (a point trained in two runs for the same steps counts once, the
    later row; trained for different steps, both count: `slicejax.report.steps`), and the first run's config dict.
    Each row gains `planned_seeds`, the seeds its run's config trains its point for (`grid.planned_seeds`): a cell
    still missing some of them is pending (`cells.missing_seeds`).

  Raises:
    InputError: a folder is not a run, runs are incompatible (`check_compatible`), or their test volumes differ.
  """
  configs, rows, dims, points, in_rounds = {}, [], {}, {}, {}
  for workdir in workdirs:
    path = pathlib.Path(workdir) / workdir_lib.CONFIG_NAME
    if not path.is_file():
      raise InputError(str(workdir), "no config.json: not a slicejax run folder (with --fresh runs, pass the run_<n>"
                                     " folder)")
    try:
      configs[str(path)] = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
      raise InputError(str(path), f"not valid JSON ({err})") from err
    run_rows = results.read_rows(pathlib.Path(workdir) / workdir_lib.RESULTS_NAME)
    for row in run_rows:
      try:  # points of annotated (ignore-label) plans train `study.seeds` in every dims (`sparse.points`)
        row["planned_seeds"] = (list(configs[str(path)]["study"]["seeds"]) if row.get("selection") == sparse.SELECTION
                                else grid.planned_seeds(configs[str(path)]["study"], row.get("dims"),
                                                        bool(row.get("reference"))))
      except (KeyError, TypeError):  # a config without a study grid: its cells are taken as complete
        pass
    dims[str(path)] = {row.get("dims") for row in run_rows}
    in_rounds[str(path)] = any((row.get("rounds") or 1) > 1 for row in run_rows)
    points[str(path)] = {}
    for row in run_rows:
      points[str(path)].setdefault((row.get("dims"), row.get("budget"), bool(row.get("reference"))), set()).add(
          steps_lib.point_key(row))
    rows += run_rows
  check_compatible(configs, dims, points, in_rounds)
  cases = {}
  for row in rows:
    if "test_cases" in row:
      cases.setdefault(tuple(row["test_cases"]), row["name"] if "name" in row else "?")
  if len(cases) > 1:
    (_, a), (_, b) = list(cases.items())[:2]
    raise InputError(str(workdirs[-1]), f"rows {a} and {b} were tested on different volumes; they cannot be merged")
  # A point trained by two runs for the same steps counts once: its later row, in the later row's place.
  by_name = {}
  for index, row in enumerate(rows):
    key = (row.get("name", ("unnamed", index)), row.get("steps"))
    by_name.pop(key, None)
    by_name[key] = row
  return list(by_name.values()), next(iter(configs.values()))


def close_seeds(rows, options=None) -> tuple:
  """Closes a study stopped short of the seeds its runs plan (the report's `--close`): per dims, the seeds that every
  sparse cell of the study has (`steps.study_rows`) are kept, as if the runs had planned no other; the rows of other
  seeds are left out, at every step count. The set is computed, never chosen, and the fully annotated reference is
  kept as it is (it makes no comparison).

  Returns:
    (rows, closed): the kept rows, their `planned_seeds` cut to the kept seeds, and {"seeds": {dims: kept seeds},
    "planned": {dims: the seeds the runs plan}, "rows_left_out": how many rows were left out}.

  Raises:
    InputError: no cell misses a planned seed (nothing to close); a dims' cells share no seed; or closing would
      change a budget's study step count (a budget declared `retrained` whose complete step count would move).
  """
  retrained = comparisons_lib.stats_options(options)["retrained"]
  study = [row for row in steps_lib.study_rows(rows, retrained) if not row.get("reference")]
  by_cell = cells_lib.by_cell(study)
  if not any(cells_lib.missing_seeds(by_seed) for by_seed in by_cell.values()):
    raise InputError("--close", "no cell misses a seed its runs plan: nothing to close")
  kept, planned = {}, {}
  for key, by_seed in by_cell.items():
    dims = cells_lib.key_field(key, "dims")
    kept[dims] = kept.get(dims, set(by_seed)) & set(by_seed)
    planned.setdefault(dims, set()).update(by_seed, cells_lib.missing_seeds(by_seed))
  for dims, seeds in sorted(kept.items()):
    if not seeds:
      raise InputError("--close", f"the {dims}D cells share no seed: there is no smaller study to report")
  out = []
  for row in rows:
    if row.get("reference"):
      out.append(row)
    elif row.get("seed") in kept[row.get("dims")]:
      out.append(dict(row, planned_seeds=sorted(set(row.get("planned_seeds") or ()) & kept[row.get("dims")])))
  before = steps_lib.study_steps(rows, retrained)
  moved = {budget: steps for budget, steps in steps_lib.study_steps(out, retrained).items()
           if steps != before.get(budget)}
  if moved:
    (dims, budget, _), steps = next(iter(sorted(moved.items(), key=str)))
    raise InputError("--close", f"closing would move {dims}D budget {budget}'s study rows from "
                     f"{before[(dims, budget, False)]} to {steps} steps: train the missing seeds instead")
  return out, {"seeds": {dims: sorted(seeds) for dims, seeds in sorted(kept.items())},
               "planned": {dims: sorted(seeds) for dims, seeds in sorted(planned.items())},
               "rows_left_out": len(rows) - len(out)}


def read_families(workdirs):
  """The Holm families the runs' own grids plan (each folder's `families.json`, written when its launch started),
  merged: {family: the most comparisons any run plans for it}, or None when no folder has one. A run's report
  adjusts each family over at least that many comparisons (`comparisons.stats_options`' `run_families`); for a study
  of several parts, each planning some of its cells, only the whole study's plan (the report's `--families`) counts
  every family in full.

  Raises:
    InputError: a `families.json` that cannot be read, or not {family: comparisons >= 1}.
  """
  merged = None
  for workdir in workdirs:
    path = pathlib.Path(workdir) / workdir_lib.FAMILIES_NAME
    if not path.is_file():
      continue
    try:
      plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
      raise InputError(str(path), f"cannot be read as JSON ({err})") from err
    comparisons_lib.checked_families(plan, str(path))
    merged = merged or {}
    for family, size in plan.items():
      merged[family] = max(merged.get(family, 0), size)
  return merged


def read_launches(workdirs) -> list[dict]:
  """The launch records (`slicejax.environment`) of the run folders, in order: the lines of each folder's
  `launches.jsonl`, read as result rows are (`results.read_rows`); a folder without one has none."""
  return [launch for workdir in workdirs
          for launch in results.read_rows(pathlib.Path(workdir) / environment.LAUNCHES_NAME)]


def environment_label(launch: dict) -> str:
  """One launch's machine and versions in words, e.g. "AMD EPYC, 2 cores (cpu); jax 0.10.2, jaxlib 0.10.2, ...";
  launches with the same label ran alike."""
  versions = ", ".join(f"{name} {version}" for name, version in (launch.get("versions") or {}).items()
                       if version is not None)
  device = (launch.get("backend") if launch.get("backend") == "cpu"
            else f"{launch.get('devices')} x {launch.get('device')}")
  return f"{launch.get('cpu')}, {launch.get('cores')} cores ({device}); Python {launch.get('python')}; {versions}"


def compute_used(rows, launches=()) -> dict:
  """What the rows cost to produce: `models` (trainings), `train_seconds` and `eval_seconds` (sums over rows, each
  row's share of its group; a point in rounds counts its shares of every round's models, `rounds_trained_models`,
  `rounds_train_seconds` and `rounds_eval_seconds`),
  `encoder_seconds` (the UAL encoders', counted once per distinct value: every ual row of a run carries its run's),
  `environments` ({`environment_label`: the number of `launches` that ran so}) and `unrecorded` (rows without a
  `launch`: trained before launches were recorded)."""
  encoders = {row["encoder_seconds"] for row in rows if row.get("encoder_seconds") is not None}
  spent = lambda row, kind: row.get(f"rounds_{kind}_seconds", row.get(f"{kind}_seconds")) or 0
  environments = {}
  for launch in launches:
    label = environment_label(launch)
    environments[label] = environments.get(label, 0) + 1
  return {"models": round(sum(row.get("rounds_trained_models", 1) for row in rows), 6),
          "train_seconds": float(sum(spent(row, "train") for row in rows)),
          "eval_seconds": float(sum(spent(row, "eval") for row in rows)),
          "encoder_seconds": float(sum(encoders)), "rounds": any("rounds_train_seconds" in row for row in rows),
          "environments": environments, "unrecorded": sum(1 for row in rows if "launch" not in row)}
