"""The report as text: summary.md's markdown sections and summary.csv's lines, from cells, comparisons and findings."""

import collections
import csv
import io
import math

from slicejax import console
from slicejax.report import cells as cells_lib
from slicejax.report import comparisons as comparisons_lib
from slicejax.report import statistics as stats
from slicejax.report import steps as steps_lib


def _fmt(value, digits=3) -> str:
  return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _classes(cells) -> list[str]:
  names = {}
  for cell in cells:
    names.update(dict.fromkeys(cell["dice_per_class"]))
  return list(names)


def _table(header, lines) -> list[str]:
  return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
          + ["| " + " | ".join(line) + " |" for line in lines])


def _spread(cell) -> str:
  left_out = cell.get("undefined_seeds") or []
  note = f", {len(left_out)} left out: Dice undefined" if left_out else ""
  if cell.get("missing_seeds"):  # "(2 of 5 planned)": the cell's runs have not trained all its seeds yet
    note = f" of {cell['n_seeds'] + len(cell['missing_seeds'])} planned" + note
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


def _tested(comparison) -> bool:
  """Whether a comparison's p-values and intervals are shown: not when it is `underpowered` or `pending`, where too
  few seeds make the intervals too narrow and the p-values too small to read (the Δ is shown)."""
  return comparison["verdict"] not in stats.UNTESTED


def _seeds_of(comparison) -> str:
  """A comparison's shared seeds, "2 of 5" while it is `pending`."""
  if comparison.get("pending"):
    return f"{comparison['n_pairs']} of {comparison['planned_seeds']}"
  return str(comparison["n_pairs"])


def _comparison_table(comparisons, options) -> list[str]:
  percent, percent90 = f"{100 * (1 - options['alpha']):g}%", f"{100 * (1 - 2 * options['alpha']):g}%"
  header = ["family", "dims", "budget", "a", "b", "seeds", "volumes", "Δ Dice", f"{percent} CI", f"{percent90} CI",
            "p", "p Holm", "p equiv. Holm", "verdict", "Δ NSD", "Δ HD95 mm"]
  lines = []
  for c in comparisons:
    shown = _tested(c)
    lines.append([c["family"], f"{c['a']['dims']}D", str(c["a"]["budget"]), cells_lib.label(c["a"]),
                  cells_lib.label(c["b"]), _seeds_of(c), str(c["n_volumes"]),
                  "—" if math.isnan(c["mean_diff"]) else f"{c['mean_diff']:+.3f}",
                  _interval(c["ci_low"] if shown else None, c["ci_high"]),
                  _interval(c["ci90_low"] if shown else None, c["ci90_high"]), _p(c["p_value"] if shown else None),
                  _p(c["p_adjusted"]), _p(c["p_equivalence_adjusted"]), c["verdict"],
                  "—" if c["nsd_diff"] is None else f"{c['nsd_diff']:+.3f}",
                  "—" if c["hd95_diff"] is None else f"{c['hd95_diff']:+.2f}"])
  return _table(header, lines)


def _counts_text(counts) -> str:
  words = [f"{n} {word}" for word, n in counts.items() if n]
  return ", ".join(words) if words else "no comparison"


def _allocation_text(dims, entry, per_dims: bool) -> str:
  """Finding 1's evidence in one dims (an entry of its `by_dims`); `per_dims`: the study has both, so it says which
  and its verdict."""
  lead = (f"{dims} (`{entry['family']}`): {entry['verdict']}. The fewest-slices" if per_dims else "The fewest-slices")
  # UAL's allocations are a family of their own (`allocation, ual`), outside the finding's verdict: said so.
  by_selection = "; ".join(f"{name}{' (its own family, not in the verdict)' if name == 'ual' else ''}: "
                           f"{e['verdict']} ({_counts_text(e['counts'])})" for name, e in entry["by_selection"].items())
  return (f"{lead} allocation against each other allocation at the same budget, random and fixed interval: "
          f"{_counts_text(entry['counts'])}. By selection: {by_selection}.")


