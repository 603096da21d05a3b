"""The steps check: points of a study trained again at more steps, and which rows are the study's.

A study confirms its training length by training some of its points (the same dims, budget, allocation, selection,
interpolation and seed) again for more steps, in another run; `runs.read_runs` keeps both rows of such a point. At a
budget (dims, budget, reference) that holds a point at two or more step counts:
- the study's rows are those of the budget's study step count: its shortest, the step count of the grid that the
  check trains points of again; or, for a budget declared trained again in full at more steps after its check said
  more steps are needed (`retrained`, the report's `--retrained`), the longest at which every cell of the budget has
  every seed it has at any step count (the longest step count present while none is). So a check never moves a
  budget's rows, whatever it re-trains (only some cells, or every cell the budget has so far: its extremes,
  trained first), and which rows are the study's is a decision recorded with the report, not read off the data.
  Cells, comparisons, findings and recommendations see only them (`study_rows`);
- the check (`steps_check`) follows, for each longer step count, the difference between the re-trained allocations'
  extremes (the fewest slices per volume minus the most, in mean Dice over the seeds that have every re-trained
  allocation at both step counts). It reads validation Dice (`val_dice_mean`), so that the training length is not
  chosen on the test volumes; a budget with a row without that key (a run without validation volumes) reads test
  Dice (`dice_mean`) instead, and its entry says which (`metric`). The check decides once each comparison has
  `stats.steps_seeds` such seeds: the steps stand when the difference moves by less than `stats.steps_tolerance` at
  every longer step count; otherwise more steps are needed. With fewer seeds it is pending (a failed comparison that
  has them decides already).
- a budget declared trained again, at its study step count, has the verdict `retrained`, and the check shows how the
  difference moved from each shorter step count to the study's (the check that sent it there), without holding the
  budget; its entry's `reason` says so when that check stands (a retraining the check did not call for).
Budgets without such a point keep every row.
"""

import numpy as np

from slicejax.config import defaults
from slicejax.errors import InputError
from slicejax.report import cells as cells_lib

STAND, MORE, PENDING, RETRAINED, NOT_CHECKED = (
    "steps stand", "more steps needed", "pending", "retrained", "not checked")


def _budget(row) -> tuple:
  return row.get("dims"), row.get("budget"), bool(row.get("reference", False))


def point_key(row) -> tuple:
  """A row's point without its training length: its cell key (`cells.cell_key`) and seed."""
  return cells_lib.cell_key(row) + (row.get("seed"),)


def _longer(steps, than) -> bool:
  return steps is not None and than is not None and steps > than


def retrained_points(rows) -> dict:
  """{budget (dims, budget, reference): {point key: its step counts}} of the points trained at two or more step
  counts; budgets without one are left out."""
  steps = {}
  for row in rows:
    steps.setdefault(_budget(row), {}).setdefault(point_key(row), set()).add(row.get("steps"))
  return {budget: {p: s for p, s in points.items() if len(s) > 1}
          for budget, points in steps.items() if any(len(s) > 1 for s in points.values())}


def complete(seeds) -> list:
  """The step counts at which every cell has every seed it has at any step count, shortest first.

  Args:
    seeds: {cell key: {step count: set of seeds}} of one budget.
  """
  counts = {s for by_steps in seeds.values() for s in by_steps}
  return sorted((s for s in counts if s is not None and all(
      by_steps.get(s, set()) >= set().union(*by_steps.values()) for by_steps in seeds.values())))


