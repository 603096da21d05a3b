"""Result rows into cells: a cell is a grid point without its seed, summarised over its seeds.

- Rows are those of `slicejax.report.results`. A cell needs at least `dims`, `budget`, `volumes`, `selection`, `seed`
  and `dice_mean`, and `slices_per_volume` unless the row is the fully annotated reference (`reference: true`,
  `selection: "all"`); other fields are optional. Null values (undefined Dice) are left out of every mean.
- A cell is named by the fields in `CELL_KEY`. Its statistics are over its seeds. When one (cell, seed) has several
  rows, the last one counts: a rerun of a model replaces its earlier result.
- Diverged models keep their rows (their Dice is what the run produced); cells count them in `n_diverged`.
- Annotation cost: a cell of s volumes x rho slices costs s x `seconds_per_volume` + s x rho x `seconds_per_slice`
  (config `cost`; the defaults 0 and 1 make the cost the slice budget), plus `seconds_per_kilopixel` per 1,000
  foreground pixels of the annotated slices (the rows' `annotated_foreground`, mean over seeds) when that is set;
  a free round allocation opens the volumes its rows record (`annotated_volumes`).
- Selection in rounds (`slicejax.training.rounds`): a round point's cell is named by its selection and schedule, e.g.
  "entropy r3" (3 rounds) or "entropy r3 free" (free allocation).
"""

import math

from absl import logging
import numpy as np

from slicejax.errors import InputError
from slicejax.evaluation import metrics

CELL_KEY = ("dims", "budget", "volumes", "slices_per_volume", "selection", "interpolation", "reference")
_REQUIRED = ("dims", "budget", "volumes", "selection", "seed", "dice_mean")
# Tables list the baseline first, then the study's other techniques; unknown names follow alphabetically.
_SELECTION_ORDER = ("random", "fixed", "ual", "all")
# A cell whose mean validation Dice rose by more than this over its last learning-curve interval is still improving.
PLATEAU_TOLERANCE = 0.005
DEFAULT_COST = {"seconds_per_volume": 0.0, "seconds_per_slice": 1.0}


def _selection(row) -> str:
  """The selection of a row's cell: its `selection`, with the round schedule of a round point ("entropy r3 free")."""
  if row.get("rounds", 1) == 1:
    return row.get("selection")
  return f"{row.get('selection')} r{row['rounds']}" + (" free" if row.get("free") else "")


def in_rounds(selection: str) -> bool:
  """Whether a cell's selection chose in rounds (`_selection`)."""
  return " r" in selection


def cell_key(row) -> tuple:
  """The key of a row's cell: its `CELL_KEY` fields (None where the row lacks one)."""
  return (row.get("dims"), row.get("budget"), row.get("volumes"), row.get("slices_per_volume"), _selection(row),
          bool(row.get("interpolation", False)), bool(row.get("reference", False)))


def key_of(cell) -> tuple:
  """The key of a cell (`summarise`'s, or a comparison's a or b), whose selection already names its rounds."""
  return tuple(cell[name] for name in CELL_KEY)


def sort_key(key) -> tuple:
  """The order of cell keys in every table: dims, the reference last, budget, slices per volume, selection."""
  dims, budget, volumes, slices_per_volume, selection, interpolation, reference = key
  rank = _SELECTION_ORDER.index(selection) if selection in _SELECTION_ORDER else len(_SELECTION_ORDER)
  return (dims, reference, budget, slices_per_volume is None, slices_per_volume or 0, rank, selection,
          interpolation, volumes)


def key_field(key, name):
  """The value of the `CELL_KEY` field `name` in a cell key."""
  return key[CELL_KEY.index(name)]


def missing_seeds(by_seed) -> list:
  """The seeds a cell's runs plan for it (its rows' `planned_seeds`, `runs.read_runs`) that have no row yet, sorted:
  a cell missing some is pending, its runs not finished. [] when every planned seed has a row, or the rows do not
  say."""
  planned = set()
  for row in by_seed.values():
    planned.update(row.get("planned_seeds") or ())
  return sorted(planned - set(by_seed))


def by_cell(rows) -> dict:
  """Groups rows as {cell key: {seed: row}}, checking the fields every row needs."""
  cells = {}
  for index, row in enumerate(rows):
    missing = [name for name in _REQUIRED if name not in row]
    if missing:
      raise InputError(f"results row {index}", f"missing field(s) {', '.join(missing)}")
    if not row.get("reference", False) and row.get("slices_per_volume") is None:
      raise InputError(f"results row {index}", "slices_per_volume is required unless the row is the reference")
    by_seed = cells.setdefault(cell_key(row), {})
    if row["seed"] in by_seed:
      logging.warning("results row %d replaces an earlier row of the same cell and seed %s", index, row["seed"])
    by_seed[row["seed"]] = row
  return cells


