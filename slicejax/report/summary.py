"""The study report: result rows of one or several runs in; summary, paired statistics, findings and figures out.

    python -m slicejax.report --workdir=runs/a [--workdir=runs/b ...] [--out=DIR]
        [--seconds_per_volume=60 --seconds_per_slice=20]

Conventions:
- Rows are those of `slicejax.report.results`. The report needs at least `dims`, `budget`, `volumes`, `selection`,
`seed`
  and `dice_mean`, and `slices_per_volume` unless the row is the fully annotated reference (`reference: true`,
  `selection: "all"`); other fields are optional. Null values (undefined Dice) are left out of every mean.
- A *cell* is a grid point without its seed: the fields in `CELL_KEY`. Its statistics are over its seeds. When one
  (cell, seed) has several rows, the last one counts: a rerun of a model replaces its earlier result.
- Diverged models keep their rows (their Dice is what the run produced); cells count them in `n_diverged`.
- Comparisons (`slicejax.report.statistics`) report a - b, paired by seed and test volume, so a positive difference
means a is
  better; the fully annotated reference is summarised but never compared.
- Several runs merge into one report only if they trained on the same data, split, network and training
  (`check_compatible`): a grid split over machines, or more seeds run later. Their union gives the same summary as
  one run of all their points.
- Annotation cost: a cell of s volumes x rho slices costs s x `seconds_per_volume` + s x rho x `seconds_per_slice`
  (config `cost`; the defaults 0 and 1 make the cost the slice budget), plus `seconds_per_kilopixel` per 1,000
  foreground pixels of the annotated slices (the rows' `annotated_foreground`, mean over seeds) when that is set;
  a free round allocation opens the volumes its rows record (`annotated_volumes`).
- Selection in rounds (`slicejax.training.rounds`): a round point's cell is named by its selection and schedule, e.g.
  "entropy r3" (3 rounds) or "entropy r3 free" (free allocation), and is compared with the one-shot selections of
  the same budget and allocation like any other selection, in a Holm family of its own ("selection, rounds").
- Every file written here is replaced atomically (`slicejax.files`).
"""

import csv
import io
import json
import math
import os
import pathlib

from absl import flags
from absl import logging
import numpy as np

from slicejax import console
from slicejax.errors import exit_with
from slicejax.errors import InputError
from slicejax.evaluation import metrics
from slicejax import files
from slicejax.report import figures
from slicejax.report import results
from slicejax.report import statistics as stats
from slicejax import workdir as workdir_lib

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


def _selection(row) -> str:
  """The selection of a row's cell: its `selection`, with the round schedule of a round point ("entropy r3 free")."""
  if row.get("rounds", 1) == 1:
    return row["selection"]
  return f"{row['selection']} r{row['rounds']}" + (" free" if row.get("free") else "")


def in_rounds(selection: str) -> bool:
  """Whether a cell's selection chose in rounds (`_selection`)."""
  return " r" in selection


def _cell_key(row) -> tuple:
  return (row["dims"], row["budget"], row["volumes"], row.get("slices_per_volume"), _selection(row),
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


def annotation_cost(volumes: int, slices: int, cost: dict, foreground: float | None = None) -> float:
  """Seconds to annotate `slices` slices spread over `volumes` volumes under a cost model (see the docstring), with
  `foreground` pixels painted in them when the model counts foreground (`seconds_per_kilopixel`)."""
  seconds = volumes * cost["seconds_per_volume"] + slices * cost["seconds_per_slice"]
  if cost.get("seconds_per_kilopixel") and foreground is not None:
    seconds += cost["seconds_per_kilopixel"] * foreground / 1000.0
  return seconds


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
    One dict per cell, holding the `CELL_KEY` fields and `n_seeds`, `seeds` (sorted), `dice_mean`, `dice_std`
    (over the seeds whose Dice is defined, ddof=1; NaN and None without such seeds), `undefined_seeds` (the seeds
    whose `dice_mean` is null: every class absent from every test volume, or a model without a finite result),
    `collapsed_seeds` (those scoring 0 on every class), `dice_per_class` ({class: mean}), the means over seeds of
    `hd95_mean`,
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
        dice_mean=float(dice.mean()) if dice.size else math.nan,
        dice_std=float(dice.std(ddof=1)) if len(dice) > 1 else None,
        undefined_seeds=undefined,
        collapsed_seeds=collapsed,
        steps=max((row.get("steps") or 0 for row in members), default=0) or None,
        dice_per_class=_mean_per_class(members),
        hd95_mean=_mean_of(members, "hd95_mean"),
        nsd_mean=_mean_of(members, "nsd_mean"),
        density=_mean_of(members, "density"),
        train_seconds=_mean_of(members, "train_seconds"),
        interp_dice=_mean_of(members, "interp_dice"),
        n_diverged=sum(bool(row.get("diverged", False)) for row in members),
        cost=annotation_cost(_mean_of(members, "annotated_volumes") or cell["volumes"], cell["budget"], cost,
                             _mean_of(members, "annotated_foreground")),
        test_volumes=test_volumes, absent=absent, curve_steps=steps, curve_dice=curve, still_improving=improving,
        rounds=max(row.get("rounds", 1) for row in members), annotated_volumes=_mean_of(members, "annotated_volumes"),
        **_round_history(members))
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