_UNREACHABLE = {"volumes": "the test volumes' own variance is too large for the margin, whatever the seeds",
                "seeds": "the per-seed spread of the differences is too large for the margin at that many seeds"}


def seeds_text(entry) -> str:
  """The seeds one family needs (an entry of `comparisons.seeds_needed`), in words; when no number is enough, which
  limit was hit (`stats.unreachable_by`)."""
  if entry["unreachable"]:
    return f"more than {stats.MAX_SEEDS} ({_UNREACHABLE[entry['unreachable_by']]})"
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


def _a_a_markdown(checks, options) -> list[str]:
  """The A/A part of "Checks": fixed − random at one slice per volume (`comparisons.a_a_checks`), and a warning for
  each interval that excludes 0."""
  percent = f"{100 * (1 - options['alpha']):g}%"
  lines = [[f"{c['a']['dims']}D", str(c["a"]["budget"]), cells_lib.label(c["a"]), cells_lib.label(c["b"]),
            _seeds_of(c), str(c["n_volumes"]), "—" if math.isnan(c["mean_diff"]) else f"{c['mean_diff']:+.3f}",
            _interval(None if c["excludes_zero"] is None else c["ci_low"], c["ci_high"]),
            _p(None if c["excludes_zero"] is None else c["p_value"]),
            ("pending" if c.get("pending") else f"no test: fewer than {options['min_seeds']} seeds"
             if c["n_pairs"] < options["min_seeds"] else "no interval") if c["excludes_zero"] is None
            else "**excludes 0**" if c["excludes_zero"] else "covers 0"]
           for c in checks]
  out = [f"Fixed interval against random at one slice per volume, an A/A comparison (two draws of one distribution of "
         f"slices: the true Δ is 0). Its {percent} interval excludes 0 in {100 * options['alpha']:g}% of studies when "
         "the intervals are right; more often, they are too narrow.", ""]
  out += _table(["dims", "budget", "a", "b", "seeds", "volumes", "Δ Dice", f"{percent} CI", "p", "interval"], lines)
  warned = [c for c in checks if c["excludes_zero"]]
  if warned:
    out += ["", f"- Warning: {len(warned)} of {len(checks)} A/A intervals exclude 0 ("
            + "; ".join(f"{c['a']['dims']}D budget {c['a']['budget']}, {cells_lib.label(c['a'])} − "
                        f"{cells_lib.label(c['b'])}" for c in warned)
            + "): the statistics may be anti-conservative (intervals too narrow, p-values too small)."]
  return out + [""]


