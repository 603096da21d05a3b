"""The study report: result rows in; summary tables, paired comparisons and figures out.

Conventions:
- Rows are those of `slicejax.results` (schema and `results.jsonl` I/O live there). The report needs at least
  `dims`, `budget`, `volumes`, `selection`, `seed` and `dice_mean`, and `slices_per_volume` unless the row is the fully
  annotated reference (`reference: true`, `selection: "all"`); other fields are optional. Null values (undefined
  Dice) are left out of every mean.
- A *cell* is a grid point without its seed: the fields in `CELL_KEY`. Its statistics are over its seeds. When one
  (cell, seed) has several rows, the last one counts: a rerun of a model replaces its earlier result.
- Diverged models keep their rows (their Dice is what the run produced); cells count them in `n_diverged`.
- Paired comparisons report `a - b` of `dice_mean` over the seeds present in both cells, so a positive difference
  means `a` is better. The fully annotated reference is summarised but never compared.
- Every file written here is replaced atomically (`slicejax.files`), so a reader never sees half a file and a killed
  writer never leaves one.
"""

import csv
import io
import math
import os

from absl import logging
from matplotlib import figure as mpl_figure
from matplotlib import ticker
from matplotlib.backends import backend_agg
import numpy as np
from scipy import stats

from slicejax import files
from slicejax.errors import InputError

CELL_KEY = ("dims", "budget", "volumes", "slices_per_volume", "selection", "interpolation", "reference")
_REQUIRED = ("dims", "budget", "volumes", "selection", "seed", "dice_mean")
# Tables list the baseline first, then the study's other techniques; unknown names follow alphabetically.
_SELECTION_ORDER = ("random", "fixed", "ual", "all")
_PNG_DPI = 120


# ---------------------------------------------------------------------------------------------------------------------
# Cells and paired comparisons.
# ---------------------------------------------------------------------------------------------------------------------


def _cell_key(row) -> tuple:
  return (row["dims"], row["budget"], row["volumes"], row.get("slices_per_volume"), row["selection"],
          bool(row.get("interpolation", False)), bool(row.get("reference", False)))


def _sort_key(key) -> tuple:
  dims, budget, volumes, slices_per_volume, selection, interpolation, reference = key
  rank = _SELECTION_ORDER.index(selection) if selection in _SELECTION_ORDER else len(_SELECTION_ORDER)
  return (dims, reference, budget, slices_per_volume is None, slices_per_volume or 0, rank, selection,
          interpolation, volumes)


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


def _mean_per_class(rows) -> dict:
  classes = {}
  for row in rows:
    for name, dice in (row.get("dice_per_class") or {}).items():
      values = classes.setdefault(name, [])
      if dice is not None:
        values.append(dice)
  return {name: float(np.mean(values)) if values else None for name, values in classes.items()}


def summarise(rows) -> list[dict]:
  """Summarises rows into one cell per grid point, over seeds.

  Args:
    rows: result rows (see the module docstring).

  Returns:
    One dict per cell, holding the `CELL_KEY` fields and `n_seeds`, `seeds` (sorted), `dice_mean`, `dice_std`
    (ddof=1; 0 for a single seed), `dice_per_class` ({class: mean}), and the means over seeds of `density`,
    `train_seconds` and `interp_dice` (None where no row has the field), plus `n_diverged`. Sorted by dims, the
    reference last, then budget, slices per volume, selection and interpolation.

  Raises:
    InputError: a row lacks a required field.
  """
  cells = []
  for key, by_seed in sorted(_by_cell(rows).items(), key=lambda item: _sort_key(item[0])):
    seeds = sorted(by_seed)
    members = [by_seed[seed] for seed in seeds]
    dice = np.array([row["dice_mean"] for row in members], dtype=np.float64)
    cell = dict(zip(CELL_KEY, key))
    cell.update(
        n_seeds=len(members),
        seeds=seeds,
        dice_mean=float(dice.mean()),
        dice_std=float(dice.std(ddof=1)) if len(dice) > 1 else 0.0,
        dice_per_class=_mean_per_class(members),
        density=_mean_of(members, "density"),
        train_seconds=_mean_of(members, "train_seconds"),
        interp_dice=_mean_of(members, "interp_dice"),
        n_diverged=sum(bool(row.get("diverged", False)) for row in members))
    cells.append(cell)
  return cells