def _compare(family, cells, a, b, options):
  if not set(cells[a]) & set(cells[b]):
    logging.info("no shared seeds for the %s comparison %s vs %s", family, a, b)
    return None
  return {"comparison": family, "a": dict(zip(CELL_KEY, a)), "b": dict(zip(CELL_KEY, b)),
          **stats.compare(cells[a], cells[b], alpha=options["alpha"], margin=options["margin"])}


FAMILIES = ("allocation", "selection", "interpolation")


def holm_family(comparison) -> str:
  """The family a comparison's Holm adjustment runs in: exactly the comparisons one finding's verdict rests on.

  "allocation": random and fixed interval (finding 1's verdict), "allocation, ual" and other selections apart;
  "selection, ual": UAL against the others (finding 2), "selection, rounds": a selection in rounds against any
  other, "selection": the other pairs; "interpolation, 2D" (finding 3) and "interpolation, 3D".
  """
  kind, a, b = comparison["comparison"], comparison["a"], comparison["b"]
  if kind == "allocation":
    return kind if a["selection"] in ("random", "fixed") else f"allocation, {a['selection']}"
  if kind == "selection":
    if in_rounds(a["selection"]) or in_rounds(b["selection"]):
      return "selection, rounds"
    return "selection, ual" if "ual" in (a["selection"], b["selection"]) else kind
  return f"interpolation, {a['dims']}D"


def stats_options(options=None) -> dict:
  """The statistics options (`stats.DEFAULTS` updated with `options`, e.g. a run's `config.stats`), checked.

  Raises:
    InputError: a value out of its range.
  """
  o = dict(stats.DEFAULTS, **{k: v for k, v in (options or {}).items() if k in stats.DEFAULTS})
  checks = {"alpha": (0 < o["alpha"] < 0.5, "in (0, 0.5)"), "margin": (o["margin"] > 0, "> 0"),
            "min_seeds": (int(o["min_seeds"]) == o["min_seeds"] and o["min_seeds"] >= 2, "an integer >= 2"),
            "power": (0 < o["power"] < 1, "in (0, 1)"),
            "plateau_tolerance": (o["plateau_tolerance"] >= 0, ">= 0"),
            "max_improving_share": (0 <= o["max_improving_share"] <= 1, "in [0, 1]")}
  for key, (ok, want) in checks.items():
    if not ok:
      raise InputError(f"config.stats.{key}", f"must be {want}, got {o[key]}")
  return o


def paired_comparisons(rows, options=None) -> list[dict]:
  """The pre-specified comparisons of a study, paired by seed and test volume, with their family's adjustment.

  Families (fixed before any result is seen; `stats.rules_markdown`):
  - "allocation": within one (dims, budget, selection), without interpolation, the allocation with the fewest slices
    per volume as a against every other allocation as b;
  - "selection": within one (dims, budget, allocation, interpolation), every pair of selection methods, the later
    of `random`, `fixed`, `ual` as a (ual - random, ual - fixed, fixed - random);
  - "interpolation": within one (dims, budget, allocation, selection), interpolation on against off.
  Holm's adjustment runs within each comparison's `holm_family`, the comparisons one finding rests on
  (`stats.adjust_family`).

  Args:
    rows: result rows (see the module docstring); the reference rows are ignored.
    options: the statistics options (`stats_options`); None: the defaults.

  Returns:
    One dict per comparison with at least one shared seed: `comparison` (the family), `a` and `b` (the cells'
    `CELL_KEY` fields), the fields of `stats.compare`, `family` (`holm_family`), `p_adjusted`,
    `p_equivalence_adjusted`, `family_size` and `verdict`.

  Raises:
    InputError: an option out of range, or a row lacks a required field.
  """
  options = stats_options(options)
  cells = {key: by_seed for key, by_seed in _by_cell(rows).items() if not _field(key, "reference")}
  pairs = []
  for group in _groups(cells, ("dims", "budget", "selection", "interpolation")):
    if _field(group[0], "interpolation"):
      continue
    fewest = min(group, key=lambda key: _field(key, "slices_per_volume"))
    pairs += [("allocation", fewest, key) for key in group if key != fewest]
  for group in _groups(cells, ("dims", "budget", "volumes", "slices_per_volume", "interpolation")):
    ordered = sorted(group, key=_sort_key)
    pairs += [("selection", b, a) for i, a in enumerate(ordered) for b in ordered[i + 1:]]
  for group in _groups(cells, ("dims", "budget", "volumes", "slices_per_volume", "selection")):
    by_interpolation = {_field(key, "interpolation"): key for key in group}
    if len(by_interpolation) == 2:
      pairs.append(("interpolation", by_interpolation[True], by_interpolation[False]))
  comparisons = [c for c in (_compare(family, cells, a, b, options) for family, a, b in pairs) if c is not None]
  for c in comparisons:
    c["family"] = holm_family(c)
  for family in dict.fromkeys(c["family"] for c in comparisons):
    stats.adjust_family([c for c in comparisons if c["family"] == family], alpha=options["alpha"],
                        min_seeds=options["min_seeds"])
  return comparisons