def _steps_markdown(entries) -> list[str]:
  """The steps part of "Checks" (`steps.steps_check`): per budget and step count, the re-trained cells' mean Dice,
  the difference between the extremes and how much it moved, and the budget's verdict."""
  tolerance = entries[0]["tolerance"]
  tests = [f"{e['dims']}D budget {e['budget']}" for e in entries if e["metric"] == steps_lib.TEST]
  metric = "validation Dice" + (f" (test Dice at {', '.join(tests)}, whose rows lack it)" if tests else "")
  out = ["Steps check: points trained again for more steps. At these budgets the cells, comparisons and findings "
         "use the study's step count (the grid's, the shortest; for a budget declared trained again in full at "
         "more steps, `--retrained`, the longest at which every cell has every seed it has at any step count, or "
         "the longest present while none is); here, the re-trained "
         f"allocations' mean {metric} over the seeds that have them all at both step counts, so that the training "
         "length is not chosen on the test volumes, and the difference between "
         f"the extremes. The steps stand when it moves by less than {tolerance:g} (`stats.steps_tolerance`) over at "
         f"least {entries[0]['min_seeds']} seeds (`stats.steps_seeds`); with fewer the check is pending. A budget "
         "`retrained` was declared trained again in full at more steps, which it keeps.", ""]

  def steps_label(steps, e):
    return f"{steps} (study)" if steps == e["study_steps"] else str(steps)

  lines = []
  for e in entries:
    for c in e["checks"]:
      per_seed = ", ".join(f"{m:+.3f}" for m in c["moved_per_seed"].values())
      before = (steps_label(c["from_steps"], e), c["study_dice"], c["study_difference"], "—")
      after = (steps_label(c["steps"], e), c["dice"], c["difference"],
               moved_text(c["moved"], e["tolerance"])
               + (f" (per seed {per_seed})" if len(c["moved_per_seed"]) > 1 else ""))
      for steps, dice, difference, moved in (before, after):
        lines.append([f"{e['dims']}D", str(e["budget"]), steps, ", ".join(map(str, c["seeds"])),
                      "; ".join(f"{cell} {d:.3f}" for cell, d in dice.items()), f"{difference:+.3f}", moved])
  if lines:
    out += _table(["dims", "budget", "steps", "seeds", "mean Dice" if tests else "mean validation Dice",
                   "fewest − most", "moved"], lines) + [""]
  for e in entries:
    where = f"{e['dims']}D, " + ("the reference" if e["reference"] else f"budget {e['budget']}")
    if not e["checks"]:
      out.append(f"- {where}: **{e['verdict']}** ({e['reason']}).")
      out += _unread_lines(e)
      continue
    out.append(f"- {where}: **{e['verdict']}**" + (f" ({e['reason']})" if e["reason"] else "") + ": " + "; ".join(
        f"{c['fewest']} − {c['most']} moved {moved_text(c['moved'], e['tolerance'])} from {c['from_steps']} to "
        f"{c['steps']} steps "
        f"({'by less than' if c['stands'] else 'by'} {e['tolerance']:g}{'' if c['stands'] else ' or more'}"
        f"{'' if len(c['seeds']) >= e['min_seeds'] else ', so far'})" for c in e["checks"])
        + (f"; the study's rows are those at {e['study_steps']} steps" if e["verdict"] == steps_lib.RETRAINED else "")
        + ".")
    out += _unread_lines(e)
  return out + [""]


def _unread_lines(entry) -> list[str]:
  """A budget's rows that neither its cells nor a check read (`steps_check`'s `unread`), named; none: nothing."""
  if not entry.get("unread"):
    return []
  return [f"  - Rows at another step count than the study's {entry['study_steps']} that no check reads, left out of "
          "the report: " + "; ".join(f"{u['cell']} at {u['steps']} steps ({_plural(u['seeds'], 'seed')})"
                                     for u in entry["unread"]) + "."]


def moved_text(moved: float, tolerance: float) -> str:
  """A steps check's movement to 3 decimals, or to as many more (up to 6) as it takes not to print the tolerance for a
  movement on either side of it (+0.00496 against 0.005 would read "+0.005 (by less than 0.005)")."""
  for digits in range(3, 7):
    text = f"{moved:+.{digits}f}"
    if abs(moved) == tolerance or abs(float(text)) != tolerance:
      break
  return text


def checks_markdown(checks, options) -> list[str]:
  """The "Checks" section: the A/A comparisons and the steps check, in no family and no finding; nothing without
  either."""
  if not checks["a_a"] and not checks["steps"]:
    return []
  out = ["## Checks", ""]
  if checks["a_a"]:
    out += _a_a_markdown(checks["a_a"], options)
  if checks["steps"]:
    out += _steps_markdown(checks["steps"])
  return out