def _field(key, name):
  return key[CELL_KEY.index(name)]


def _groups(keys, fields) -> list[list[tuple]]:
  """Splits cell keys into groups that agree on `fields`; each group sorted like the tables."""
  groups = {}
  for key in sorted(keys, key=_sort_key):
    groups.setdefault(tuple(_field(key, name) for name in fields), []).append(key)
  return list(groups.values())


def _compare(kind, cells, a, b, confidence):
  """Paired difference a - b of dice_mean over the seeds both cells have; None when they share none."""
  seeds = sorted(set(cells[a]) & set(cells[b]))
  if not seeds:
    logging.info("no shared seeds for the %s comparison %s vs %s", kind, a, b)
    return None
  diffs = np.array([cells[a][seed]["dice_mean"] - cells[b][seed]["dice_mean"] for seed in seeds], dtype=np.float64)
  n = len(diffs)
  mean = float(diffs.mean())
  low = high = None
  if n > 1:
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * diffs.std(ddof=1) / math.sqrt(n))
    low, high = mean - half, mean + half
  return {
      "comparison": kind, "a": dict(zip(CELL_KEY, a)), "b": dict(zip(CELL_KEY, b)), "seeds": seeds, "n_pairs": n,
      "mean_diff": mean, "ci_low": low, "ci_high": high, "confidence": confidence}


def paired_comparisons(rows, confidence=0.95) -> list[dict]:
  """Compares cells that differ in one study variable, paired by seed.

  Three families, in this order:
  - "allocation": within one (dims, budget, selection, interpolation), every allocation against the one with the
    fewest slices per volume (the study found fewer slices over more volumes usually wins);
  - "selection": within one (dims, budget, allocation, interpolation), every selection method against "random";
  - "interpolation": within one (dims, budget, allocation, selection), interpolation on against off.

  Args:
    rows: result rows (see the module docstring); the reference rows are ignored.
    confidence: the coverage of the two-sided t-interval of the mean difference.

  Returns:
    One dict per comparison with at least one shared seed: `comparison` (the family), `a` and `b` (the cells'
    `CELL_KEY` fields), `seeds` (the shared seeds), `n_pairs`, `mean_diff` (mean of a - b), `ci_low`, `ci_high`
    (None for a single pair) and `confidence`.

  Raises:
    InputError: `confidence` is not strictly between 0 and 1, or a row lacks a required field.
  """
  if not 0 < confidence < 1:
    raise InputError("confidence", f"must lie strictly between 0 and 1, got {confidence}")
  cells = {key: by_seed for key, by_seed in _by_cell(rows).items() if not _field(key, "reference")}
  comparisons = []
  for group in _groups(cells, ("dims", "budget", "selection", "interpolation")):
    baseline = min(group, key=lambda key: _field(key, "slices_per_volume"))
    comparisons += [_compare("allocation", cells, key, baseline, confidence) for key in group if key != baseline]
  for group in _groups(cells, ("dims", "budget", "volumes", "slices_per_volume", "interpolation")):
    by_selection = {_field(key, "selection"): key for key in group}
    if "random" in by_selection:
      comparisons += [_compare("selection", cells, key, by_selection["random"], confidence)
                      for key in group if key != by_selection["random"]]
  for group in _groups(cells, ("dims", "budget", "volumes", "slices_per_volume", "selection")):
    by_interpolation = {_field(key, "interpolation"): key for key in group}
    if len(by_interpolation) == 2:
      comparisons.append(_compare("interpolation", cells, by_interpolation[True], by_interpolation[False], confidence))
  return [comparison for comparison in comparisons if comparison is not None]


# ---------------------------------------------------------------------------------------------------------------------
# The summary files.
# ---------------------------------------------------------------------------------------------------------------------