def seeds_needed(comparisons, options=None, family_sizes=None) -> dict:
  """The a-priori seeds of each Holm family: 80% (`stats.power`) to detect a difference of the margin at the
  family's Bonferroni level alpha / m, from the family's pooled variability (`stats.pooled_variability`, its
  per-seed SD taken at the upper confidence limit), and never fewer than `min_seeds`.

  Args:
    comparisons: `paired_comparisons`' output (e.g. a pilot's).
    options: the statistics options.
    family_sizes: {family: m} of the grid being sized (e.g. `grid_family_sizes`); None: the comparisons' own. A
      family without comparisons of its own is sized from all of them pooled (`pooled_from` says so).

  Returns:
    {family: {`seeds_needed` (int, or None without two seeds or when unreachable), `unreachable` (no number of
    seeds up to `stats.MAX_SEEDS` is enough), `comparisons` (m), `alpha`, `pooled_from` ("family" or "all"), and
    `stats.pooled_variability`'s fields}}.
  """
  options = stats_options(options)
  families = {}
  for c in comparisons:
    families.setdefault(c.get("family") or holm_family(c), []).append(c)
  sizes = family_sizes if family_sizes is not None else {f: len(m) for f, m in families.items()}
  everything = stats.pooled_variability(comparisons)
  out = {}
  for family, m in sizes.items():
    pooled, source = stats.pooled_variability(families.get(family, [])), "family"
    if pooled is None:
      pooled, source = everything, "all"
    level = options["alpha"] / max(m, 1)
    needed = None if pooled is None else stats.seeds_needed(
        pooled["seed_sd_upper"], pooled["volume_var"], pooled["num_volumes"], options["margin"], level,
        options["power"], min_seeds=options["min_seeds"])
    out[family] = {"seeds_needed": None if needed == math.inf else needed, "unreachable": needed == math.inf,
                   "comparisons": m, "alpha": level, "pooled_from": source, **(pooled or {})}
  return out


def grid_family_sizes(points, options=None) -> dict:
  """{Holm family: comparisons} that a grid's points will make (`paired_comparisons` on one stand-in row per
  sparse point), for sizing its seeds before it runs."""
  rows = [{**p.fields(), "seed": 0, "dice_mean": 0.5} for p in points if not p.reference]
  sizes = {}
  for c in paired_comparisons(rows, options):
    sizes[c["family"]] = sizes.get(c["family"], 0) + 1
  return sizes


def trust_gate(cells, options=None) -> dict:
  """Whether the study's models were trained long enough for its verdicts to mean anything.

  Returns:
    dict of `undertrained` (bool), `reasons` (why; empty when not), `flags` (warnings that do not close the gate:
    a reference below the best sparse cell, no reference or no learning curves to check), `improving` and
    `with_curves` (sparse cells still improving, and with learning curves), `max_improving_share`.
  """
  options = stats_options(options)
  grid = [c for c in cells if not c["reference"]]
  references = [c for c in cells if c["reference"]]
  with_curves = [c for c in grid if c["still_improving"] is not None]
  improving = [c for c in with_curves if c["still_improving"]]
  reasons, flags_ = [], []
  for ref in references:
    if ref["still_improving"]:
      reasons.append(f"the {ref['dims']}D fully annotated reference is still improving (validation Dice rose by more "
                     f"than {options['plateau_tolerance']:g} over its last learning-curve interval)")
    best = max((c for c in grid if c["dims"] == ref["dims"] and not math.isnan(c["dice_mean"])),
               key=lambda c: c["dice_mean"], default=None)
    if best is not None and not math.isnan(ref["dice_mean"]) and ref["dice_mean"] < best["dice_mean"]:
      flags_.append(f"the {ref['dims']}D reference ({ref['dice_mean']:.3f}) scores below the best sparse cell "
                    f"({_label(best)}, budget {best['budget']}: {best['dice_mean']:.3f})")
    if ref["still_improving"] is None:
      flags_.append(f"the {ref['dims']}D reference has no learning curve: its convergence is not checked")
  if grid and not references:
    flags_.append("no fully annotated reference: the training recipe's convergence is not checked")
  if with_curves and len(improving) > options["max_improving_share"] * len(with_curves):
    reasons.append(f"{len(improving)} of {len(with_curves)} cells are still improving (more than "
                   f"{100 * options['max_improving_share']:g}%)")
  if grid and len(with_curves) < len(grid):
    flags_.append(f"{len(grid) - len(with_curves)} of {len(grid)} cells have no learning curve to check")
  return {"undertrained": bool(reasons), "reasons": reasons, "flags": flags_, "improving": len(improving),
          "with_curves": len(with_curves), "max_improving_share": options["max_improving_share"]}