def label(cell) -> str:
  """Short name of a cell, e.g. "36×2 random, interp"."""
  if cell.get("reference"):
    return "every slice"
  interpolation = ", interp" if cell["interpolation"] else ""
  return f"{cell['volumes']}×{cell['slices_per_volume']} {cell['selection']}{interpolation}"


def _mean_of(rows, name):
  values = [row[name] for row in rows if row.get(name) is not None]
  return float(np.mean(values)) if values else None


def _mean_per_class(rows, field="dice_per_class") -> dict:
  classes = {}
  for row in rows:
    for name, value in (row.get(field) or {}).items():
      values = classes.setdefault(name, [])
      if value is not None:
        values.append(value)
  return {name: float(np.mean(values)) if values else None for name, values in classes.items()}


def annotation_cost(volumes: int, slices: int, cost: dict, foreground: float | None = None) -> float:
  """Seconds to annotate `slices` slices spread over `volumes` volumes under a cost model (see the module
  docstring), with `foreground` pixels painted in them when the model counts foreground (`seconds_per_kilopixel`)."""
  seconds = volumes * cost["seconds_per_volume"] + slices * cost["seconds_per_slice"]
  if cost.get("seconds_per_kilopixel") and foreground is not None:
    seconds += cost["seconds_per_kilopixel"] * foreground / 1000.0
  return seconds


def _foreground(rows, cost: dict, key) -> float | None:
  """Mean `annotated_foreground` of a cell's rows, for a cost model that counts foreground; None otherwise.

  Raises:
    InputError: the cost model counts foreground and some rows lack it (rows written before it was recorded): a mean
      over the others would price the cell by the seeds that happen to have it.
  """
  if not cost.get("seconds_per_kilopixel"):
    return None
  missing = sorted(row["seed"] for row in rows if row.get("annotated_foreground") is None)
  if missing:
    cell = dict(zip(CELL_KEY, key))
    raise InputError(f"results of {cell['dims']}D budget {cell['budget']} {label(cell)}",
                     f"seed(s) {', '.join(map(str, missing))} lack annotated_foreground, which --seconds_per_kilopixel "
                     "needs (rows written before it was recorded)")
  return _mean_of(rows, "annotated_foreground")


def _round_history(rows) -> dict:
  """Per round, the slices annotated and the mean validation Dice over the rows (seeds); {} for one-shot rows."""
  histories = [row["round_history"] for row in rows if row.get("round_history")]
  if not histories:
    return {}
  rounds = len(histories[0])
  dice = [[h[r]["val_dice"] for h in histories if h[r]["val_dice"] is not None] for r in range(rounds)]
  return {"round_slices": [histories[0][r]["slices"] for r in range(rounds)],
          "round_val_dice": [float(np.mean(d)) if d else None for d in dice]}


def _learning_curve(rows, tolerance):
  """(steps, mean validation Dice over seeds, still improving) of a cell; (None, None, None) without curves."""
  curves = [row["val_curve"] for row in rows if row.get("val_curve") and row["val_curve"]["steps"]]
  if not curves or any(c["steps"] != curves[0]["steps"] for c in curves):
    return None, None, None
  dice = np.array([[np.nan if d is None else d for d in c["dice"]] for c in curves], np.float64)
  mean = [None if math.isnan(v) else float(v) for v in metrics.nan_mean(dice, axis=0)]
  improving = None
  if len(mean) >= 2 and mean[-1] is not None and mean[-2] is not None:
    improving = mean[-1] - mean[-2] > tolerance
  return curves[0]["steps"], mean, improving