def study_steps(rows, retrained=()) -> dict:
  """{budget: its study step count} for the budgets of `retrained_points(rows)`: the shortest step count of the budget's
  rows; for a budget in `retrained` (declared trained again in full), the longest step count at which every cell of
  the budget has every seed it has at any step count (`complete`), or while none is, the longest present.

  Args:
    rows: result rows, every step count.
    retrained: the budgets (numbers of annotated slices, any dims) declared trained again in full at more steps.
  """
  seeds = {}
  for row in rows:
    seeds.setdefault(_budget(row), {}).setdefault(cells_lib.cell_key(row), {}).setdefault(
        row.get("steps"), set()).add(row.get("seed"))
  out = {}
  for budget in retrained_points(rows):
    counts = sorted({s for by_steps in seeds[budget].values() for s in by_steps if s is not None})
    declared = budget[1] in retrained and not budget[2]
    out[budget] = ((complete(seeds[budget]) or counts)[-1] if declared else counts[0]) if counts else None
  return out


def check_declared(rows, retrained) -> None:
  """Refuses a budget declared trained again (`retrained`) at which no point of `rows` has two step counts.

  Raises:
    InputError: names the first such budget.
  """
  have = {budget[1] for budget in retrained_points(rows) if not budget[2]}
  for budget in retrained:
    if budget not in have:
      raise InputError("--retrained", f"budget {budget} has no sparse point trained at two step counts in the rows: "
                       "nothing was trained again there")


def study_rows(rows, retrained=()) -> list:
  """The rows the study's cells are made of: every row, less those of a budget of `retrained_points` trained for another
  step count than the budget's study step count (`study_steps`, with the budgets declared `retrained`). Order
  kept.

  A cell still missing seeds that its runs plan at a step count left out here (rows' `planned_seeds`,
  `runs.read_runs`) may move a declared budget's study step count when they arrive: its kept rows carry those seeds in
  their `planned_seeds` too (copies of the rows), so that the cell is pending (`cells.missing_seeds`) until then.
  """
  study = study_steps(rows, retrained)
  planned, present = {}, {}
  for row in rows:
    key = (cells_lib.cell_key(row), row.get("steps"))
    planned.setdefault(key, set()).update(row.get("planned_seeds") or ())
    present.setdefault(key, set()).add(row.get("seed"))
  elsewhere = {}
  for (cell, steps), seeds in planned.items():
    if seeds - present[(cell, steps)]:
      elsewhere.setdefault(cell, {})[steps] = seeds - present[(cell, steps)]
  kept = []
  for row in rows:
    budget = _budget(row)
    if budget in study and row.get("steps") != study[budget]:
      continue
    gaps = [seeds for steps, seeds in elsewhere.get(cells_lib.cell_key(row), {}).items() if steps != row.get("steps")]
    kept.append(dict(row, planned_seeds=sorted(set(row.get("planned_seeds") or ()).union(*gaps))) if gaps else row)
  return kept


VALIDATION, TEST = "validation", "test"
_METRIC_KEY = {VALIDATION: "val_dice_mean", TEST: "dice_mean"}


def metric(rows) -> str:
  """The Dice a budget's check reads: `VALIDATION` when every row has a `val_dice_mean` key, else `TEST`."""
  return VALIDATION if all("val_dice_mean" in row for row in rows) else TEST


def _dice(rows, steps, metric_: str) -> dict:
  """{(volumes, slices per volume, seed): Dice} of the rows at `steps` whose Dice (`metric_`) is defined."""
  key = _METRIC_KEY[metric_]
  return {(row["volumes"], row["slices_per_volume"], row["seed"]): row[key] for row in rows
          if row.get("steps") == steps and row.get(key) is not None}