def write_summary(workdir, rows, confidence=0.95) -> None:
  """Writes the study summary of `rows` into `workdir`, each file replaced atomically.

  - `summary.md`: the cells as "mean ± std (n)", the fully annotated reference, the paired comparisons and one
    sentence per budget naming the best allocation; numbers to 3 decimals.
  - `summary.csv`: one line per cell with plain numbers (booleans as 0/1, missing values empty).
  - `dice_vs_allocation.png`: mean Dice against slices per volume (log2 axis), one panel per budget and dims, one line
    per selection method (dashed with interpolation), error bars the std over seeds, the reference dotted.

  Args:
    workdir: an existing folder.
    rows: result rows (see the module docstring).
    confidence: the coverage of the paired comparisons' t-intervals.
  """
  workdir = os.fspath(workdir)
  cells = summarise(rows)
  comparisons = paired_comparisons(rows, confidence)
  files.atomic_write(os.path.join(workdir, "summary.md"), _markdown(cells, comparisons, confidence))
  files.atomic_write(os.path.join(workdir, "summary.csv"), _csv(cells))
  files.atomic_write(os.path.join(workdir, "dice_vs_allocation.png"), _figure_png(cells))
  logging.info("wrote the summary of %d rows (%d cells) to %s", len(rows), len(cells), workdir)


def _fmt(value) -> str:
  return "—" if value is None else f"{value:.3f}"


def _classes(cells) -> list[str]:
  names = {}
  for cell in cells:
    names.update(dict.fromkeys(cell["dice_per_class"]))
  return list(names)


def _allocation(cell) -> str:
  slices = cell["slices_per_volume"]
  return f"{cell['volumes']} volumes × {slices} slice{'' if slices == 1 else 's'} per volume"


def _label(cell) -> str:
  """Short name of a cell in the comparisons table, e.g. "36×2 random, interp"."""
  interpolation = ", interp" if cell["interpolation"] else ""
  return f"{cell['volumes']}×{cell['slices_per_volume']} {cell['selection']}{interpolation}"


def _table(header, lines) -> list[str]:
  return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
          + ["| " + " | ".join(line) + " |" for line in lines])


def _cell_table(cells, classes) -> list[str]:
  header = ["dims", "budget", "volumes", "slices/volume", "density", "selection", "interpolation",
            "Dice mean ± std (n)"] + [f"Dice {name}" for name in classes] + ["interp Dice", "train s", "diverged"]
  lines = []
  for cell in cells:
    slices = "all" if cell["slices_per_volume"] is None else str(cell["slices_per_volume"])
    lines.append([
        f"{cell['dims']}D", str(cell["budget"]), str(cell["volumes"]), slices, _fmt(cell["density"]),
        cell["selection"], "on" if cell["interpolation"] else "off",
        f"{cell['dice_mean']:.3f} ± {cell['dice_std']:.3f} ({cell['n_seeds']})"]
        + [_fmt(cell["dice_per_class"].get(name)) for name in classes]
        + [_fmt(cell["interp_dice"]), _fmt(cell["train_seconds"]), str(cell["n_diverged"])])
  return _table(header, lines)


def _markdown(cells, comparisons, confidence) -> str:
  classes = _classes(cells)
  grid = [cell for cell in cells if not cell["reference"]]
  reference = [cell for cell in cells if cell["reference"]]
  out = ["# Study summary", ""]
  if not cells:
    return "\n".join(out + ["No results yet.", ""])
  out += ["Dice: mean ± std over seeds (number of seeds) of each model's mean test Dice.", "", "## Cells", ""]
  out += _cell_table(grid, classes) if grid else ["No sparse-annotation cells yet."]
  out += ["", "## Reference (every slice annotated)", ""]
  out += _cell_table(reference, classes) if reference else ["No reference run yet."]
  percent = f"{100 * confidence:g}%"
  out += ["", "## Paired comparisons", "",
          f"Δ Dice = mean over shared seeds of Dice(a) − Dice(b), with a {percent} t-interval (none for one pair).",
          ""]
  lines = []
  for comparison in comparisons:
    a, b = comparison["a"], comparison["b"]
    interval = ("—" if comparison["ci_low"] is None
                else f"[{comparison['ci_low']:.3f}, {comparison['ci_high']:.3f}]")
    lines.append([comparison["comparison"], f"{a['dims']}D", str(a["budget"]), _label(a), _label(b),
                  str(comparison["n_pairs"]), f"{comparison['mean_diff']:.3f}", interval])
  header = ["comparison", "dims", "budget", "a", "b", "pairs", "Δ Dice", f"{percent} CI"]
  out += _table(header, lines) if lines else ["No cells to compare yet."]
  out += ["", "## Best allocation per budget", ""]
  by_budget = {}
  for cell in grid:
    by_budget.setdefault((cell["dims"], cell["budget"]), []).append(cell)
  for (dims, budget), members in by_budget.items():
    # A NaN mean (a diverged model) must never be named best.
    best = max(members, key=lambda cell: -math.inf if math.isnan(cell["dice_mean"]) else cell["dice_mean"])
    out.append(
        f"- {dims}D, budget {budget}: the best allocation is {_allocation(best)}, {best['selection']} selection, "
        f"interpolation {'on' if best['interpolation'] else 'off'} "
        f"(Dice {best['dice_mean']:.3f} ± {best['dice_std']:.3f}, {best['n_seeds']} seeds).")
  return "\n".join(out + [""])