def _tally(comparisons) -> dict:
  counts = dict.fromkeys(stats.VERDICTS, 0)
  for comparison in comparisons:
    counts[comparison["verdict"]] += 1
  return counts


def _evidence(comparison) -> dict:
  a, b = comparison["a"], comparison["b"]
  return {"dims": a["dims"], "budget": a["budget"], "a": _label(a), "b": _label(b),
          **{k: comparison[k] for k in ("mean_diff", "ci_low", "ci_high", "p_value", "p_adjusted",
                                         "p_equivalence_adjusted", "verdict", "n_pairs")}}


def _direction_verdict(comparisons) -> str:
  """Finding 1's rule on "a (the fewest slices per volume) is better than b" (`stats.rules_markdown`)."""
  counts = _tally(comparisons)
  if not comparisons:
    return "not tested"
  if counts[stats.UNDERPOWERED] == len(comparisons):
    return "inconclusive: underpowered"
  if counts[stats.BETTER] and counts[stats.WORSE]:
    return "mixed"
  if counts[stats.BETTER] > len(comparisons) / 2:
    return "reproduced"
  if counts[stats.WORSE] > len(comparisons) / 2:
    return "reversed"
  if counts[stats.EQUIVALENT] == len(comparisons):
    return "not reproduced: equivalent"
  return "inconclusive"


def _not_better_verdict(comparisons) -> str:
  """Findings 2 and 3's rule on "a is not better than b" (`stats.rules_markdown`): support comes only from
  comparisons resolved as worse or equivalent, never from an unresolved difference."""
  counts = _tally(comparisons)
  if not comparisons:
    return "not tested"
  if counts[stats.UNDERPOWERED] == len(comparisons):
    return "inconclusive: underpowered"
  # A difference resolved as better but inside the margin (its equivalence test rejects too) is no evidence against
  # "not better" by more than the margin: it counts as support.
  within = sum(c["verdict"] == stats.BETTER and (c.get("p_equivalence_adjusted") or 1.0) < c["alpha"]
               for c in comparisons)
  better, support = counts[stats.BETTER] - within, counts[stats.WORSE] + counts[stats.EQUIVALENT] + within
  if not better and support > len(comparisons) / 2:
    return "reproduced"
  if better > support:
    return "not reproduced"
  if better and support:
    return "mixed"
  return "inconclusive"


