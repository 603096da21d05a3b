"""The study report: result rows of one or several runs in; summary, paired statistics, findings and figures out.

    python -m slicejax.report --workdir=runs/a [--workdir=runs/b ...] [--out=DIR]
        [--seconds_per_volume=60 --seconds_per_slice=20]

Conventions:
- Rows are those of `slicejax.results`. The report needs at least `dims`, `budget`, `volumes`, `selection`, `seed`
  and `dice_mean`, and `slices_per_volume` unless the row is the fully annotated reference (`reference: true`,
  `selection: "all"`); other fields are optional. Null values (undefined Dice) are left out of every mean.
- A *cell* is a grid point without its seed: the fields in `CELL_KEY`. Its statistics are over its seeds. When one
  (cell, seed) has several rows, the last one counts: a rerun of a model replaces its earlier result.
- Diverged models keep their rows (their Dice is what the run produced); cells count them in `n_diverged`.
- Comparisons (`slicejax.stats`) report a - b, paired by seed and test volume, so a positive difference means a is
  better; the fully annotated reference is summarised but never compared.
- Several runs merge into one report only if they trained on the same data, split, network and training
  (`check_compatible`): a grid split over machines, or more seeds run later. Their union gives the same summary as
  one run of all their points.
- Annotation cost: a cell of s volumes x rho slices costs s x `seconds_per_volume` + s x rho x `seconds_per_slice`
  (config `cost`; the defaults 0 and 1 make the cost the slice budget).
- Every file written here is replaced atomically (`slicejax.files`).
"""

import csv
import io
import json
import math
import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

from slicejax import console
from slicejax import figures
from slicejax import files
from slicejax import metrics
from slicejax import results
from slicejax import stats
from slicejax import workdir as workdir_lib
from slicejax.errors import InputError

CELL_KEY = ("dims", "budget", "volumes", "slices_per_volume", "selection", "interpolation", "reference")
_REQUIRED = ("dims", "budget", "volumes", "selection", "seed", "dice_mean")
# Tables list the baseline first, then the study's other techniques; unknown names follow alphabetically.
_SELECTION_ORDER = ("random", "fixed", "ual", "all")
# A cell whose mean validation Dice rose by more than this over its last learning-curve interval is still improving.
PLATEAU_TOLERANCE = 0.005
# Config keys that must agree between runs merged into one report: what was trained on what, and how it was scored.
# Everything else (the grid, placement, paths, logging) may differ.
MERGE_KEYS = ("seed", "data", "model", "three_d", "train", "interpolation", "ual", "eval.nsd_tolerance_mm")
_MERGE_IGNORED = ("data.root", "data.cache_dir", "data.missing_root_hint")
DEFAULT_COST = {"seconds_per_volume": 0.0, "seconds_per_slice": 1.0}


# ---------------------------------------------------------------------------------------------------------------------
# Cells.
# ---------------------------------------------------------------------------------------------------------------------


def _cell_key(row) -> tuple:
  return (row["dims"], row["budget"], row["volumes"], row.get("slices_per_volume"), row["selection"],
          bool(row.get("interpolation", False)), bool(row.get("reference", False)))


def _sort_key(key) -> tuple:
  dims, budget, volumes, slices_per_volume, selection, interpolation, reference = key
  rank = _SELECTION_ORDER.index(selection) if selection in _SELECTION_ORDER else len(_SELECTION_ORDER)
  return (dims, reference, budget, slices_per_volume is None, slices_per_volume or 0, rank, selection,
          interpolation, volumes)


def _field(key, name):
  return key[CELL_KEY.index(name)]


def _by_cell(rows) -> dict:
  """Groups rows as {cell key: {seed: row}}, checking the fields every row needs."""
  cells = {}
  for index, row in enumerate(rows):
    missing = [name for name in _REQUIRED if name not in row]
    if missing:
      raise InputError(f"results row {index}", f"missing field(s) {', '.join(missing)}")
    if not row.get("reference", False) and row.get("slices_per_volume") is None:
      raise InputError(f"results row {index}", "slices_per_volume is required unless the row is the reference")
    by_seed = cells.setdefault(_cell_key(row), {})
    if row["seed"] in by_seed:
      logging.warning("results row %d replaces an earlier row of the same cell and seed %s", index, row["seed"])
    by_seed[row["seed"]] = row
  return cells


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


