"""The trust gate and the paper's three findings, each a verdict over the study's paired comparisons.

The gate asks whether the models were trained long enough for any verdict to mean something; when it is closed, every
finding is "inconclusive: undertrained".
"""

import math

from slicejax.report import cells as cells_lib
from slicejax.report import comparisons as comparisons_lib
from slicejax.report import statistics as stats

# A finding or a budget's case while cells still miss seeds their runs plan (`cells.missing_seeds`).
SEEDS_PENDING = "inconclusive: seeds pending"


def trust_gate(cells, options=None) -> dict:
  """Whether the study's models were trained long enough for its verdicts to mean anything.

  Returns:
    dict of `undertrained` (bool), `reasons` (why; empty when not), `flags` (warnings that do not close the gate:
    a reference below the best sparse cell, no reference or no learning curves to check), `improving` and
    `with_curves` (sparse cells still improving, and with learning curves), `max_improving_share`.
  """
  options = comparisons_lib.stats_options(options)
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
                    f"({cells_lib.label(best)}, budget {best['budget']}: {best['dice_mean']:.3f})")
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


def evidence(comparison) -> dict:
  """A comparison as the findings cite it: dims, budget, the cells' labels, Δ, its interval, p-values, verdict."""
  a, b = comparison["a"], comparison["b"]
  return {"dims": a["dims"], "budget": a["budget"], "a": cells_lib.label(a), "b": cells_lib.label(b),
          **{k: comparison[k] for k in ("mean_diff", "ci_low", "ci_high", "p_value", "p_adjusted",
                                         "p_equivalence_adjusted", "verdict", "n_pairs")}}


def direction_verdict(comparisons) -> str:
  """Finding 1's rule on "a (the fewest slices per volume) is better than b" (`stats.rules_markdown`)."""
  counts = _tally(comparisons)
  if not comparisons:
    return "not tested"
  if counts[stats.UNDERPOWERED] + counts[stats.PENDING] == len(comparisons):
    return SEEDS_PENDING if counts[stats.PENDING] else "inconclusive: underpowered"
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
  if counts[stats.UNDERPOWERED] + counts[stats.PENDING] == len(comparisons):
    return SEEDS_PENDING if counts[stats.PENDING] else "inconclusive: underpowered"
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


def _one_shot(comparison) -> bool:
  """Whether an allocation comparison is finding 1's: in its dims' `allocation` family (random or fixed interval)."""
  return comparisons_lib.holm_family(comparison) == comparisons_lib.dims_family("allocation", comparison["a"]["dims"])


def by_dims(comparisons, rule, name: str, decides=lambda comparison: True) -> dict:
  """A finding's verdict per dims: {"2D": {`family` (`comparisons.dims_family` of `name`), `verdict` (`rule` on that
  dims' comparisons that `decides`), `counts` (theirs)}, "3D": ...}, for the dims that have comparisons, 2D first."""
  out = {}
  for dims in sorted({c["a"]["dims"] for c in comparisons}):
    chosen = [c for c in comparisons if c["a"]["dims"] == dims and decides(c)]
    out[f"{dims}D"] = {"family": comparisons_lib.dims_family(name, dims), "verdict": rule(chosen),
                       "counts": _tally(chosen)}
  return out


def joint_verdict(per_dims: dict) -> str:
  """One line for a finding judged per dims (`by_dims`): the only tested dims' verdict, or each one's ("2D:
  reproduced; 3D: mixed"), so that one dims never changes the other's silently; "not tested" without any."""
  tested = {dims: e["verdict"] for dims, e in per_dims.items() if e["verdict"] != "not tested"}
  if len(tested) == 1:
    return next(iter(tested.values()))
  return "; ".join(f"{dims}: {verdict}" for dims, verdict in tested.items()) or "not tested"