def _csv(cells) -> str:
  classes = _classes(cells)
  header = list(CELL_KEY) + ["n_seeds", "density", "dice_mean", "dice_std"] + [
      f"dice_{name}" for name in classes] + ["interp_dice", "train_seconds", "n_diverged"]
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(header)
  for cell in cells:
    values = [cell[name] for name in CELL_KEY] + [cell["n_seeds"], cell["density"], cell["dice_mean"],
                                                    cell["dice_std"]]
    values += [cell["dice_per_class"].get(name) for name in classes]
    values += [cell["interp_dice"], cell["train_seconds"], cell["n_diverged"]]
    # str(float) is the shortest repr that parses back to the same float.
    writer.writerow(["" if value is None else int(value) if isinstance(value, bool) else value for value in values])
  return buffer.getvalue()


def _figure_png(cells) -> bytes:
  grid = [cell for cell in cells if not cell["reference"]]
  all_dims = sorted({cell["dims"] for cell in grid})
  budgets = sorted({cell["budget"] for cell in grid})
  selections = []
  for cell in grid:
    if cell["selection"] not in selections:
      selections.append(cell["selection"])
  fig = mpl_figure.Figure(figsize=(4 * max(len(budgets), 1), 3.2 * max(len(all_dims), 1) + 0.6),
                          layout="constrained")
  backend_agg.FigureCanvasAgg(fig)
  if not grid:
    fig.text(0.5, 0.5, "no results yet", ha="center", va="center")
  else:
    axes = fig.subplots(len(all_dims), len(budgets), squeeze=False, sharey=True)
    for row, dims in enumerate(all_dims):
      references = [cell for cell in cells if cell["reference"] and cell["dims"] == dims]
      for column, budget in enumerate(budgets):
        _draw_panel(axes[row][column], [cell for cell in grid if cell["dims"] == dims and cell["budget"] == budget],
                    references, selections, f"{dims}D, budget {budget}", first_column=column == 0)
    legend = {}
    for ax in fig.axes:
      for handle, label in zip(*ax.get_legend_handles_labels()):
        legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(len(legend), 4))
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=_PNG_DPI)
  return buffer.getvalue()


def _draw_panel(ax, panel, references, selections, title, first_column) -> None:
  if not panel:
    ax.set_visible(False)
    return
  lines = {}
  for cell in panel:
    lines.setdefault((cell["selection"], cell["interpolation"]), []).append(cell)
  for (selection, interpolation), members in sorted(lines.items(), key=lambda item: (
      selections.index(item[0][0]), item[0][1])):
    members.sort(key=lambda cell: cell["slices_per_volume"])
    ax.errorbar([cell["slices_per_volume"] for cell in members], [cell["dice_mean"] for cell in members],
                yerr=[cell["dice_std"] for cell in members], color=f"C{selections.index(selection)}",
                linestyle="--" if interpolation else "-", marker="o", capsize=3,
                label=selection + (" + interpolation" if interpolation else ""))
  for reference in references:
    ax.axhline(reference["dice_mean"], color="black", linestyle=":", label="every slice annotated")
  ax.set_xscale("log", base=2)
  ticks = sorted({cell["slices_per_volume"] for cell in panel})
  ax.set_xticks(ticks, labels=[str(tick) for tick in ticks])
  ax.xaxis.set_minor_locator(ticker.NullLocator())
  ax.set_title(title)
  ax.set_xlabel("slices per volume")
  if first_column:
    ax.set_ylabel("Dice")