def allocation_check(rows, allocations, label, study: int, steps: int, tolerance: float,
                     metric_: str) -> dict | None:
  """The check of one re-trained selection and interpolation at one longer step count.

  Args:
    rows: that selection and interpolation's rows at the budget, every step count.
    allocations: the re-trained (volumes, slices per volume), fewest slices per volume first; two or more.
    label: {allocation: its cell's label}.
    study, steps: the step count it moves from and the longer one it moves to (`steps_check`: the study's and a
      longer one, or a shorter one and the study's).
    tolerance: `stats.steps_tolerance`.
    metric_: `VALIDATION` or `TEST`, the Dice it reads (`metric`).

  Returns:
    dict of `cells` (the labels), `fewest`, `most`, `from_steps` (`study`), `steps`, `seeds` (those with every
    allocation at both step counts), `study_dice` and `dice` ({cell: mean Dice over `seeds`} at `study` and at
    `steps`), `study_difference`
    and `difference` (fewest - most there), `moved` (difference - study_difference), `moved_per_seed` ({seed: that
    seed's own move}, whose mean is `moved`) and `stands` (|moved| < tolerance); None without such a seed.
  """
  at_study, at_steps = _dice(rows, study, metric_), _dice(rows, steps, metric_)
  seeds = sorted({key[2] for key in at_study} & {key[2] for key in at_steps})
  seeds = [s for s in seeds if all(a + (s,) in at_study and a + (s,) in at_steps for a in allocations)]
  if not seeds:
    return None
  before = {a: float(np.mean([at_study[a + (s,)] for s in seeds])) for a in allocations}
  after = {a: float(np.mean([at_steps[a + (s,)] for s in seeds])) for a in allocations}
  fewest, most = allocations[0], allocations[-1]
  moved = (after[fewest] - after[most]) - (before[fewest] - before[most])
  per_seed = {s: (at_steps[fewest + (s,)] - at_steps[most + (s,)]) - (at_study[fewest + (s,)] - at_study[most + (s,)])
              for s in seeds}
  return {"cells": [label[a] for a in allocations], "fewest": label[fewest], "most": label[most],
          "from_steps": study, "steps": steps,
          "seeds": seeds, "study_dice": {label[a]: before[a] for a in allocations},
          "dice": {label[a]: after[a] for a in allocations}, "study_difference": before[fewest] - before[most],
          "difference": after[fewest] - after[most], "moved": moved, "moved_per_seed": per_seed,
          "stands": abs(moved) < tolerance}


def _variant(key) -> tuple:
  """The (selection, interpolation) of a cell or point key."""
  return cells_lib.key_field(key, "selection"), cells_lib.key_field(key, "interpolation")


def _retrained_allocations(points) -> list:
  """[(selection, interpolation), its re-trained allocations (volumes, slices per volume), fewest slices per volume
  first, one of its point keys)] of the re-trained variants with two or more allocations, in order."""
  variants = {}
  for p in points:
    variants.setdefault(_variant(p), []).append(p)
  out = []
  for variant, chosen in sorted(variants.items()):
    allocations = sorted({(cells_lib.key_field(p, "volumes"), cells_lib.key_field(p, "slices_per_volume"))
                          for p in chosen}, key=lambda a: a[1] or 0)
    if len(allocations) >= 2:
      out.append((variant, allocations, chosen[0]))
  return out


def _checks(rows, points, moves, tolerance: float, metric_: str) -> list:
  """The `allocation_check`s of one budget's re-trained variants (`rows`: the budget's, every step count; `points`:
  its re-trained points, as `retrained`) for each (from step count, to step count) of `moves`, variant by variant,
  those with a seed at both."""
  checks = []
  for variant, allocations, point in _retrained_allocations(points):
    cell = dict(zip(cells_lib.CELL_KEY, point))
    label = {a: cells_lib.label(dict(cell, volumes=a[0], slices_per_volume=a[1])) for a in allocations}
    mine = [row for row in rows if _variant(cells_lib.cell_key(row)) == variant]
    for from_steps, steps in moves:
      check = allocation_check(mine, allocations, label, from_steps, steps, tolerance, metric_)
      if check is not None:
        checks.append(check)
  return checks


def _verdict(checks, min_seeds: int) -> str:
  """`MORE` when a check with `min_seeds` seeds or more does not stand, else `PENDING` when one has fewer, else
  `STAND`; `NOT_CHECKED` without a check."""
  decided = [c for c in checks if len(c["seeds"]) >= min_seeds]
  return (NOT_CHECKED if not checks else MORE if not all(c["stands"] for c in decided) else
          PENDING if len(decided) < len(checks) else STAND)