def findings_markdown(found, needed=None, steps_entries=()) -> list[str]:
  """The "Findings" section: one paragraph per finding with its verdict and evidence (`steps_entries`: the steps
  check's, which say why a budget is left out)."""
  out = ["## Findings", "",
         "The paper's three findings, checked on this dataset with the pre-specified comparisons below (rules above).",
         ""]
  left_out = found[0].get("left_out") if found else None
  if left_out:
    pending = {(e["dims"], e["budget"]) for e in steps_entries if e["verdict"] == steps_lib.PENDING}
    by_why = {}
    for dims, budget in left_out:
      why = "whose steps check is pending" if (dims, budget) in pending else (
          "where the steps check says more steps are needed")
      by_why.setdefault(why, []).append(f"{dims}D budget {budget}")
    out += ["Left out of the findings: " + "; ".join(f"{', '.join(names)}, {why}" for why, names in by_why.items())
            + " (\"Checks\").", ""]
  for finding in found:
    gated = finding["verdict"] != finding["verdict_without_gate"]
    out.append(f"**{finding['finding']}. {finding['claim']}** Verdict: **{finding['verdict']}**"
               + (f" (the comparisons alone would say: {finding['verdict_without_gate']})" if gated else "") + ".")
    if finding["finding"] == 1:
      best = "; ".join(f"{key}: {b['allocation']} ({b['dice_mean']:.3f})" for key, b in finding["best"].items())
      out.append(" ".join(_allocation_text(dims, entry, len(finding["by_dims"]) > 1)
                          for dims, entry in finding["by_dims"].items())
                 + (" " if finding["by_dims"] else "")
                 + (f"Highest mean (descriptive, not a test): {best}." if best
                    else "Fewer against more slices per volume: no comparison."))
    elif finding["finding"] == 2:
      if len(finding["by_dims"]) > 1:
        out.append("UAL against random and fixed interval at equal allocation, judged per dims: " + "; ".join(
            f"{dims} (`{e['family']}`): {_counts_text(e['counts'])}, {e['verdict']}"
            for dims, e in finding["by_dims"].items()) + ".")
      else:
        out.append(f"UAL against random and fixed interval at equal allocation: {_counts_text(finding['counts'])}.")
    else:
      out.append(f"Interpolation on against off, 2D: {_counts_text(finding['counts'])}."
                 + (f" 3D: {_counts_text(finding['three_d_counts'])}; "
                    + "; ".join(f"{e['a']} {e['mean_diff']:+.3f} ({e['verdict']})" for e in finding["three_d"])
                    if finding["three_d"] else " No 3D comparison."))
    out.append("")
  if needed:
    out += ["Seeds needed, for planning (80% power to detect the margin at the family's Bonferroni level, from this "
            "study's pooled variability; a pilot's, with `--check`, before a study), and the power the family's tests "
            "have now, on the same basis, at the most seeds one of its comparisons shares: how likely they were to "
            "show a true difference of the margin, which is what an `inconclusive` means here:", ""]
    out += _table(["family", "comparisons", "level", "per-seed SD of Δ", "its 80% upper limit", "volume component",
                   "seeds needed", "power now (seeds)"],
                  [[family, str(e["comparisons"]), f"{e['alpha']:.2g}", _fmt(e.get("seed_sd"), 4),
                    _fmt(e.get("seed_sd_upper"), 4), _fmt(e.get("volume_var"), 5), seeds_text(e),
                    "—" if e.get("power_now") is None else f"{e['power_now']:.0%} ({e['seeds_now']})"]
                   for family, e in needed.items()])
    out.append("")
  return out


_AGREEMENT_TEXT = {
    "MIDL 2025": "agrees with the MIDL 2025 study (fewer slices per volume over more volumes is better)",
    "cardiac": "agrees with the cardiac study (more slices per volume is better)",
    "neither": "agrees with neither study (the allocations are equivalent within the margin)",
    "mixed": "mixed (the fewest slices per volume better in some comparisons, worse in others)"}


def _plural(n, word) -> str:
  return f"{n} {word}{'' if n == 1 else 's'}"


def _case_text(entry, case) -> str:
  """The headline of a budget's recommendation for `case`, its gated or its ungated case."""
  if case == "best":
    return f"best: {entry['recommended']}"
  if case == "equivalent":
    return f"equivalent within ±{entry['margin']:g}: any of {', '.join(c['cell'] for c in entry['candidates'])}"
  if case == "not separated" and entry["seeds"]:
    low, high = entry["seeds"][0], entry["seeds"][-1]
    return f"not separated at this number of seeds ({low if low == high else f'{low}-{high}'})"
  return case