def findings(comparisons, cells, options=None, unconverged=()) -> list[dict]:
  """The three findings of the paper, each checked on this study's pre-specified comparisons.

  The rules are `stats.rules_markdown`'s. Finding 1 uses the "allocation" family, "allocation, 3D" in 3D: its
  verdict comes from the random and fixed-interval comparisons, and each selection method (UAL too) gets its own in
  `by_selection`. Finding 2 uses the "selection" comparisons of UAL, oriented ual - other ("selection, ual" and
  "selection, ual, 3D"). Findings 1 and 2 are judged per dims (`by_dims`); with 2D and 3D comparisons the verdict
  names both (`joint_verdict`). Finding 3 uses the 2D "interpolation" comparisons; the 3D ones are listed by
  density. When the trust gate (`trust_gate`) is closed, every verdict is "inconclusive: undertrained" and
  `verdict_without_gate` keeps what the comparisons say. The comparisons at the (dims, budget)s in `unconverged`
  (whose steps check says more steps are needed or is pending, `steps.steps_check`) are left out of every finding.

  Returns:
    One dict per finding: `finding` (1-3), `claim`, `verdict`, `verdict_without_gate`, `counts` ({verdict word:
    comparisons}), `evidence` (the comparisons), `left_out` (the `unconverged` (dims, budget)s, sorted); for
    findings 1 and 2, `by_dims` (`by_dims`; finding 1's entries with `by_selection`: {selection: {verdict,
    counts}}), and for finding 1, `best` (the highest mean per dims and budget, descriptive).
  """
  gate = trust_gate(cells, options)
  unconverged = set(unconverged)
  comparisons = [c for c in comparisons if (c["a"]["dims"], c["a"]["budget"]) not in unconverged]

  def result(number, claim, verdict, chosen, **extra):
    return {"finding": number, "claim": claim,
            "verdict": "inconclusive: undertrained" if gate["undertrained"] else verdict,
            "verdict_without_gate": verdict, "counts": _tally(chosen), "evidence": [evidence(c) for c in chosen],
            "left_out": sorted(unconverged), **extra}

  out = []
  allocation = [c for c in comparisons if c["comparison"] == "allocation"]
  one_shot = [c for c in allocation if _one_shot(c)]
  per_dims = by_dims(allocation, direction_verdict, "allocation", _one_shot)
  for dims, entry in per_dims.items():
    selections = {}
    for c in allocation:
      if f"{c['a']['dims']}D" == dims:
        selections.setdefault(c["a"]["selection"], []).append(c)
    entry["by_selection"] = {k: {"verdict": direction_verdict(v), "counts": _tally(v)} for k, v in selections.items()}
  best = {}
  for cell in cells:
    if (not cell["reference"] and not cell["interpolation"] and not math.isnan(cell["dice_mean"])
        and not cells_lib.in_rounds(cell["selection"]) and (cell["dims"], cell["budget"]) not in unconverged
        and not cell.get("missing_seeds")):  # a mean over other seeds than the rest's
      key = f"{cell['dims']}D budget {cell['budget']}"
      if key not in best or cell["dice_mean"] > best[key]["dice_mean"]:
        best[key] = {"allocation": cells_lib.label(cell), "slices_per_volume": cell["slices_per_volume"],
                     "dice_mean": cell["dice_mean"]}
  out.append(result(1, "At a fixed budget, fewer slices per volume over more volumes is better.",
                    joint_verdict(per_dims), one_shot, best=best, by_dims=per_dims))

  ual = [c for c in comparisons
         if c["comparison"] == "selection" and comparisons_lib.holm_family(c).startswith("selection, ual")]
  oriented = [c if c["a"]["selection"] == "ual" else stats.flip(c) for c in ual]
  per_dims = by_dims(oriented, _not_better_verdict, "selection, ual")
  out.append(result(2, "UAL is not better than random or fixed-interval selection at equal slices per volume.",
                    joint_verdict(per_dims), oriented, by_dims=per_dims))

  interpolation = [c for c in comparisons if c["comparison"] == "interpolation"]
  two_d = [c for c in interpolation if c["a"]["dims"] == 2]
  verdict = "not tested in 2D" if interpolation and not two_d else _not_better_verdict(two_d)
  three_d = sorted((c for c in interpolation if c["a"]["dims"] == 3),
                   key=lambda c: (c["a"]["budget"], c["a"]["slices_per_volume"]))
  out.append(result(3, "Mask interpolation rarely helps, except some low-density 3D settings.", verdict, two_d,
                    three_d=[evidence(c) for c in three_d], three_d_counts=_tally(three_d)))
  return out
