"""The report's figures, drawn from summarised cells (`cells.summarise`) and paired comparisons, as PNG bytes.

Every figure labels every panel (dims and budget, or class) and both axes; slices per volume and budgets are drawn on
log2 axes; error bars are the std over seeds, intervals the paired t-intervals of slicejax.report.statistics.
"""

import io
import time

from matplotlib import figure as mpl_figure
from matplotlib import ticker
from matplotlib.backends import backend_agg
import numpy as np

from slicejax.report import cells as cells_lib
from slicejax.report import statistics as stats

_PNG_DPI = 120


FIGURES = ("dice_vs_allocation.png", "dice_vs_budget.png", "forest.png", "dice_per_class.png", "dice_vs_cost.png",
           "learning_curves.png")


def all_figures(cells, comparisons, cost, left_out=()) -> dict:
  """{file name: PNG bytes} of every figure of the report (`left_out`: the cell keys the cost frontier leaves out,
  `cells.cost_frontier`)."""
  return dict(zip(FIGURES, (dice_vs_allocation(cells), dice_vs_budget(cells), forest(comparisons),
                            dice_per_class(cells), dice_vs_cost(cells, cost, left_out), learning_curves(cells))))


def seconds_per_figure() -> float:
  """Measured seconds to draw one two-panel figure and encode it (how `--check` prices the report)."""
  start = time.perf_counter()
  fig = _new(8, 3)
  for axes in fig.subplots(1, 2):
    axes.errorbar(np.arange(8), np.linspace(0.2, 0.9, 8), yerr=0.05, marker="o", label="a")
    axes.set_xscale("log", base=2)
    axes.legend()
  _png(fig)
  return time.perf_counter() - start


def _new(width, height):
  fig = mpl_figure.Figure(figsize=(width, height), layout="constrained")
  backend_agg.FigureCanvasAgg(fig)
  return fig


def _png(fig) -> bytes:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=_PNG_DPI)
  return buffer.getvalue()


def _empty(text) -> bytes:
  fig = _new(5, 3)
  fig.text(0.5, 0.5, text, ha="center", va="center")
  return _png(fig)


def _selections(grid) -> list:
  out = []
  for cell in grid:
    if cell["selection"] not in out:
      out.append(cell["selection"])
  return out


def _legend(fig) -> None:
  legend = {}
  for ax in fig.axes:
    for handle, label in zip(*ax.get_legend_handles_labels()):
      legend.setdefault(label, handle)
  if legend:
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(len(legend), 4))


def _log2_ticks(ax, values) -> None:
  ax.set_xscale("log", base=2)
  ticks = sorted(set(values))
  ax.set_xticks(ticks, labels=[str(tick) for tick in ticks])
  ax.xaxis.set_minor_locator(ticker.NullLocator())


def _std(cell):
  return cell["dice_std"] or 0.0


def _panels(cells, value, ylabel, title_suffix="") -> bytes:
  """Dice (or `value(cell)`) against slices per volume: one panel per dims and budget, a line per selection."""
  grid = [cell for cell in cells if not cell["reference"]]
  if not grid:
    return _empty("no results yet")
  all_dims = sorted({cell["dims"] for cell in grid})
  budgets = sorted({cell["budget"] for cell in grid})
  selections = _selections(grid)
  fig = _new(4 * len(budgets), 3.2 * len(all_dims) + 0.6)
  # Not shared: a row whose first panels are empty (3D at fewer budgets) keeps its tick labels; one range for all.
  axes = fig.subplots(len(all_dims), len(budgets), squeeze=False)
  shown = []
  for row, dims in enumerate(all_dims):
    references = [cell for cell in cells if cell["reference"] and cell["dims"] == dims]
    for column, budget in enumerate(budgets):
      ax = axes[row][column]
      panel = [cell for cell in grid if cell["dims"] == dims and cell["budget"] == budget]
      if not panel:
        ax.set_visible(False)
        continue
      shown.append(ax)
      lines = {}
      for cell in panel:
        lines.setdefault((cell["selection"], cell["interpolation"]), []).append(cell)
      for (selection, interpolation), members in sorted(lines.items(), key=lambda item: (
          selections.index(item[0][0]), item[0][1])):
        members.sort(key=lambda cell: cell["slices_per_volume"])
        ys = [value(cell) for cell in members]
        ax.errorbar([cell["slices_per_volume"] for cell in members], [np.nan if y is None else y for y in ys],
                    yerr=[_std(cell) for cell in members] if value is _dice else None,
                    color=f"C{selections.index(selection)}", linestyle="--" if interpolation else "-", marker="o",
                    capsize=3, label=selection + (" + interpolation" if interpolation else ""))
      for reference in references:
        y = value(reference)
        if y is not None:
          ax.axhline(y, color="black", linestyle=":", label="every slice annotated")
      _log2_ticks(ax, [cell["slices_per_volume"] for cell in panel])
      ax.set_title(f"{dims}D, budget {budget}{title_suffix}")
      ax.set_xlabel("slices per volume (volumes = budget / slices)")
      if len([a for a in shown if a in axes[row]]) == 1:  # the row's first panel that is drawn
        ax.set_ylabel(ylabel)
  lows, highs = zip(*(ax.get_ylim() for ax in shown))
  for ax in shown:
    ax.set_ylim(min(lows), max(highs))
  _legend(fig)
  return _png(fig)