def _case_detail(entry, cell) -> str:
  """What backs a budget's case: the recommended `cell`, the comparisons, the seeds their families need."""
  if cell is None:
    if entry.get("pending") and not entry["shown_worse"]:
      return "No candidate yet: the cells here wait for their planned seeds."
    if entry.get("held_back") and not entry["shown_worse"]:
      return "No candidate: no cell in rounds is shown better than its control, and no other cell is here."
    return "Every cell is shown worse than another: the comparisons contradict each other."
  named = f"{entry['recommended']} (Dice {_spread(cell)}, {cell['cost']:g} s)"
  if entry["case_without_gate"] == "best":
    return (f"Dice {_spread(cell)}, {cell['cost']:g} s; better than each cell it was compared with "
            f"({_plural(entry['counts']['better'], 'comparison')}).")
  if entry["case_without_gate"] == "equivalent":
    costs = sorted(entry["candidates"], key=lambda c: c["cost"])
    cheapest = (f"the cheapest: {costs[0]['cell']} ({costs[0]['cost']:g} s)" if costs[0]["cost"] < costs[-1]["cost"]
                else f"each costs {costs[0]['cost']:g} s")
    return f"Comparisons between them: {_counts_text(entry['counts'])}. Highest mean: {named}; {cheapest}."
  needed = "; ".join(f"{family} {seeds_text(e)}" for family, e in entry["seeds_needed"].items())
  if len(entry["candidates"]) == 1:
    compared = f"The only candidate: {named}. Its comparisons, read as it − other: {_counts_text(entry['counts'])}"
  else:
    compared = (f"Highest mean of the {len(entry['candidates'])} candidates: {named}. Comparisons between them: "
                + (_counts_text(entry["counts"]) if entry["counts"] else "none"))
    if entry["counts"] and not entry["seeds"]:
      compared += ", which do not link every candidate to the others"
  return compared + (f"; seeds that would separate them (80% power at the margin, from these comparisons' own "
                      f"spread, at their family's level): {needed}" if needed else "") + "."


def _break_even_text(be, seconds_per_volume, equivalent: bool) -> str:
  """The volumes (and seconds) the candidate opening the fewest volumes saves: a break-even at equal Dice where the
  candidates are `equivalent`, else only the cost side (their Dice is not shown equal)."""
  head, where, tail = ("Break-even", "at equal Dice", "") if equivalent else (
      "Cost", "for the same slices", "; their Dice is not shown equal")
  opens = f"{where}, {be['fewer']} opens {be['volumes']:g} fewer volumes than {be['more']}"
  if be["seconds"] is not None:
    return f"{head}: {opens} and saves {be['volumes']:g} × {seconds_per_volume:g} s = {be['seconds']:g} s{tail}."
  return (f"{head}: {opens}; the cost model charges nothing per volume opened (`--seconds_per_volume=...` "
          f"prices it){tail}.")


def _evidence_text(e) -> str:
  """One comparison as a recommendation cites it (`findings.evidence`): "a − b: Δ +0.012 [-0.004, +0.028], verdict"."""
  return (f"{e['a']} − {e['b']}: Δ {'—' if math.isnan(e['mean_diff']) else format(e['mean_diff'], '+.3f')}"
          + ("" if e["ci_low"] is None or not _tested(e) else f" {_interval(e['ci_low'], e['ci_high'])}")
          + f", {e['verdict']}")


def _agreement_text(entry) -> str:
  agreement = _AGREEMENT_TEXT.get(entry["agreement"], entry["agreement"])
  if entry["agreement"] != entry["agreement_without_gate"]:
    alone = _AGREEMENT_TEXT.get(entry["agreement_without_gate"], entry["agreement_without_gate"])
    agreement += f" (the comparisons alone would say: {alone})"
  evidence = "; ".join(map(_evidence_text, entry["allocation"]))
  return (f"Prior studies (the `{entry['allocation_family']}` family here, finding 1's rule): {agreement}. {evidence}; "
          f"margin {entry['margin']:g}.")