def findings(comparisons, cells, options=None) -> list[dict]:
  """The three findings of the paper, each checked on this study's pre-specified comparisons.

  The rules are `stats.rules_markdown`'s. Finding 1 uses the "allocation" family: its verdict comes from the random
  and fixed-interval comparisons, and each selection method (UAL too) gets its own in `by_selection`. Finding 2
  uses the "selection" comparisons of UAL, oriented ual - other. Finding 3 uses the 2D "interpolation" comparisons;
  the 3D ones are listed by density. When the trust gate (`trust_gate`) is closed, every verdict is
  "inconclusive: undertrained" and `verdict_without_gate` keeps what the comparisons say.

  Returns:
    One dict per finding: `finding` (1-3), `claim`, `verdict`, `verdict_without_gate`, `counts` ({verdict word:
    comparisons}), `evidence` (the comparisons) and, for finding 1, `best` (the highest mean per dims and budget,
    descriptive) and `by_selection` ({selection: {verdict, counts}}).
  """
  gate = trust_gate(cells, options)

  def result(number, claim, verdict, chosen, **extra):
    return {"finding": number, "claim": claim,
            "verdict": "inconclusive: undertrained" if gate["undertrained"] else verdict,
            "verdict_without_gate": verdict, "counts": _tally(chosen), "evidence": [_evidence(c) for c in chosen],
            **extra}

  out = []
  allocation = [c for c in comparisons if c["comparison"] == "allocation"]
  by_selection = {}
  for c in allocation:
    by_selection.setdefault(c["a"]["selection"], []).append(c)
  one_shot = [c for c in allocation if c["a"]["selection"] in ("random", "fixed")]
  best = {}
  for cell in cells:
    if not cell["reference"] and not cell["interpolation"] and not math.isnan(cell["dice_mean"]):
      key = f"{cell['dims']}D budget {cell['budget']}"
      if key not in best or cell["dice_mean"] > best[key]["dice_mean"]:
        best[key] = {"allocation": _label(cell), "slices_per_volume": cell["slices_per_volume"],
                     "dice_mean": cell["dice_mean"]}
  out.append(result(1, "At a fixed budget, fewer slices per volume over more volumes is better.",
                    _direction_verdict(one_shot), one_shot, best=best,
                    by_selection={k: {"verdict": _direction_verdict(v), "counts": _tally(v)}
                                  for k, v in by_selection.items()}))

  ual = [c for c in comparisons if c["comparison"] == "selection" and holm_family(c) == "selection, ual"]
  oriented = [c if c["a"]["selection"] == "ual" else stats.flip(c) for c in ual]
  out.append(result(2, "UAL is not better than random or fixed-interval selection at equal slices per volume.",
                    _not_better_verdict(oriented), oriented))

  interpolation = [c for c in comparisons if c["comparison"] == "interpolation"]
  two_d = [c for c in interpolation if c["a"]["dims"] == 2]
  verdict = "not tested in 2D" if interpolation and not two_d else _not_better_verdict(two_d)
  three_d = sorted((c for c in interpolation if c["a"]["dims"] == 3),
                   key=lambda c: (c["a"]["budget"], c["a"]["slices_per_volume"]))
  out.append(result(3, "Mask interpolation rarely helps, except some low-density 3D settings.", verdict, two_d,
                    three_d=[_evidence(c) for c in three_d], three_d_counts=_tally(three_d)))
  return out


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


# Keys of the training length: they may differ between runs whose rows share no (dims, budget), since cells are
# compared only at equal budget (a study may train each budget to its own plateau).
SCHEDULE_KEYS = ("train.steps", "train.warmup_steps", "train.checkpoint_every", "train.log_every", "eval.curve_points")