def annotation_cost(volumes: int, slices: int, cost: dict) -> float:
  """Seconds to annotate `slices` slices spread over `volumes` volumes under a cost model (see the docstring)."""
  return volumes * cost["seconds_per_volume"] + slices * cost["seconds_per_slice"]


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
    One dict per cell, holding the `CELL_KEY` fields and `n_seeds`, `seeds` (sorted), `dice_mean`, `dice_std`
    (ddof=1; None for a single seed), `dice_per_class` ({class: mean}), the means over seeds of `hd95_mean`,
    `nsd_mean`, `density`, `train_seconds` and `interp_dice` (None where no row has the field), `n_diverged`,
    `cost` (seconds), `test_volumes`, `absent` ({class: test volumes without it}, classes absent from some only),
    `curve_steps`, `curve_dice` (mean validation learning curve) and `still_improving` (None without curves).
    Sorted by dims, the reference last, then budget, slices per volume, selection and interpolation.

  Raises:
    InputError: a row lacks a required field.
  """
  cost = DEFAULT_COST if cost is None else cost
  cells = []
  for key, by_seed in sorted(_by_cell(rows).items(), key=lambda item: _sort_key(item[0])):
    seeds = sorted(by_seed)
    members = [by_seed[seed] for seed in seeds]
    dice = np.array([np.nan if row["dice_mean"] is None else row["dice_mean"] for row in members], np.float64)
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
        dice_mean=float(dice.mean()),
        dice_std=float(dice.std(ddof=1)) if len(dice) > 1 else None,
        dice_per_class=_mean_per_class(members),
        hd95_mean=_mean_of(members, "hd95_mean"),
        nsd_mean=_mean_of(members, "nsd_mean"),
        density=_mean_of(members, "density"),
        train_seconds=_mean_of(members, "train_seconds"),
        interp_dice=_mean_of(members, "interp_dice"),
        n_diverged=sum(bool(row.get("diverged", False)) for row in members),
        cost=annotation_cost(cell["volumes"], cell["budget"], cost),
        test_volumes=test_volumes, absent=absent, curve_steps=steps, curve_dice=curve, still_improving=improving)
    cells.append(cell)
  return cells


# ---------------------------------------------------------------------------------------------------------------------
# Paired comparisons and the paper's findings.
# ---------------------------------------------------------------------------------------------------------------------


def _groups(keys, fields) -> list[list[tuple]]:
  """Splits cell keys into groups that agree on `fields`; each group sorted like the tables."""
  groups = {}
  for key in sorted(keys, key=_sort_key):
    groups.setdefault(tuple(_field(key, name) for name in fields), []).append(key)
  return list(groups.values())


def _compare(family, cells, a, b, confidence, resamples):
  if not set(cells[a]) & set(cells[b]):
    logging.info("no shared seeds for the %s comparison %s vs %s", family, a, b)
    return None
  return {"comparison": family, "a": dict(zip(CELL_KEY, a)), "b": dict(zip(CELL_KEY, b)),
          **stats.compare(cells[a], cells[b], confidence=confidence, resamples=resamples)}


def _mean_dice(by_seed) -> float:
  values = [row["dice_mean"] for row in by_seed.values() if row["dice_mean"] is not None]
  return float(np.mean(values)) if values else -math.inf


def paired_comparisons(rows, confidence=0.95, resamples=stats.RESAMPLES) -> list[dict]:
  """Compares cells that differ in one study variable, paired by seed and test volume (`slicejax.stats.compare`).

  Families, in this order:
  - "allocation": within one (dims, budget, selection, interpolation), every allocation against the best one (the
    highest mean Dice);
  - "fewest": within the same groups, the allocation with the fewest slices per volume against every other (the
    evidence for the paper's first finding);
  - "selection": within one (dims, budget, allocation, interpolation), every pair of selection methods, the later
    of `random`, `fixed`, `ual` as a (e.g. ual against random);
  - "interpolation": within one (dims, budget, allocation, selection), interpolation on against off.

  Args:
    rows: result rows (see the module docstring); the reference rows are ignored.
    confidence: the coverage of the intervals.
    resamples: bootstrap replicates.

  Returns:
    One dict per comparison with at least one shared seed: `comparison` (the family), `a` and `b` (the cells'
    `CELL_KEY` fields), and the fields of `stats.compare`.

  Raises:
    InputError: `confidence` is not strictly between 0 and 1, or a row lacks a required field.
  """
  if not 0 < confidence < 1:
    raise InputError("confidence", f"must lie strictly between 0 and 1, got {confidence}")
  cells = {key: by_seed for key, by_seed in _by_cell(rows).items() if not _field(key, "reference")}
  pairs = []
  for group in _groups(cells, ("dims", "budget", "selection", "interpolation")):
    best = max(group, key=lambda key: _mean_dice(cells[key]))
    pairs += [("allocation", key, best) for key in group if key != best]
    fewest = min(group, key=lambda key: _field(key, "slices_per_volume"))
    pairs += [("fewest", fewest, key) for key in group if key != fewest]
  for group in _groups(cells, ("dims", "budget", "volumes", "slices_per_volume", "interpolation")):
    ordered = sorted(group, key=_sort_key)
    pairs += [("selection", b, a) for i, a in enumerate(ordered) for b in ordered[i + 1:]]
  for group in _groups(cells, ("dims", "budget", "volumes", "slices_per_volume", "selection")):
    by_interpolation = {_field(key, "interpolation"): key for key in group}
    if len(by_interpolation) == 2:
      pairs.append(("interpolation", by_interpolation[True], by_interpolation[False]))
  comparisons = [_compare(family, cells, a, b, confidence, resamples) for family, a, b in pairs]
  return [comparison for comparison in comparisons if comparison is not None]


def _tally(comparisons) -> dict:
  counts = {stats.BETTER: 0, stats.WORSE: 0, stats.NO_DIFFERENCE: 0, stats.ONE_SEED: 0}
  for comparison in comparisons:
    counts[comparison["verdict"]] += 1
  return counts


def _evidence(comparison) -> dict:
  a, b = comparison["a"], comparison["b"]
  return {"dims": a["dims"], "budget": a["budget"], "a": _label(a), "b": _label(b),
          **{k: comparison[k] for k in ("mean_diff", "ci_low", "ci_high", "p_wilcoxon", "verdict", "n_pairs")}}


def findings(comparisons, cells) -> list[dict]:
  """The three findings of the paper (STUDY.md), each checked on this study's comparisons.

  Verdicts: "reproduced", "reversed" (finding 1 only: more slices per volume wins), "not reproduced", "mixed",
  "inconclusive" (no detectable difference anywhere, or only single seeds) or "not tested" (no such cells).
  - 1, fewer slices per volume over more volumes at equal budget: the "fewest" comparisons without interpolation.
    Reproduced when the fewest-slices allocation is better in at least one and worse in none; reversed when it is
    worse in at least one and better in none.
  - 2, UAL not better than random or fixed interval at equal slices per volume: the "selection" comparisons of
    `ual`. Reproduced when UAL is better in at most a quarter of the comparisons resolved by an interval, not
    reproduced when in more than half.
  - 3, interpolation rarely helps, except some low-density 3D settings: the "interpolation" comparisons. Reproduced
    when interpolation is better in at most a quarter of the 2D comparisons (3D listed apart, by density).

  Returns:
    One dict per finding: `finding` (1-3), `claim`, `verdict`, `counts` ({verdict word: comparisons}), `evidence`
    (the comparisons) and `best` (finding 1: the best allocation per dims and budget).
  """
  def result(number, claim, verdict, chosen, **extra):
    return {"finding": number, "claim": claim, "verdict": verdict, "counts": _tally(chosen),
            "evidence": [_evidence(c) for c in chosen], **extra}

  out = []
  fewest = [c for c in comparisons if c["comparison"] == "fewest" and not c["a"]["interpolation"]]
  better, worse = _tally(fewest)[stats.BETTER], _tally(fewest)[stats.WORSE]
  if not fewest:
    verdict = "not tested"
  elif better or worse:
    verdict = "mixed" if better and worse else "reproduced" if better else "reversed"
  else:
    verdict = "inconclusive"
  best = {}
  for cell in cells:
    if not cell["reference"] and not cell["interpolation"]:
      key = f"{cell['dims']}D budget {cell['budget']}"
      if key not in best or cell["dice_mean"] > best[key]["dice_mean"]:
        best[key] = {"allocation": _label(cell), "slices_per_volume": cell["slices_per_volume"],
                     "dice_mean": cell["dice_mean"]}
  by_selection = {}
  for c in fewest:
    by_selection.setdefault(c["a"]["selection"], []).append(c)
  out.append(result(1, "At a fixed budget, fewer slices per volume over more volumes is better.", verdict, fewest,
                    best=best, counts_by_selection={k: _tally(v) for k, v in by_selection.items()}))

  ual = [c for c in comparisons if c["comparison"] == "selection" and "ual" in (c["a"]["selection"],
                                                                                c["b"]["selection"])]
  # Orient every comparison as ual - other.
  oriented = [c if c["a"]["selection"] == "ual" else _flip(c) for c in ual]
  out.append(result(2, "UAL is not better than random or fixed-interval selection at equal slices per volume.",
                    _rarely_better(oriented), oriented))

  interpolation = [c for c in comparisons if c["comparison"] == "interpolation"]
  two_d = [c for c in interpolation if c["a"]["dims"] == 2]
  verdict = "not tested in 2D" if interpolation and not two_d else _rarely_better(two_d)
  three_d = sorted((c for c in interpolation if c["a"]["dims"] == 3),
                   key=lambda c: (c["a"]["budget"], c["a"]["slices_per_volume"]))
  out.append(result(3, "Mask interpolation rarely helps, except some low-density 3D settings.", verdict, two_d,
                    three_d=[_evidence(c) for c in three_d], three_d_counts=_tally(three_d)))
  return out


def _rarely_better(comparisons) -> str:
  """The verdict on "a is rarely better than b": reproduced when a is better in at most a quarter of the comparisons
  that an interval resolves, not reproduced when in more than half."""
  counts = _tally(comparisons)
  resolved = counts[stats.BETTER] + counts[stats.WORSE] + counts[stats.NO_DIFFERENCE]
  if not comparisons:
    return "not tested"
  if not resolved:
    return "inconclusive"
  if counts[stats.BETTER] <= resolved / 4:
    return "reproduced"
  return "not reproduced" if counts[stats.BETTER] > resolved / 2 else "mixed"


def _flip(comparison) -> dict:
  flipped = dict(comparison, a=comparison["b"], b=comparison["a"])
  for name in ("mean_diff", "nsd_diff", "hd95_diff"):
    if flipped.get(name) is not None:
      flipped[name] = -flipped[name]
  low, high = comparison["ci_low"], comparison["ci_high"]
  flipped["ci_low"], flipped["ci_high"] = (None, None) if low is None else (-high, -low)
  flipped["verdict"] = stats.verdict(flipped["ci_low"], flipped["ci_high"])
  return flipped


def cost_frontier(cells) -> list[dict]:
  """The best sparse cell at each annotation cost level: cells sorted by cost, each kept when its mean Dice beats
  every cheaper one (the Pareto frontier a team reads its budget off)."""
  frontier, best = [], -math.inf
  for cell in sorted((c for c in cells if not c["reference"]), key=lambda c: (c["cost"], -c["dice_mean"])):
    if cell["dice_mean"] > best:
      best = cell["dice_mean"]
      frontier.append(cell)
  return frontier


# ---------------------------------------------------------------------------------------------------------------------
# Reading and merging runs.
# ---------------------------------------------------------------------------------------------------------------------


def _merge_view(config: dict, keys) -> dict:
  flat = workdir_lib._flatten(config)
  return {k: v for k, v in flat.items()
          if any(k == m or k.startswith(m + ".") for m in keys) and k not in _MERGE_IGNORED}


def check_compatible(configs: dict, dims: dict | None = None) -> None:
  """Refuses to merge runs that differ in data, split, network or training.

  Args:
    configs: {path of config.json: its config dict}, in the order given.
    dims: {the same paths: the set of dims its rows hold}; the 2D network (`model`) is compared only between runs
      that both hold 2D rows, the 3D one (`three_d`) between runs that both hold 3D rows. None: both always.

  Raises:
    InputError: naming the later config.json of the first pair that differs, the first differing key, and both
      values.
  """
  items = list(configs.items())
  for j, (path, config) in enumerate(items):
    for first_path, first in items[:j]:
      keys = list(MERGE_KEYS)
      for name, d in (("model", 2), ("three_d", 3)):
        if dims is not None and not (d in dims[path] and d in dims[first_path]):
          keys.remove(name)
      reference, view = _merge_view(first, keys), _merge_view(config, keys)
      for key in sorted(reference.keys() | view.keys()):
        if reference.get(key) != view.get(key):
          raise InputError(path, f"{key} is {view.get(key)!r} here but {reference.get(key)!r} in {first_path}; "
                                 "runs with different data, split, network or training cannot be merged")


def read_runs(workdirs) -> tuple:
  """Reads and merges the rows of one or several run folders (each holding config.json and results.jsonl).

  Returns:
    (rows, config): the rows of every run in order (a point trained in two runs counts once, the later row), and
    the first run's config dict.

  Raises:
    InputError: a folder is not a run, runs are incompatible (`check_compatible`), or their test volumes differ.
  """
  configs, rows, dims = {}, [], {}
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
    dims[str(path)] = {row.get("dims") for row in run_rows}
    rows += run_rows
  check_compatible(configs, dims)
  cases = {}
  for row in rows:
    if "test_cases" in row:
      cases.setdefault(tuple(row["test_cases"]), row["name"] if "name" in row else "?")
  if len(cases) > 1:
    (_, a), (_, b) = list(cases.items())[:2]
    raise InputError(str(workdirs[-1]), f"rows {a} and {b} were tested on different volumes; they cannot be merged")
  # A point trained by two runs counts once: its later row, in the later row's place.
  by_name = {}
  for index, row in enumerate(rows):
    key = row.get("name", ("unnamed", index))
    by_name.pop(key, None)
    by_name[key] = row
  return list(by_name.values()), next(iter(configs.values()))


# ---------------------------------------------------------------------------------------------------------------------
# The summary files.
# ---------------------------------------------------------------------------------------------------------------------


def compute_used(rows) -> dict:
  """What the rows cost to produce: `models`, `train_seconds` and `eval_seconds` (sums over rows, each row's share of
  its group), `encoder_seconds` (the UAL encoders', counted once per distinct value: every ual row of a run carries
  its run's)."""
  encoders = {row["encoder_seconds"] for row in rows if row.get("encoder_seconds") is not None}
  return {"models": len(rows), "train_seconds": float(sum(row.get("train_seconds") or 0 for row in rows)),
          "eval_seconds": float(sum(row.get("eval_seconds") or 0 for row in rows)),
          "encoder_seconds": float(sum(encoders))}


def write_summary(workdir, rows, confidence=0.95, *, cost=None, resamples=stats.RESAMPLES, preamble: str = "",
                  document=None) -> None:
  """Writes the study report of `rows` into `workdir`, each file replaced atomically.

  - `summary.md`: the findings, the cells (mean ± std over seeds, surface metrics, flags), the reference, the
    paired comparisons with intervals, Wilcoxon p-values, verdicts and seeds needed, the best allocation per budget,
    and the annotation cost view.
  - `summary.csv`: one line per cell with plain numbers (booleans as 0/1, missing values empty).
  - `findings.json`: `findings` and `comparisons`.
  - figures (`slicejax.figures`): `dice_vs_allocation.png`, `dice_vs_budget.png`, `forest.png`,
    `dice_per_class.png`, `dice_vs_cost.png`, `learning_curves.png`.

  Args:
    workdir: an existing folder.
    rows: result rows (see the module docstring).
    confidence: the coverage of the paired intervals.
    cost: the annotation cost model; None: `DEFAULT_COST`.
    resamples: bootstrap replicates.
    preamble: markdown put before the summary (e.g. a study's protocol and commands).
    document: also write the summary (with its preamble) to this markdown file, its figure links relative to it.
  """
  workdir = os.fspath(workdir)
  cost = dict(DEFAULT_COST if cost is None else cost)
  cells = summarise(rows, cost)
  comparisons = paired_comparisons(rows, confidence, resamples)
  found = findings(comparisons, cells)
  frontier = cost_frontier(cells)
  text = _markdown(cells, comparisons, found, frontier, cost, confidence, compute_used(rows))
  pngs = figures.all_figures(cells, comparisons, frontier, cost)
  files.atomic_write(os.path.join(workdir, "summary.md"), preamble + text + _figure_links(pngs, ""))
  if document is not None:
    prefix = os.path.relpath(workdir, os.path.dirname(os.path.abspath(document)) or ".")
    files.atomic_write(document, preamble + text + _figure_links(pngs, prefix + "/"))
  files.atomic_write(os.path.join(workdir, "summary.csv"), _csv(cells))
  files.atomic_write(os.path.join(workdir, "findings.json"), json.dumps(
      {"findings": found, "comparisons": comparisons, "cost": cost}, indent=1, default=_json_value) + "\n")
  for name, png in pngs.items():
    files.atomic_write(os.path.join(workdir, name), png)
  logging.info("wrote the summary of %d rows (%d cells) to %s", len(rows), len(cells), workdir)


def _json_value(value):
  if isinstance(value, (np.integer, np.floating)):
    return value.item()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _fmt(value, digits=3) -> str:
  return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _classes(cells) -> list[str]:
  names = {}
  for cell in cells:
    names.update(dict.fromkeys(cell["dice_per_class"]))
  return list(names)


def _allocation(cell) -> str:
  slices = cell["slices_per_volume"]
  return f"{cell['volumes']} volumes × {slices} slice{'' if slices == 1 else 's'} per volume"


def _label(cell) -> str:
  """Short name of a cell, e.g. "36×2 random, interp"."""
  if cell.get("reference"):
    return "every slice"
  interpolation = ", interp" if cell["interpolation"] else ""
  return f"{cell['volumes']}×{cell['slices_per_volume']} {cell['selection']}{interpolation}"


def _table(header, lines) -> list[str]:
  return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
          + ["| " + " | ".join(line) + " |" for line in lines])


def _spread(cell) -> str:
  if cell["dice_std"] is None:
    return f"{cell['dice_mean']:.3f} (1 seed: no spread)"
  return f"{cell['dice_mean']:.3f} ± {cell['dice_std']:.3f} ({cell['n_seeds']})"


def _flags(cell) -> str:
  flags_ = []
  if cell["absent"]:
    flags_.append("absent: " + ", ".join(f"{name} in {n}/{cell['test_volumes']}" for name, n in cell["absent"].items()))
  if cell["still_improving"]:
    flags_.append("still improving")
  return "; ".join(flags_)


def _cell_table(cells, classes) -> list[str]:
  header = (["dims", "budget", "volumes", "slices/volume", "density", "selection", "interpolation",
             "Dice mean ± std (n)"] + [f"Dice {name}" for name in classes]
            + ["HD95 mm", "NSD", "interp Dice", "cost", "train s", "diverged", "flags"])
  lines = []
  for cell in cells:
    slices = "all" if cell["slices_per_volume"] is None else str(cell["slices_per_volume"])
    lines.append([
        f"{cell['dims']}D", str(cell["budget"]), str(cell["volumes"]), slices, _fmt(cell["density"]),
        cell["selection"], "on" if cell["interpolation"] else "off", _spread(cell)]
        + [_fmt(cell["dice_per_class"].get(name)) for name in classes]
        + [_fmt(cell["hd95_mean"], 2), _fmt(cell["nsd_mean"]), _fmt(cell["interp_dice"]), f"{cell['cost']:g}",
           _fmt(cell["train_seconds"], 1), str(cell["n_diverged"]), _flags(cell)])
  return _table(header, lines)


def _interval(comparison) -> str:
  if comparison["ci_low"] is None:
    return "— (1 seed)"
  return f"[{comparison['ci_low']:+.3f}, {comparison['ci_high']:+.3f}]"


def _comparison_table(comparisons, percent) -> list[str]:
  header = ["comparison", "dims", "budget", "a", "b", "seeds", "volumes", "Δ Dice", f"{percent} CI", "Wilcoxon p",
            "verdict", "seeds needed", "Δ NSD", "Δ HD95 mm"]
  lines = []
  for c in comparisons:
    lines.append([c["comparison"], f"{c['a']['dims']}D", str(c["a"]["budget"]), _label(c["a"]), _label(c["b"]),
                  str(c["n_pairs"]), str(c["n_volumes"]), f"{c['mean_diff']:+.3f}", _interval(c),
                  _fmt(c["p_wilcoxon"], 3), c["verdict"],
                  "—" if c["seeds_needed"] is None else str(c["seeds_needed"]) if c["seeds_needed"] <= 1000
                  else "> 1000",
                  "—" if c["nsd_diff"] is None else f"{c['nsd_diff']:+.3f}",
                  "—" if c["hd95_diff"] is None else f"{c['hd95_diff']:+.2f}"])
  return _table(header, lines)


def _counts_text(counts) -> str:
  return (f"{counts[stats.BETTER]} better, {counts[stats.WORSE]} worse, {counts[stats.NO_DIFFERENCE]} no detectable "
          f"difference" + (f", {counts[stats.ONE_SEED]} with one seed" if counts[stats.ONE_SEED] else ""))


def findings_markdown(found) -> list[str]:
  """The "Findings" section: one paragraph per finding with its verdict and evidence."""
  out = ["## Findings", "",
         "The paper's three findings (STUDY.md), checked on this dataset with the paired comparisons below.", ""]
  for finding in found:
    out.append(f"**{finding['finding']}. {finding['claim']}** Verdict: **{finding['verdict']}**.")
    if finding["finding"] == 1:
      out.append(f"The fewest-slices allocation against each other allocation at the same budget and selection: "
                 f"{_counts_text(finding['counts'])}"
                 + ("" if len(finding["counts_by_selection"]) < 2 else " (" + "; ".join(
                     f"{name}: {_counts_text(counts)}" for name, counts in finding["counts_by_selection"].items())
                    + ")") + ". Best allocation: "
                 + "; ".join(f"{key}: {b['allocation']} ({b['dice_mean']:.3f})" for key, b in finding["best"].items())
                 + ".")
    elif finding["finding"] == 2:
      out.append(f"UAL against random and fixed interval at equal allocation: {_counts_text(finding['counts'])}.")
    else:
      out.append(f"Interpolation on against off, 2D: {_counts_text(finding['counts'])}."
                 + (f" 3D: {_counts_text(finding['three_d_counts'])}; "
                    + "; ".join(f"{e['a']} {e['mean_diff']:+.3f} ({e['verdict']})" for e in finding["three_d"])
                    if finding["three_d"] else " No 3D comparison."))
    out.append("")
  return out


def _figure_links(pngs, prefix) -> str:
  titles = {"dice_vs_allocation.png": "Dice against slices per volume", "dice_vs_budget.png": "Dice against budget",
            "forest.png": "Paired differences", "dice_per_class.png": "Dice per class",
            "dice_vs_cost.png": "Dice against annotation cost", "learning_curves.png": "Learning curves"}
  lines = ["## Figures", ""]
  for name in pngs:
    lines += [f"![{titles.get(name, name)}]({prefix}{name})", ""]
  return "\n".join(lines)


def _markdown(cells, comparisons, found, frontier, cost, confidence, compute) -> str:
  classes = _classes(cells)
  grid = [cell for cell in cells if not cell["reference"]]
  reference = [cell for cell in cells if cell["reference"]]
  out = ["# Study summary", ""]
  if not cells:
    return "\n".join(out + ["No results yet.", ""])
  seeds = sorted({cell["n_seeds"] for cell in grid})
  if seeds and seeds[-1] < 2:
    out += ["Every cell has one seed: no interval or verdict can be given; run more seeds (`study.seeds`).", ""]
  out += findings_markdown(found)
  out += ["## Cells", "",
          "Dice: mean ± std over seeds (number of seeds) of each model's mean test Dice; HD95 and NSD (normalised "
          "surface Dice) likewise, means over seeds. Cost: annotation seconds under the cost model below. Flags: "
          "`absent` (a class missing from some test volumes' truth: its Dice averages over fewer volumes), `still "
          f"improving` (mean validation Dice rose by more than {PLATEAU_TOLERANCE} over the last learning-curve "
          "interval: more steps may change the answer).", ""]
  out += _cell_table(grid, classes) if grid else ["No sparse-annotation cells yet."]
  out += ["", "## Reference (every slice annotated)", ""]
  out += _cell_table(reference, classes) if reference else ["No reference run yet."]
  percent = f"{100 * confidence:g}%"
  out += ["", "## Paired comparisons", "",
          f"Δ = mean of a − b over shared seeds and test volumes (per-volume Dice). {percent} interval: hierarchical "
          f"bootstrap ({stats.RESAMPLES} resamples of seeds, then test volumes). Verdict from the interval; Wilcoxon "
          "signed-rank p on per-seed differences beside it; seeds needed: for an interval that excludes 0 with 80% "
          "power at the observed difference. Families: `allocation` (against the best at that budget), `fewest` "
          "(the fewest slices per volume against the others), `selection`, `interpolation` (on − off).", ""]
  out += _comparison_table(comparisons, percent) if comparisons else ["No cells to compare yet."]
  out += ["", "## Best allocation per budget", ""]
  by_budget = {}
  for cell in grid:
    by_budget.setdefault((cell["dims"], cell["budget"]), []).append(cell)
  for (dims, budget), members in by_budget.items():
    best = max(members, key=lambda cell: -math.inf if math.isnan(cell["dice_mean"]) else cell["dice_mean"])
    out.append(
        f"- {dims}D, budget {budget}: the best allocation is {_allocation(best)}, {best['selection']} selection, "
        f"interpolation {'on' if best['interpolation'] else 'off'} (Dice {_spread(best)}).")
  out += ["", "## Annotation cost", "",
          f"Cost model: {cost['seconds_per_volume']:g} s per volume opened + {cost['seconds_per_slice']:g} s per "
          "slice (`python -m slicejax.report --seconds_per_volume=... --seconds_per_slice=...` recomputes this view "
          "with a team's own timings). The best cell at each cost level (cells that beat every cheaper one):", ""]
  out += _table(["cost s", "dims", "allocation", "selection", "interpolation", "Dice"],
                [[f"{c['cost']:g}", f"{c['dims']}D", f"{c['volumes']}×{c['slices_per_volume']}", c["selection"],
                  "on" if c["interpolation"] else "off", _spread(c)] for c in frontier]) if frontier else ["—"]
  out += ["", "## Compute", "",
          f"{compute['models']} models: {console.duration(compute['train_seconds'])} of training and "
          f"{console.duration(compute['eval_seconds'])} of evaluation (sums of the rows' `train_seconds` and "
          f"`eval_seconds`, each model's share of its group's time)"
          + (f", and {console.duration(compute['encoder_seconds'])} for UAL slice encoders" if compute["encoder_seconds"]
             else "") + ".", ""]
  return "\n".join(out)


def _csv(cells) -> str:
  classes = _classes(cells)
  header = list(CELL_KEY) + ["n_seeds", "density", "dice_mean", "dice_std"] + [
      f"dice_{name}" for name in classes] + ["hd95_mean", "nsd_mean", "interp_dice", "cost", "train_seconds",
                                             "n_diverged", "still_improving"]
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(header)
  for cell in cells:
    values = [cell[name] for name in CELL_KEY] + [cell["n_seeds"], cell["density"], cell["dice_mean"],
                                                    cell["dice_std"]]
    values += [cell["dice_per_class"].get(name) for name in classes]
    values += [cell["hd95_mean"], cell["nsd_mean"], cell["interp_dice"], cell["cost"], cell["train_seconds"],
               cell["n_diverged"], cell["still_improving"]]
    # str(float) is the shortest repr that parses back to the same float.
    writer.writerow(["" if value is None else int(value) if isinstance(value, bool) else value for value in values])
  return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------------
# The entry point.
# ---------------------------------------------------------------------------------------------------------------------

def run(workdirs, out=None, *, seconds_per_volume=None, seconds_per_slice=None, confidence=0.95,
        resamples=stats.RESAMPLES, preamble=None, document=None) -> pathlib.Path:
  """Regenerates the report of one or several runs into `out` (default: the only workdir); returns `out`."""
  if not workdirs:
    raise InputError("--workdir", "give at least one run folder")
  if out is None and len(workdirs) > 1:
    raise InputError("--out", "several --workdir merge into one report: say where it goes")
  rows, config = read_runs(workdirs)
  cost = dict(DEFAULT_COST, **(config.get("cost") or {}))
  for key, value in (("seconds_per_volume", seconds_per_volume), ("seconds_per_slice", seconds_per_slice)):
    if value is not None:
      if not (math.isfinite(value) and value >= 0):
        raise InputError(f"--{key}", f"must be a number >= 0, got {value}")
      cost[key] = value
  text = ""
  if preamble:
    try:
      text = pathlib.Path(preamble).read_text(encoding="utf-8").rstrip("\n") + "\n\n"
    except (OSError, UnicodeDecodeError) as err:
      raise InputError(str(preamble), f"cannot be read ({err})") from err
  out = pathlib.Path(out if out is not None else workdirs[0])
  out.mkdir(parents=True, exist_ok=True)
  write_summary(out, rows, confidence, cost=cost, resamples=resamples, preamble=text, document=document)
  return out


def _define_flags() -> None:
  # Defined only when the report runs as a program: launch.py, which imports this module, has its own --workdir.
  flags.DEFINE_multi_string("workdir", None, "Run folder (config.json, results.jsonl); repeat to merge.")
  flags.DEFINE_string("out", None, "Where to write the report; default: the only --workdir.")
  flags.DEFINE_float("seconds_per_volume", None, "Annotation seconds per volume opened; default: the run's "
                     "config.cost.")
  flags.DEFINE_float("seconds_per_slice", None, "Annotation seconds per slice; default: the run's config.cost.")
  flags.DEFINE_float("confidence", 0.95, "Coverage of the paired intervals.")
  flags.DEFINE_string("preamble", None, "A markdown file put before the summary (a study's protocol and commands).")
  flags.DEFINE_string("document", None, "Also write the summary, after the preamble, to this markdown file.")


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    out = run(f.workdir or [], f.out, seconds_per_volume=f.seconds_per_volume, seconds_per_slice=f.seconds_per_slice,
              confidence=f.confidence, preamble=f.preamble, document=f.document)
  except InputError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
  print(f"report written to {out}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