def summarise(rows, cost=None, plateau_tolerance: float = PLATEAU_TOLERANCE) -> list[dict]:
  """Summarises rows into one cell per grid point, over seeds.

  Args:
    rows: result rows (see the module docstring).
    cost: the annotation cost model ({"seconds_per_volume", "seconds_per_slice"}); None: `DEFAULT_COST`.
    plateau_tolerance: see `PLATEAU_TOLERANCE`.

  Returns:
    One dict per cell, holding the `CELL_KEY` fields and `n_seeds`, `seeds` (sorted), `missing_seeds` (planned
    seeds without a row yet, `missing_seeds`), `dice_mean`, `dice_std`
    (over the seeds whose Dice is defined, ddof=1; NaN and None without such seeds), `undefined_seeds` (the seeds
    whose `dice_mean` is null: every class absent from every test volume, or a model without a finite result),
    `collapsed_seeds` (those scoring 0 on every class), `dice_per_class` ({class: mean}), the means over seeds of
    `hd95_mean`,
    `nsd_mean`, `density`, `train_seconds`, `interp_dice` and `annotated_foreground` (None where no row has the
    field), `n_diverged`,
    `cost` (seconds), `test_volumes`, `absent` ({class: test volumes without it}, classes absent from some only),
    `curve_steps`, `curve_dice` (mean validation learning curve) and `still_improving` (None without curves).
    Sorted by dims, the reference last, then budget, slices per volume, selection and interpolation.

  Raises:
    InputError: a row lacks a required field.
  """
  cost = DEFAULT_COST if cost is None else cost
  cells = []
  for key, by_seed in sorted(by_cell(rows).items(), key=lambda item: sort_key(item[0])):
    seeds = sorted(by_seed)
    members = [by_seed[seed] for seed in seeds]
    dice = np.array([np.nan if row["dice_mean"] is None else row["dice_mean"] for row in members], np.float64)
    undefined = [seed for seed, value in zip(seeds, dice) if math.isnan(value)]
    # A model that scores 0 on every class has learnt nothing of the foreground (often all background): kept in the
    # mean, named in the flags.
    collapsed = [seed for seed, value, row in zip(seeds, dice, members)
                 if value == 0 and all(v == 0 for v in (row.get("dice_per_class") or {}).values())]
    dice = dice[~np.isnan(dice)]
    cell = dict(zip(CELL_KEY, key))
    test_volumes = max((row.get("test_volumes") or 0 for row in members), default=0)
    absent = {}
    for row in members:
      for name, n in (row.get("class_volumes") or {}).items():
        if n < row.get("test_volumes", n):
          absent[name] = row["test_volumes"] - n
    steps, curve, improving = _learning_curve(members, plateau_tolerance)
    cell.update(
        n_seeds=len(members),
        seeds=seeds,
        missing_seeds=missing_seeds(by_seed),
        dice_mean=float(dice.mean()) if dice.size else math.nan,
        dice_std=float(dice.std(ddof=1)) if len(dice) > 1 else None,
        undefined_seeds=undefined,
        collapsed_seeds=collapsed,
        steps=max((row.get("steps") or 0 for row in members), default=0) or None,
        dice_per_class=_mean_per_class(members),
        hd95_mean=_mean_of(members, "hd95_mean"),
        nsd_mean=_mean_of(members, "nsd_mean"),
        density=_mean_of(members, "density"),
        # A cell in rounds trains every round's models (`runs.compute_used`), not only its last round's.
        train_seconds=_mean_of(members, "rounds_train_seconds" if any("rounds_train_seconds" in row for row in members)
                               else "train_seconds"),
        interp_dice=_mean_of(members, "interp_dice"),
        n_diverged=sum(bool(row.get("diverged", False)) for row in members),
        cost=annotation_cost(_mean_of(members, "annotated_volumes") or cell["volumes"], cell["budget"], cost,
                             _foreground(members, cost, key)),
        test_volumes=test_volumes, absent=absent, curve_steps=steps, curve_dice=curve, still_improving=improving,
        rounds=max(row.get("rounds", 1) for row in members), annotated_volumes=_mean_of(members, "annotated_volumes"),
        annotated_foreground=_mean_of(members, "annotated_foreground"),
        **_round_history(members))
    cells.append(cell)
  return cells


def cost_frontier(cells, left_out=()) -> list[dict]:
  """The best sparse cell at each annotation cost level: cells sorted by cost, each kept when its mean Dice beats
  every cheaper one (the Pareto frontier a team reads its budget off). The cells whose keys are in `left_out` take no
  part (the report's: cells still missing planned seeds, whose means are over other seeds than the rest, and cells
  in rounds not shown to pay, `recommendations.held_back`)."""
  frontier, best = [], -math.inf
  left_out = set(left_out)
  for cell in sorted((c for c in cells if not c["reference"] and key_of(c) not in left_out),
                     key=lambda c: (c["cost"], -c["dice_mean"])):
    if cell["dice_mean"] > best:
      best = cell["dice_mean"]
      frontier.append(cell)
  return frontier