def recommendations_markdown(recommended, cells, cost) -> list[str]:
  """The "Recommendation per budget" section (`recommendations.recommendations`): per budget the case, the cells
  left out, the break-even and the prior study the allocation comparisons agree with, then the candidates' cost;
  nothing when no budget has two or more cells."""
  if not recommended:
    return []
  by_key = {cells_lib.key_of(c): c for c in cells}
  out = ["## Recommendation per budget", "",
         "What to annotate at each budget with two or more cells, read off the pre-specified comparisons above and no "
         "other test (rules above): the candidates are the cells that no comparison at their budget shows worse than "
         "another, a cell in rounds only once shown better than its control `passive`, a cell whose runs have not "
         "trained all its planned seeds only once they are in, and the recommendation is the candidate with the "
         "highest mean.", ""]
  table = []
  for entry in recommended:
    keys = [cells_lib.key_of(c) for c in entry["candidates"]]
    case = _case_text(entry, entry["case"]) + "**"
    if entry["case"] != entry["case_without_gate"]:
      case += f" (the comparisons alone would say: {_case_text(entry, entry['case_without_gate'])})"
    out.append(f"- **{entry['dims']}D, budget {entry['budget']}: {case}. "
               + _case_detail(entry, by_key[keys[0]] if keys else None))
    if entry["shown_worse"]:
      out.append("  - Shown worse, left out: " + "; ".join(
          f"{name} (than {', '.join(than)})" for name, than in entry["shown_worse"].items()) + ".")
    if entry.get("pending"):
      out.append("  - Still missing planned seeds, left out until they are in: " + ", ".join(entry["pending"]) + ".")
    if entry.get("held_back"):
      out.append("  - Selection in rounds, left out until shown better than its control `passive` (the control "
                 "itself always): " + ", ".join(entry["held_back"]) + ".")
    if entry.get("against_one_shot"):
      out.append("  - Selection in rounds against one-shot selection of the same slices per volume (the rounds add a "
                 "training per round and a wait for the annotators; they pay where shown better): "
                 + "; ".join(map(_evidence_text, entry["against_one_shot"])) + ".")
    if entry["break_even"]:
      out.append("  - " + _break_even_text(entry["break_even"], cost["seconds_per_volume"],
                                           entry["case_without_gate"] == "equivalent"))
    if entry["agreement"]:
      out.append("  - " + _agreement_text(entry))
    table += [[f"{entry['dims']}D", str(entry["budget"]), c["cell"], _spread(by_key[key]), f"{c['cost']:g}"]
              for c, key in zip(entry["candidates"], keys)]
  out += ["", "The candidates, highest mean first, and their annotation cost (cost model under \"Annotation cost\"):",
          ""]
  return out + _table(["dims", "budget", "candidate", "Dice mean ± std (n)", "cost s"], table)


def figure_links(pngs, prefix) -> str:
  """The "Figures" section: a titled link to each figure file, `prefix` put before its name."""
  titles = {"dice_vs_allocation.png": "Dice against slices per volume", "dice_vs_budget.png": "Dice against budget",
            "forest.png": "Paired differences", "dice_per_class.png": "Dice per class",
            "dice_vs_cost.png": "Dice against annotation cost", "learning_curves.png": "Learning curves"}
  lines = ["", "## Figures", ""]
  for name in pngs:
    lines += [f"![{titles.get(name, name)}]({prefix}{name})", ""]
  return "\n".join(lines)


def closed_markdown(closed) -> list:
  """The note on a study closed short of its planned seeds (`runs.close_seeds`), or nothing."""
  if not closed:
    return []
  def seeds(values):
    return ", ".join(map(str, values))
  return ["**Closed short of its planned seeds** (`--close`): " + "; ".join(
      f"{dims}D at seeds {seeds(kept)} of the {seeds(closed['planned'][dims])} planned"
      for dims, kept in closed["seeds"].items()) + f", as if the runs planned no other; {closed['rows_left_out']} "
      "rows of other seeds are left out (and their compute). A smaller study than the one planned: its verdicts hold "
      "only if the decision to stop was taken without looking at the pending differences, and reading it again "
      "when more seeds are in would be a second look at the same comparisons.", ""]