def _dice(cell):
  return cell["dice_mean"]


def dice_vs_allocation(cells) -> bytes:
  """Mean Dice against slices per volume, one panel per dims and budget, the reference dotted."""
  return _panels(cells, _dice, "Dice (mean ± std over seeds)")


def dice_per_class(cells) -> bytes:
  """Per-class panels: one row of `dice_vs_allocation` panels per class."""
  grid = [cell for cell in cells if not cell["reference"]]
  classes = []
  for cell in cells:
    classes += [name for name in cell["dice_per_class"] if name not in classes]
  if not grid or not classes:
    return _empty("no results yet")
  keys = sorted({(cell["dims"], cell["budget"]) for cell in grid})
  selections = _selections(grid)
  fig = _new(4 * len(keys), 3.0 * len(classes) + 0.6)
  axes = fig.subplots(len(classes), len(keys), squeeze=False, sharey="row")
  for row, name in enumerate(classes):
    for column, (dims, budget) in enumerate(keys):
      ax = axes[row][column]
      panel = [cell for cell in grid if (cell["dims"], cell["budget"]) == (dims, budget)]
      for selection in selections:
        for interpolation in (False, True):
          members = sorted((c for c in panel if c["selection"] == selection and c["interpolation"] == interpolation),
                           key=lambda c: c["slices_per_volume"])
          if members:
            ys = [c["dice_per_class"].get(name) for c in members]
            ax.plot([c["slices_per_volume"] for c in members], [np.nan if y is None else y for y in ys],
                    color=f"C{selections.index(selection)}", linestyle="--" if interpolation else "-", marker="o",
                    label=selection + (" + interpolation" if interpolation else ""))
      _log2_ticks(ax, [cell["slices_per_volume"] for cell in panel])
      absent = max((c["absent"].get(name, 0) for c in panel), default=0)
      volumes = max((c["test_volumes"] for c in panel), default=0)
      note = ("" if not absent else "\nabsent from every test volume: no Dice" if absent == volumes
              else f"\nover the {volumes - absent} of {volumes} test volumes holding it")
      ax.set_title(f"{name}: {dims}D, budget {budget}{note}", fontsize="medium")
      ax.set_xlabel("slices per volume")
      if column == 0:
        ax.set_ylabel(f"Dice {name}")
  _legend(fig)
  return _png(fig)


def dice_vs_budget(cells) -> bytes:
  """Mean Dice against budget, one line per allocation rule (slices per volume), one panel per dims and
  selection (interpolation off)."""
  grid = [cell for cell in cells if not cell["reference"] and not cell["interpolation"]]
  if not grid:
    return _empty("no results yet")
  keys = []
  for cell in grid:
    if (cell["dims"], cell["selection"]) not in keys:
      keys.append((cell["dims"], cell["selection"]))
  keys.sort()
  rules = sorted({cell["slices_per_volume"] for cell in grid})
  fig = _new(4 * len(keys), 3.4)
  axes = fig.subplots(1, len(keys), squeeze=False, sharey=True)[0]
  for ax, (dims, selection) in zip(axes, keys):
    panel = [cell for cell in grid if (cell["dims"], cell["selection"]) == (dims, selection)]
    for i, rho in enumerate(rules):
      members = sorted((c for c in panel if c["slices_per_volume"] == rho), key=lambda c: c["budget"])
      if members:
        ax.errorbar([c["budget"] for c in members], [c["dice_mean"] for c in members],
                    yerr=[_std(c) for c in members], marker="o", capsize=3, color=f"C{i}",
                    label=f"{rho} slice{'' if rho == 1 else 's'} per volume")
    for reference in (c for c in cells if c["reference"] and c["dims"] == dims):
      ax.axhline(reference["dice_mean"], color="black", linestyle=":", label="every slice annotated")
    _log2_ticks(ax, [c["budget"] for c in panel])
    ax.set_title(f"{dims}D, {selection} selection")
    ax.set_xlabel("budget (annotated slices)")
  axes[0].set_ylabel("Dice (mean ± std over seeds)")
  _legend(fig)
  return _png(fig)