def _budget_entry(rows, points, study, tolerance, min_seeds) -> dict:
  """`steps_check`'s entry of one budget: its rows (every step count), its re-trained points."""
  longer = sorted({s for p in points for s in points[p] if _longer(s, study)})
  shorter = sorted({s for p in points for s in points[p] if _longer(study, s)})
  metric_ = metric(rows)
  checks = _checks(rows, points, [(study, steps) for steps in longer], tolerance, metric_)
  earlier = _checks(rows, points, [(steps, study) for steps in shorter], tolerance, metric_)
  reason = None
  if not checks and not earlier:
    reason = ("no point trained at another step count than the study's" if not longer and not shorter else
              "one allocation at two step counts: no difference to follow" if not _retrained_allocations(points) else
              "no seed with every re-trained allocation at both step counts")
  verdict = RETRAINED if not checks and earlier else _verdict(checks, min_seeds)
  if verdict == PENDING:
    reason = f"{min(len(c['seeds']) for c in checks)} of the {min_seeds} seeds it decides on"
  if verdict == RETRAINED and _verdict(earlier, min_seeds) != MORE:
    reason = "declared trained again although its check " + ("stands" if _verdict(earlier, min_seeds) == STAND
                                                              else "has not decided")
  # Rows at another step count than the study's that no check reads either: out of the report but for this list.
  read = {(label, s, seed) for c in earlier + checks for label in c["cells"] for s in (c["from_steps"], c["steps"])
          for seed in c["seeds"]}
  unread = {}
  for row in rows:
    label = cells_lib.label(dict(zip(cells_lib.CELL_KEY, cells_lib.cell_key(row))))
    if row.get("steps") != study and (label, row.get("steps"), row.get("seed")) not in read:
      unread.setdefault((label, row.get("steps")), set()).add(row.get("seed"))
  return {"study_steps": study, "metric": metric_, "tolerance": tolerance, "min_seeds": min_seeds,
          "checks": earlier + checks,
          "verdict": verdict, "reason": reason,
          "unread": [{"cell": label, "steps": steps, "seeds": len(seeds)} for (label, steps), seeds in unread.items()]}


def steps_check(rows, tolerance: float, min_seeds: int = defaults.STATS["steps_seeds"], retrained=()) -> list[dict]:
  """The steps check of every budget that holds a point trained at two or more step counts (module docstring).

  Args:
    rows: result rows, every step count (`runs.read_runs`).
    tolerance: `stats.steps_tolerance`, in Dice.
    min_seeds: `stats.steps_seeds`, the fewest seeds a check decides on.
    retrained: the budgets declared trained again in full at more steps (`study_steps`).

  Returns:
    One dict per such budget, in table order: `dims`, `budget`, `reference`, `study_steps`, `metric` (the Dice
    its checks read, `metric`), `tolerance`,
    `min_seeds`, `checks` (one `allocation_check` per re-trained selection and interpolation with two or more
    allocations, and other step count, with a seed at both: from each shorter step count to the study's, then from
    the study's to each longer one), `verdict` (`MORE` when a check to a longer step count with `min_seeds` seeds or
    more does not stand, else `PENDING` when such a check has fewer, else `STAND`; `RETRAINED` when every check
    comes from a shorter step count; `NOT_CHECKED` without a check), `reason` (why not checked, the seeds a
    pending check has, or that a `RETRAINED` budget's check did not call for it; None otherwise) and `unread`
    ([{`cell` (label), `steps`, `seeds` (how many)}] of the rows at another step count than the study's that no
    check reads: in no part of the report but this list).
  """
  study = study_steps(rows, retrained)
  out = []
  order = lambda item: (item[0][0], item[0][2], item[0][1])
  for budget, points in sorted(retrained_points(rows).items(), key=order):
    here = [row for row in rows if _budget(row) == budget]
    out.append({"dims": budget[0], "budget": budget[1], "reference": budget[2],
                **_budget_entry(here, points, study[budget], tolerance, min_seeds)})
  return out