def summary_markdown(cells, comparisons, found, gate, needed, recommended, frontier, cost, options, compute,
                     checks=None) -> str:
  """summary.md without its figures: the rules, the trust gate, the checks (`checks`: {"a_a": ..., "steps": ...},
  `checks_markdown`; None: none), the findings, the cells, the reference, the comparisons, the recommendation per
  budget, the rounds, the annotation cost frontier and the compute used."""
  classes = _classes(cells)
  grid = [cell for cell in cells if not cell["reference"]]
  reference = [cell for cell in cells if cell["reference"]]
  out = ["# Study summary", "", *closed_markdown(options.get("closed")), stats.rules_markdown(options)]
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
  out += checks_markdown(checks or {"a_a": [], "steps": []}, options)
  if comparisons:
    out += findings_markdown(found, needed, (checks or {}).get("steps", ()))
  else:
    out += ["## Findings", "", "No pre-specified comparison in this run (it needs cells that differ in one study "
            "variable at equal budget): the paper's findings are not checked.", ""]
  out += ["## Cells", "",
          "Dice: mean ± std over seeds (number of seeds) of each model's mean test Dice; HD95 and NSD (normalised "
          "surface Dice) likewise, means over seeds. Cost: annotation seconds under the cost model below. Train s: "
          "training seconds per seed, a cell in rounds counting every round's models (its share of those it shares). "
          "Flags: "
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
          "(rules above). Δ NSD and Δ HD95 are a − b too: a positive Δ HD95 means a's boundaries lie further from "
          "the truth.", ""]
  present = collections.Counter(c["family"] for c in comparisons)
  unmade = {family: comparisons_lib.unmade(family, n, options) for family, n in present.items()}
  if options.get("families") and comparisons or any(unmade.values()):
    m = {c["family"]: c["family_size"] for c in comparisons}
    out += ["Holm's adjustment runs over each family's planned comparisons, those not yet made counted as p = 1: "
            + "; ".join(f"`{family}` {n} made of {n + unmade[family]} planned (m = {m[family]})"
                        for family, n in present.items()) + ".", ""]
  if options.get("plans_merged") and comparisons:
    out += ["This report merges runs that each wrote their own plan (`families.json`): each family is adjusted over "
            "at least the largest of them. If the runs are parts of one larger study, pass its whole plan "
            "(`--families`); without it, a rejection reached now may not stay when the other parts arrive.", ""]
  out += _comparison_table(comparisons, options) if comparisons else ["No cells to compare yet."]
  section = recommendations_markdown(recommended, cells, cost)
  out += [""] + section if section else []
  in_round = [cell for cell in grid if cell.get("round_slices")]
  if in_round:
    out += ["", "## Rounds", "",
            "Selection in rounds: the slices annotated after each round and the mean validation Dice over seeds of "
            "the models trained on them (a dash: a round that trained nothing, `passive`); the last round's models are "
            "the cell's. Each model-based selection against its control `passive` on the same schedule is the family "
            "\"selection, rounds, control\" above, and against one-shot random and fixed interval at the same budget "
            "and allocation \"selection, rounds, one-shot\"; the other comparisons of selections in rounds are "
            "\"selection, rounds\". Round 0 is a one-shot plan of `rounds.first_selection`; with random or fixed "
            "interval (and a fixed allocation, not `free`) it keeps part of the one-shot plan of that selection, "
            "volumes and seed at the full slices per volume (`slicejax.training.rounds.first_plan`), so against that "
            "one-shot cell a cell in rounds differs only in the slices its models chose, and against the other "
            "one-shot selection also in how its first slices were chosen; against `passive` it differs only in the "
            "former. Equal slices are not equal work: the foreground "
            "pixels annotated (mean over seeds) show what each selection asks of the annotators (a cost model with "
            "`--seconds_per_kilopixel` prices them).", ""]
    out += _table(["dims", "budget", "cell", "slices per round", "validation Dice per round", "volumes annotated",
                   "foreground px annotated", "test Dice"],
                  [[f"{c['dims']}D", str(c["budget"]), cells_lib.label(c), " → ".join(map(str, c["round_slices"])),
                    " → ".join(_fmt(d) for d in c["round_val_dice"]), f"{c['annotated_volumes']:g}"
                    if c["annotated_volumes"] is not None else "—",
                    f"{c['annotated_foreground']:,.0f}" if c.get("annotated_foreground") is not None else "—",
                    _spread(c)] for c in in_round])
  out += ["", "## Annotation cost", "",
          f"Cost model: {cost['seconds_per_volume']:g} s per volume opened + {cost['seconds_per_slice']:g} s per "
          "slice" + (f" + {cost['seconds_per_kilopixel']:g} s per 1,000 foreground pixels of the annotated slices"
                     if cost.get("seconds_per_kilopixel") else "")
          + " (`python -m slicejax.report --seconds_per_volume=... --seconds_per_slice=..."
          + (" --seconds_per_kilopixel=..." if cost.get("seconds_per_kilopixel") else "")
          + "` recomputes this view with a team's own timings). The best cell at each cost level (cells that beat "
          "every cheaper one; by mean Dice, descriptive, not a test; a budget the steps check holds says so; as in "
          "the recommendation, a cell still missing planned seeds and a cell in rounds not shown better than its "
          "control take no part):", ""]
  held = {(e["dims"], e["budget"]): e["verdict"] for e in (checks or {}).get("steps", [])
          if e["verdict"] in (steps_lib.MORE, steps_lib.PENDING) and not e["reference"]}
  out += _table(["cost s", "dims", "allocation", "selection", "interpolation", "Dice"],
                [[f"{c['cost']:g}", f"{c['dims']}D", f"{c['volumes']}×{c['slices_per_volume']}", c["selection"],
                  "on" if c["interpolation"] else "off",
                  _spread(c) + (f" (budget {c['budget']} held: {held[(c['dims'], c['budget'])]})"
                                if (c["dims"], c["budget"]) in held else "")]
                 for c in frontier]) if frontier else ["—"]
  out += ["", "## Compute", "",
          f"{compute['models']:g} models: {console.duration(compute['train_seconds'])} of training and "
          f"{console.duration(compute['eval_seconds'])} of evaluation (sums of the rows' `train_seconds` and "
          f"`eval_seconds`, each model's share of its group's time"
          + ("; a cell in rounds counts every round's models, `rounds_train_seconds` and `rounds_eval_seconds`"
             if compute.get("rounds") else "") + ")"
          + (f", and {console.duration(compute['encoder_seconds'])} for UAL slice encoders" if compute["encoder_seconds"]
             else "") + ".", ""]
  environments = compute.get("environments") or {}
  if environments or compute.get("unrecorded"):
    out += ["Where the rows were trained (each launch's `launches.jsonl`; numbers can differ between machines and "
            "library versions):", ""]
    out += [f"- {label}: {n} launch{'es' if n > 1 else ''}" for label, n in environments.items()]
    if compute.get("unrecorded"):
      out += [f"- {compute['unrecorded']} rows from launches that did not record their machine and versions"]
    out += [""]
  return "\n".join(out)