def check_compatible(configs: dict, dims: dict | None = None, budgets: dict | None = None) -> None:
  """Refuses to merge runs that differ in data, split, network or training.

  Args:
    configs: {path of config.json: its config dict}, in the order given.
    dims: {the same paths: the set of dims its rows hold}; the 2D network (`model`) is compared only between runs
      that both hold 2D rows, the 3D one (`three_d`) between runs that both hold 3D rows. None: both always.
    budgets: {the same paths: the set of (dims, budget, reference) its rows hold}; runs whose sets are disjoint may
      differ in `SCHEDULE_KEYS`. None: they may not.

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
      disjoint = budgets is not None and not budgets[path] & budgets[first_path]
      for key in sorted(reference.keys() | view.keys()):
        if reference.get(key) != view.get(key) and not (disjoint and key in SCHEDULE_KEYS):
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
  configs, rows, dims, budgets = {}, [], {}, {}
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
    budgets[str(path)] = {(row.get("dims"), row.get("budget"), bool(row.get("reference"))) for row in run_rows}
    rows += run_rows
  check_compatible(configs, dims, budgets)
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


def write_summary(workdir, rows, options=None, *, cost=None, preamble: str = "", document=None) -> None:
  """Writes the study report of `rows` into `workdir`, each file replaced atomically.

  - `summary.md`: the rules (`stats.rules_markdown`), the trust gate, the findings, the cells (mean ± std over
    seeds, surface metrics, flags), the reference, the pre-specified comparisons with intervals, raw and adjusted
    p-values and verdicts, the seeds each family needs, the best cell per budget and the annotation cost view.
  - `summary.csv`: one line per cell with plain numbers (booleans as 0/1, missing values empty).
  - `findings.json`: `findings`, `trust_gate`, `seeds_needed`, `comparisons`, `options` and `cost`.
  - figures (`slicejax.report.figures`): `dice_vs_allocation.png`, `dice_vs_budget.png`, `forest.png`,
    `dice_per_class.png`, `dice_vs_cost.png`, `learning_curves.png`.

  Args:
    workdir: an existing folder.
    rows: result rows (see the module docstring).
    options: the statistics options (`stats_options`); None: the defaults.
    cost: the annotation cost model; None: `DEFAULT_COST`.
    preamble: markdown put before the summary (e.g. a study's protocol and commands).
    document: also write the summary (with its preamble) to this markdown file, its figure links relative to it.
  """
  workdir = os.fspath(workdir)
  options = stats_options(options)
  cost = dict(DEFAULT_COST if cost is None else cost)
  cells = summarise(rows, cost, options["plateau_tolerance"])
  comparisons = paired_comparisons(rows, options)
  found = findings(comparisons, cells, options)
  gate = trust_gate(cells, options)
  needed = seeds_needed(comparisons, options)
  frontier = cost_frontier(cells)
  text = _markdown(cells, comparisons, found, gate, needed, frontier, cost, options, compute_used(rows))
  pngs = figures.all_figures(cells, comparisons, cost)
  files.atomic_write(os.path.join(workdir, "summary.md"), preamble + text + _figure_links(pngs, ""))
  if document is not None:
    prefix = os.path.relpath(workdir, os.path.dirname(os.path.abspath(document)) or ".")
    files.atomic_write(document, preamble + text + _figure_links(pngs, prefix + "/"))
  files.atomic_write(os.path.join(workdir, "summary.csv"), _csv(cells))
  files.atomic_write(os.path.join(workdir, "findings.json"), json.dumps(
      {"findings": found, "trust_gate": gate, "seeds_needed": needed, "comparisons": comparisons,
       "options": options, "cost": cost}, indent=1, default=_json_value) + "\n")
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
  left_out = cell.get("undefined_seeds") or []
  note = f", {len(left_out)} left out: Dice undefined" if left_out else ""
  if math.isnan(cell["dice_mean"]):
    return f"— ({cell['n_seeds']}{note})"
  if cell["dice_std"] is None:
    return f"{cell['dice_mean']:.3f} (1 seed: no spread{note})"
  return f"{cell['dice_mean']:.3f} ± {cell['dice_std']:.3f} ({cell['n_seeds'] - len(left_out)}{note})"


def _flags(cell) -> str:
  flags_ = []
  if cell["absent"]:
    flags_.append("absent: " + ", ".join(f"{name} in {n}/{cell['test_volumes']}" for name, n in cell["absent"].items()))
  if cell["still_improving"]:
    flags_.append("still improving")
  if cell.get("collapsed_seeds"):
    flags_.append(f"collapsed: seed{'s' if len(cell['collapsed_seeds']) > 1 else ''} "
                  f"{', '.join(map(str, cell['collapsed_seeds']))} of {cell['n_seeds']} "
                  f"score{'' if len(cell['collapsed_seeds']) > 1 else 's'} 0 on every class")
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


def _interval(low, high) -> str:
  return "—" if low is None else f"[{low:+.3f}, {high:+.3f}]"


def _p(value) -> str:
  return "—" if value is None else "< 0.001" if value < 0.001 else f"{value:.3f}"


def _comparison_table(comparisons, options) -> list[str]:
  percent, percent90 = f"{100 * (1 - options['alpha']):g}%", f"{100 * (1 - 2 * options['alpha']):g}%"
  header = ["family", "dims", "budget", "a", "b", "seeds", "volumes", "Δ Dice", f"{percent} CI", f"{percent90} CI",
            "p", "p Holm", "p equiv. Holm", "verdict", "Δ NSD", "Δ HD95 mm"]
  lines = []
  for c in comparisons:
    lines.append([c["comparison"], f"{c['a']['dims']}D", str(c["a"]["budget"]), _label(c["a"]), _label(c["b"]),
                  str(c["n_pairs"]), str(c["n_volumes"]), "—" if math.isnan(c["mean_diff"]) else f"{c['mean_diff']:+.3f}", _interval(c["ci_low"], c["ci_high"]),
                  _interval(c["ci90_low"], c["ci90_high"]), _p(c["p_value"]), _p(c["p_adjusted"]),
                  _p(c["p_equivalence_adjusted"]), c["verdict"],
                  "—" if c["nsd_diff"] is None else f"{c['nsd_diff']:+.3f}",
                  "—" if c["hd95_diff"] is None else f"{c['hd95_diff']:+.2f}"])
  return _table(header, lines)


def _counts_text(counts) -> str:
  words = [f"{n} {word}" for word, n in counts.items() if n]
  return ", ".join(words) if words else "no comparison"


def seeds_text(entry) -> str:
  if entry["unreachable"]:
    return f"more than {stats.MAX_SEEDS} (the test volumes' own variance is too large for the margin)"
  return "—" if entry["seeds_needed"] is None else str(entry["seeds_needed"])


def trust_markdown(gate) -> list[str]:
  """The "Trust gate" section: whether the verdicts can be read as answers, and why not."""
  out = ["## Trust gate", ""]
  if gate["undertrained"]:
    reasons = "; ".join(gate["reasons"])
    out.append("**Closed: every finding is `inconclusive: undertrained`.** " + reasons[0].upper() + reasons[1:] + ".")
  else:
    out.append(f"Open: {gate['improving']} of {gate['with_curves']} cells with learning curves are still improving "
               f"(at most {100 * gate['max_improving_share']:g}% allowed)"
               + (", and the fully annotated reference has reached its plateau." if not any(
                   "reference" in f for f in gate["flags"]) else "."))
  out += [f"- Flag: {flag}." for flag in gate["flags"]]
  return out + [""]


def findings_markdown(found, needed=None) -> list[str]:
  """The "Findings" section: one paragraph per finding with its verdict and evidence."""
  out = ["## Findings", "",
         "The paper's three findings, checked on this dataset with the pre-specified comparisons below (rules above).",
         ""]
  for finding in found:
    gated = finding["verdict"] != finding["verdict_without_gate"]
    out.append(f"**{finding['finding']}. {finding['claim']}** Verdict: **{finding['verdict']}**"
               + (f" (the comparisons alone would say: {finding['verdict_without_gate']})" if gated else "") + ".")
    if finding["finding"] == 1:
      out.append(f"The fewest-slices allocation against each other allocation at the same budget, random and fixed "
                 f"interval: {_counts_text(finding['counts'])}. By selection: " + "; ".join(
                     f"{name}: {entry['verdict']} ({_counts_text(entry['counts'])})"
                     for name, entry in finding["by_selection"].items()) + ". Highest mean (descriptive, not a test): "
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
  if needed:
    out += ["Seeds needed a priori (80% power to detect the margin at the family's Bonferroni level, from this "
            "study's pooled variability):", ""]
    out += _table(["family", "comparisons", "level", "per-seed SD of Δ", "its 80% upper limit", "volume component",
                   "seeds needed"],
                  [[family, str(e["comparisons"]), f"{e['alpha']:.2g}", _fmt(e.get("seed_sd"), 4),
                    _fmt(e.get("seed_sd_upper"), 4), _fmt(e.get("volume_var"), 5), seeds_text(e)]
                   for family, e in needed.items()])
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


def _markdown(cells, comparisons, found, gate, needed, frontier, cost, options, compute) -> str:
  classes = _classes(cells)
  grid = [cell for cell in cells if not cell["reference"]]
  reference = [cell for cell in cells if cell["reference"]]
  out = ["# Study summary", "", stats.rules_markdown(options)]
  if not cells:
    return "\n".join(out + ["No results yet.", ""])
  seeds = sorted({cell["n_seeds"] for cell in grid})
  if seeds and seeds[-1] < options["min_seeds"]:
    out += [f"Every cell has fewer than {options['min_seeds']} seeds: no verdict can be given; run more seeds "
            "(`study.seeds`).", ""]
  lengths = {}
  for cell in cells:
    if cell.get("steps"):
      lengths.setdefault(cell["steps"], []).append("reference" if cell["reference"] else f"{cell['budget']}")
  if len(lengths) > 1:
    out += ["Training length differs between budgets (cells are compared only at equal budget): " + "; ".join(
        f"{steps} steps: {', '.join(dict.fromkeys(names))}" for steps, names in sorted(lengths.items())) + ".", ""]
  out += trust_markdown(gate)
  if comparisons:
    out += findings_markdown(found, needed)
  else:
    out += ["## Findings", "", "No pre-specified comparison in this run (it needs cells that differ in one study "
            "variable at equal budget): the paper's findings are not checked.", ""]
  out += ["## Cells", "",
          "Dice: mean ± std over seeds (number of seeds) of each model's mean test Dice; HD95 and NSD (normalised "
          "surface Dice) likewise, means over seeds. Cost: annotation seconds under the cost model below. Flags: "
          "`absent` (a class missing from some test volumes' truth: its Dice averages over fewer volumes), `still "
          f"improving` (mean validation Dice rose by more than {options['plateau_tolerance']:g} over the last "
          "learning-curve interval: more steps may change the answer). A dash for HD95 or NSD: not computed "
          "(`eval.surface_metrics` off) or undefined (a class absent from both the truth and the prediction of every "
          "test volume).", ""]
  out += _cell_table(grid, classes) if grid else ["No sparse-annotation cells yet."]
  out += ["", "## Reference (every slice annotated)", ""]
  out += _cell_table(reference, classes) if reference else ["No reference run yet."]
  out += ["", "## Paired comparisons", "",
          "Δ = mean of a − b over shared seeds and test volumes (per-volume Dice); intervals from the crossed seed × "
          "test-volume model; p of Δ = 0 and of the equivalence test, raw and Holm-adjusted within the family "
          "(rules above).", ""]
  out += _comparison_table(comparisons, options) if comparisons else ["No cells to compare yet."]
  out += ["", "## Highest mean per budget", "",
          "Descriptive: the cell with the highest mean Dice; whether it is better than the others is what the "
          "comparisons above say.", ""]
  by_budget = {}
  for cell in grid:
    by_budget.setdefault((cell["dims"], cell["budget"]), []).append(cell)
  for (dims, budget), members in by_budget.items():
    best = max(members, key=lambda cell: -math.inf if math.isnan(cell["dice_mean"]) else cell["dice_mean"])
    out.append(
        f"- {dims}D, budget {budget}: the highest mean is {_allocation(best)}, {best['selection']} selection, "
        f"interpolation {'on' if best['interpolation'] else 'off'} (Dice {_spread(best)}).")
  in_round = [cell for cell in grid if cell.get("round_slices")]
  if in_round:
    out += ["", "## Rounds", "",
            "Selection in rounds: the slices annotated after each round and the mean validation Dice over seeds of "
            "the models trained on them; the last round's models are the cell's. Their comparisons with the one-shot "
            "selections at the same budget and allocation are the family \"selection, rounds\" above.", ""]
    out += _table(["dims", "budget", "cell", "slices per round", "validation Dice per round", "volumes annotated",
                   "test Dice"],
                  [[f"{c['dims']}D", str(c["budget"]), _label(c), " → ".join(map(str, c["round_slices"])),
                    " → ".join(_fmt(d) for d in c["round_val_dice"]), _fmt(c["annotated_volumes"], 1),
                    _spread(c)] for c in in_round])
  out += ["", "## Annotation cost", "",
          f"Cost model: {cost['seconds_per_volume']:g} s per volume opened + {cost['seconds_per_slice']:g} s per "
          "slice" + (f" + {cost['seconds_per_kilopixel']:g} s per 1,000 foreground pixels of the annotated slices"
                     if cost.get("seconds_per_kilopixel") else "")
          + " (`python -m slicejax.report --seconds_per_volume=... --seconds_per_slice=..."
          + (" --seconds_per_kilopixel=..." if cost.get("seconds_per_kilopixel") else "")
          + "` recomputes this view with a team's own timings). The best cell at each cost level (cells that beat "
          "every cheaper one):", ""]
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

def run(workdirs, out=None, *, seconds_per_volume=None, seconds_per_slice=None, seconds_per_kilopixel=None,
        preamble=None, document=None, **options) -> pathlib.Path:
  """Regenerates the report of one or several runs into `out` (default: the only workdir); returns `out`."""
  if not workdirs:
    raise InputError("--workdir", "give at least one run folder")
  if out is None and len(workdirs) > 1:
    raise InputError("--out", "several --workdir merge into one report: say where it goes")
  rows, config = read_runs(workdirs)
  cost = dict(DEFAULT_COST, **(config.get("cost") or {}))
  options = stats_options({**(config.get("stats") or {}), **{k: v for k, v in options.items() if v is not None}})
  for key, value in (("seconds_per_volume", seconds_per_volume), ("seconds_per_slice", seconds_per_slice),
                     ("seconds_per_kilopixel", seconds_per_kilopixel)):
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
  write_summary(out, rows, options, cost=cost, preamble=text, document=document)
  return out


def define_flags() -> None:
  # Defined only when the report runs as a program: launch.py, which imports this module, has its own --workdir.
  flags.DEFINE_multi_string("workdir", None, "Run folder (config.json, results.jsonl); repeat to merge.")
  flags.DEFINE_string("out", None, "Where to write the report; default: the only --workdir.")
  flags.DEFINE_float("seconds_per_volume", None, "Annotation seconds per volume opened; default: the run's "
                     "config.cost.")
  flags.DEFINE_float("seconds_per_slice", None, "Annotation seconds per slice; default: the run's config.cost.")
  flags.DEFINE_float("seconds_per_kilopixel", None, "Annotation seconds per 1,000 foreground pixels of the annotated "
                     "slices; default: the run's config.cost.")
  flags.DEFINE_float("alpha", None, "Test level (intervals cover 1 - alpha); default: the run's config.stats.")
  flags.DEFINE_float("margin", None, "Equivalence margin in Dice; default: the run's config.stats.")
  flags.DEFINE_integer("min_seeds", None, "Fewest shared seeds for a verdict; default: the run's config.stats.")
  flags.DEFINE_string("preamble", None, "A markdown file put before the summary (a study's protocol and commands).")
  flags.DEFINE_string("document", None, "Also write the summary, after the preamble, to this markdown file.")


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    out = run(f.workdir or [], f.out, seconds_per_volume=f.seconds_per_volume, seconds_per_slice=f.seconds_per_slice,
              seconds_per_kilopixel=f.seconds_per_kilopixel, preamble=f.preamble, document=f.document, alpha=f.alpha, margin=f.margin, min_seeds=f.min_seeds)
  except InputError as err:
    exit_with(err)
  print(f"report written to {out}")