def forest(comparisons) -> bytes:
  """Forest plot: each paired difference a − b with its interval, grouped by family; 0 marked."""
  if not comparisons:
    return _empty("no comparisons yet")
  families = ("allocation", "selection", "interpolation")
  shown = [c for c in comparisons if c["comparison"] in families]
  if not shown:
    return _empty("no comparisons yet")
  fig = _new(8, 0.28 * len(shown) + 1.4)
  ax = fig.subplots()
  colours = {"better": "C2", "worse": "C3", "equivalent": "C0"}
  labels = []
  for y, c in enumerate(reversed(shown)):
    a, b = c["a"], c["b"]
    label = (f"{c['comparison']}: {a['dims']}D B{a['budget']} {_short(a)} − {_short(b)}")
    labels.append(label)
    colour = colours.get(c["verdict"], "C7")
    if c["ci_low"] is not None and c["verdict"] not in stats.UNTESTED:  # as the tables: no interval
      ax.plot([c["ci_low"], c["ci_high"]], [y, y], color=colour, linewidth=2)
    ax.plot([c["mean_diff"]], [y], "o", color=colour)
  ax.axvline(0, color="black", linewidth=0.8)
  ax.set_yticks(range(len(labels)), labels=labels, fontsize="x-small")
  ax.set_ylim(-0.8, len(labels) - 0.2)
  margin = next((c["margin"] for c in shown if c.get("margin")), None)
  if margin:
    for x in (-margin, margin):
      ax.axvline(x, color="C0", linewidth=0.8, linestyle=":")
  ax.set_xlabel("Δ Dice (a − b), paired by seed and test volume\nbars: 95% interval (seeds × test volumes, crossed);"
                " dotted: the equivalence margin")
  ax.set_title("Paired differences (verdicts Holm-adjusted within each family)\ngreen: a better, red: a worse, "
               "blue: equivalent, grey: inconclusive, underpowered or pending (no bar)", fontsize="medium")
  return _png(fig)


def _short(cell) -> str:
  return f"{cell['volumes']}×{cell['slices_per_volume']} {cell['selection']}" + (" interp" if cell["interpolation"]
                                                                                  else "")


def dice_vs_cost(cells, cost, left_out=()) -> bytes:
  """Mean Dice against annotation cost for every sparse cell, the best cell at each cost joined (of the cells whose
  keys are not in `left_out`, as the report's cost table), one panel per dims."""
  grid = [cell for cell in cells if not cell["reference"]]
  if not grid:
    return _empty("no results yet")
  all_dims = sorted({cell["dims"] for cell in grid})
  fig = _new(5.5 * len(all_dims), 4)
  axes = fig.subplots(1, len(all_dims), squeeze=False)[0]
  for ax, dims in zip(axes, all_dims):
    panel = [cell for cell in grid if cell["dims"] == dims]
    rules = sorted({cell["slices_per_volume"] for cell in panel})
    for i, rho in enumerate(rules):
      members = [c for c in panel if c["slices_per_volume"] == rho]
      ax.scatter([c["cost"] for c in members], [c["dice_mean"] for c in members], color=f"C{i}", s=18,
                 label=f"{rho} slice{'' if rho == 1 else 's'} per volume")
    best = cells_lib.cost_frontier(panel, left_out)  # this panel's own frontier: the best cell at each cost
    ax.step([c["cost"] for c in best], [c["dice_mean"] for c in best], where="post", color="black", linewidth=1,
            label="best at each cost")
    ax.set_xscale("log")
    costs = sorted({c["cost"] for c in panel})
    ax.set_xticks(costs, labels=[f"{c:g}" for c in costs])  # plain seconds, not 4x10^1
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    if len(costs) == 1:
      ax.set_xlim(costs[0] / 1.5, costs[0] * 1.5)
    ax.set_title(f"{dims}D: {cost['seconds_per_volume']:g} s per volume + {cost['seconds_per_slice']:g} s per slice")
    ax.set_xlabel("annotation cost (s)")
    ax.set_ylabel("Dice (mean over seeds)")
  _legend(fig)
  return _png(fig)


def learning_curves(cells) -> bytes:
  """Mean validation Dice against step per cell, one panel per dims and budget; cells still improving dashed."""
  curved = [cell for cell in cells if cell["curve_steps"]]
  if not curved:
    return _empty("no learning curves (config.eval.curve_points = 0, or no validation volumes)")
  keys = sorted({(cell["dims"], cell["reference"], cell["budget"]) for cell in curved})
  columns = min(len(keys), 4)
  rows = -(-len(keys) // columns)
  fig = _new(4.2 * columns, 3.2 * rows + 0.4)
  axes = fig.subplots(rows, columns, squeeze=False).ravel()
  for ax, (dims, reference, budget) in zip(axes, keys):
    for i, cell in enumerate(c for c in curved if (c["dims"], c["reference"], c["budget"]) == (dims, reference,
                                                                                               budget)):
      ys = [np.nan if y is None else y for y in cell["curve_dice"]]
      ax.plot(cell["curve_steps"], ys, marker=".", linewidth=0.9, linestyle="--" if cell["still_improving"] else "-",
              color=f"C{i % 10}", label=_short(cell) if not reference else "every slice")
    ax.set_title(f"{dims}D, " + ("every slice annotated" if reference else f"budget {budget}"))
    ax.set_xlabel("step")
    ax.set_ylabel("validation Dice (mean over seeds)")
    ax.legend(fontsize="xx-small", ncols=2)
  for ax in axes[len(keys):]:
    ax.set_visible(False)
  fig.suptitle("Learning curves on the validation subset (dashed: still improving at the end)")
  return _png(fig)