def summary_csv(cells) -> str:
  """summary.csv: one line per cell with plain numbers (booleans as 0/1, missing values empty). `n_seeds_planned`
  counts the seeds its runs plan (`cells.missing_seeds`): a cell with fewer `n_seeds` is pending, its mean not final."""
  classes = _classes(cells)
  header = list(cells_lib.CELL_KEY) + ["n_seeds", "n_seeds_planned", "density", "dice_mean", "dice_std"] + [
      f"dice_{name}" for name in classes] + ["hd95_mean", "nsd_mean", "interp_dice", "cost", "train_seconds",
                                             "n_diverged", "still_improving"]
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(header)
  for cell in cells:
    planned = cell["n_seeds"] + len(cell.get("missing_seeds") or ())
    values = [cell[name] for name in cells_lib.CELL_KEY] + [cell["n_seeds"], planned, cell["density"],
                                                              cell["dice_mean"], cell["dice_std"]]
    values += [cell["dice_per_class"].get(name) for name in classes]
    values += [cell["hd95_mean"], cell["nsd_mean"], cell["interp_dice"], cell["cost"], cell["train_seconds"],
               cell["n_diverged"], cell["still_improving"]]
    # str(float) is the shortest repr that parses back to the same float.
    writer.writerow(["" if value is None else int(value) if isinstance(value, bool) else value for value in values])
  return buffer.getvalue()
