"""What to annotate at each budget, read off the pre-specified comparisons: no test of its own.

At one (dims, budget) with two or more cells (sparse, with a defined mean Dice), the candidates are the cells that no
comparison there shows worse than another cell (`worse` as a, `better` as b), less the cells in rounds not shown
better than their control `passive` (`held_back`; such a cell takes no part: its comparisons neither rule another
cell out nor count in the case) and the cells still missing planned seeds (which take no part either, and hold the
case at `findings.SEEDS_PENDING`), and the recommendation is the candidate with the highest mean. The case says how
far the comparisons separate it (`stats.rules_markdown`):
- "best": it is the only candidate, and better in every comparison it is in;
- "equivalent": two or more candidates, every comparison between two of them `equivalent`, and those comparisons link
  them all;
- "not separated": otherwise.
Beside it, the budget's comparisons of the `allocation` family (`allocation, 3D` in 3D), read by finding 1's rule
(`findings.direction_verdict`), say which prior study the dataset agrees with there: the MIDL 2025 study (fewer slices
per volume over more volumes is better) or the cardiac study (more slices per volume is better).
"""

import math

from slicejax.report import cells as cells_lib
from slicejax.report import comparisons as comparisons_lib
from slicejax.report import findings as findings_lib
from slicejax.report import statistics as stats
from slicejax.report import steps as steps_lib

BEST, EQUIVALENT, NOT_SEPARATED = "best", "equivalent", "not separated"
UNDERTRAINED = "inconclusive: undertrained"
MORE_STEPS = "inconclusive: more steps needed"
STEPS_PENDING = "inconclusive: steps check pending"
# Finding 1's verdict on a budget's allocation comparisons, as the prior study it agrees with; other verdicts (mixed,
# inconclusive, underpowered) are kept as they are.
AGREEMENT = {"reproduced": "MIDL 2025", "reversed": "cardiac", "not reproduced: equivalent": "neither"}
# What a budget keeps of a family's `comparisons.seeds_needed` entry.
_SEEDS_FIELDS = ("seeds_needed", "unreachable", "unreachable_by")


def shown_worse(comparison) -> tuple | None:
  """The key of the cell a comparison shows worse than the other (a when `worse`, b when `better`), or None."""
  if comparison["verdict"] == stats.BETTER:
    return cells_lib.key_of(comparison["b"])
  if comparison["verdict"] == stats.WORSE:
    return cells_lib.key_of(comparison["a"])
  return None


def linked(keys, comparisons) -> bool:
  """Whether `comparisons` join every cell key of `keys` to every other, directly or through other keys of `keys`."""
  keys = set(keys)
  reached, frontier = set(), [next(iter(keys))] if keys else []
  while frontier:
    key = frontier.pop()
    if key in reached:
      continue
    reached.add(key)
    for c in comparisons:
      a, b = cells_lib.key_of(c["a"]), cells_lib.key_of(c["b"])
      if key in (a, b) and {a, b} <= keys:
        frontier.append(b if key == a else a)
  return reached == keys


def deciding(candidates, comparisons) -> list[dict]:
  """The comparisons a budget's case rests on: with one candidate (a key), its own, read as candidate − other; with
  more, those between two candidates."""
  pairs = [(c, cells_lib.key_of(c["a"]), cells_lib.key_of(c["b"])) for c in comparisons]
  if len(candidates) == 1:
    return [c if a == candidates[0] else stats.flip(c) for c, a, b in pairs if candidates[0] in (a, b)]
  return [c for c, a, b in pairs if {a, b} <= set(candidates)]


def case(candidates, comparisons) -> str:
  """`BEST`, `EQUIVALENT` or `NOT_SEPARATED` (the module docstring) for candidate keys and the budget's comparisons."""
  decide = deciding(candidates, comparisons)
  if len(candidates) == 1 and decide and all(c["verdict"] == stats.BETTER for c in decide):
    return BEST
  if len(candidates) >= 2 and all(c["verdict"] == stats.EQUIVALENT for c in decide) and linked(candidates, decide):
    return EQUIVALENT
  return NOT_SEPARATED


def break_even(candidates, seconds_per_volume: float) -> dict | None:
  """At equal Dice, what the candidate opening the fewest volumes saves over the one opening the most.

  Args:
    candidates: the budget's candidate cells (`cells.summarise`), highest mean first.
    seconds_per_volume: the cost model's seconds per volume opened.

  Returns:
    {`more`, `fewer` (labels), `volumes` (saved: s1 - s2), `seconds` ((s1 - s2) x seconds_per_volume; None when the
    cost model charges nothing per volume)}; None when the candidates open equally many volumes (or there are none).
  """
  opened = [(c.get("annotated_volumes") or c["volumes"], c) for c in candidates]
  if not opened:
    return None
  most = max(opened, key=lambda item: item[0])
  fewest = min(opened, key=lambda item: item[0])
  if most[0] == fewest[0]:
    return None
  saved = most[0] - fewest[0]
  return {"more": cells_lib.label(most[1]), "fewer": cells_lib.label(fewest[1]), "volumes": saved,
          "seconds": saved * seconds_per_volume if seconds_per_volume > 0 else None}


def held_back(keys, comparisons) -> list:
  """The cell keys among `keys` that select in rounds and are not candidates whatever their mean: the control
  `passive`, and a model-based selection that no comparison shows better than its control on the same schedule
  (`comparisons.is_control`). Choosing in rounds costs a training per round and a wait for the annotators; it is
  recommended only where it has been shown to pay."""
  paid = {cells_lib.key_of(c["a"]) for c in comparisons if c["verdict"] == stats.BETTER and
          comparisons_lib.is_control(c["a"]["selection"], c["b"]["selection"])}
  return [key for key in keys if cells_lib.in_rounds(cells_lib.key_field(key, "selection")) and key not in paid]


def _sized(entry) -> bool:
  """Whether a family's `comparisons.seeds_needed` entry says how many seeds it needs (a number, or more than any)."""
  return entry["seeds_needed"] is not None or entry["unreachable"]


def budget_recommendation(cells, comparisons, *, margin: float, seconds_per_volume: float = 0.0,
                          needed=None, options=None) -> dict:
  """The recommendation at one (dims, budget).

  Args:
    cells: the budget's sparse cells with a defined mean (`cells.summarise`), two or more.
    comparisons: the pre-specified comparisons between them (`comparisons.paired_comparisons`).
    margin: the equivalence margin in Dice.
    seconds_per_volume: the cost model's seconds per volume opened (for `break_even`).
    needed: `comparisons.seeds_needed`'s table, for each family's size m; None: no seeds are pointed at.
    options: the statistics options (`comparisons.stats_options`); None: the defaults.

  Returns:
    dict of `dims`, `budget`, `case`, `recommended` (the candidate with the highest mean; None when every cell is
    shown worse than another), `candidates` ([{the `cells.CELL_KEY` fields, `cell` (label), `dice_mean`, `cost`}],
    highest mean first, the cheaper first on a tie), `shown_worse` ({label: labels of the cells it is shown worse
    than}), `held_back` (labels of the cells in rounds held back, `held_back`, and not shown worse), `pending`
    (labels, with their seeds so far, of the cells still missing planned seeds: they take no part until these are
    in), `counts` ({verdict: the `deciding` comparisons}), `seeds` (the seeds of the unresolved ones among them:
    `inconclusive` or `underpowered`), `seeds_needed` ({family of an unresolved comparison: the `_SEEDS_FIELDS` of
    `comparisons.seeds_needed` on the unresolved comparisons of that family alone, at the family's m in `needed`: the
    seeds that would separate these candidates, from their own spread, not the family's pooled one}),
    `break_even`, `against_one_shot` (when the recommendation selects in rounds: its comparisons with one-shot
    random and fixed interval at its allocation, `findings.evidence`; what choosing in rounds gains over what a team
    would otherwise do), `allocation_family` ("allocation" in 2D, "allocation,
    3D" in 3D: `comparisons.dims_family`), `agreement` (`AGREEMENT`'s word for finding 1's rule on that family's
    comparisons here; None without any), `allocation` (those comparisons, `findings.evidence`) and `margin`.
  """
  by_key = {cells_lib.key_of(c): c for c in cells}

  def label(key):
    return cells_lib.label(by_key[key])

  comparisons = [c for c in comparisons if {cells_lib.key_of(c["a"]), cells_lib.key_of(c["b"])} <= by_key.keys()]
  ordered = sorted(cells, key=lambda c: (-c["dice_mean"], c["cost"], cells_lib.sort_key(cells_lib.key_of(c))))
  held = held_back([cells_lib.key_of(c) for c in ordered], comparisons)
  # A cell still missing planned seeds waits for them (its comparisons are `pending`).
  waiting = [cells_lib.key_of(c) for c in ordered if c.get("missing_seeds")]
  # A cell held back or waiting takes no part: it neither rules another out nor counts in the case.
  out = set(held) | set(waiting)
  among = [c for c in comparisons if not {cells_lib.key_of(c["a"]), cells_lib.key_of(c["b"])} & out]
  beaten = {}
  for c in among:
    loser = shown_worse(c)
    if loser is not None:
      a, b = cells_lib.key_of(c["a"]), cells_lib.key_of(c["b"])
      beaten.setdefault(loser, []).append(a if loser == b else b)
  candidates = [cells_lib.key_of(c) for c in ordered
                if cells_lib.key_of(c) not in beaten and cells_lib.key_of(c) not in out]
  decide = deciding(candidates, among)
  unresolved = [c for c in decide if c["verdict"] in (stats.INCONCLUSIVE, stats.UNDERPOWERED)]
  family = comparisons_lib.dims_family("allocation", cells[0]["dims"])
  allocation = [c for c in comparisons if c.get("family") == family]
  verdict = findings_lib.direction_verdict(allocation) if allocation else None
  counts = dict.fromkeys(stats.VERDICTS, 0)
  for c in decide:
    counts[c["verdict"]] += 1
  sizes = {c["family"]: needed[c["family"]]["comparisons"] for c in unresolved if c.get("family") in (needed or {})}
  own = comparisons_lib.seeds_needed([c for c in unresolved if c.get("family") in sizes], options, sizes)
  return {
      "dims": cells[0]["dims"], "budget": cells[0]["budget"], "case": case(candidates, among),
      "recommended": label(candidates[0]) if candidates else None,
      "candidates": [{**dict(zip(cells_lib.CELL_KEY, key)), "cell": label(key), "dice_mean": by_key[key]["dice_mean"],
                      "cost": by_key[key]["cost"]} for key in candidates],
      "shown_worse": {label(key): [label(k) for k in dict.fromkeys(beaten[key])]
                      for key in map(cells_lib.key_of, ordered) if key in beaten},
      "held_back": [label(key) for key in held if key not in beaten and key not in waiting],
      "pending": [f"{label(key)} ({by_key[key]['n_seeds']} of "
                  f"{by_key[key]['n_seeds'] + len(by_key[key]['missing_seeds'])} seeds)" for key in waiting],
      "counts": {k: n for k, n in counts.items() if n},
      "seeds": sorted({c["n_pairs"] for c in unresolved}),
      "seeds_needed": {family: {k: e[k] for k in _SEEDS_FIELDS} for family, e in own.items()
                       if e["pooled_from"] == "family" and _sized(e)},
      "break_even": break_even([by_key[key] for key in candidates], seconds_per_volume),
      "against_one_shot": [findings_lib.evidence(c) for c in comparisons if candidates
                           and cells_lib.in_rounds(cells_lib.key_field(candidates[0], "selection"))
                           and candidates[0] in (cells_lib.key_of(c["a"]), cells_lib.key_of(c["b"]))
                           and comparisons_lib.is_against_one_shot(c["a"]["selection"], c["b"]["selection"])],
      "allocation_family": family, "agreement": AGREEMENT.get(verdict, verdict),
      "allocation": [findings_lib.evidence(c) for c in allocation], "margin": margin}


def recommendations(comparisons, cells, gate, options=None, *, cost=None, needed=None, unconverged=None) -> list[dict]:
  """The recommendation at every (dims, budget) with two or more sparse cells of defined mean Dice, in table order.

  Args:
    comparisons: `comparisons.paired_comparisons`' output.
    cells: `cells.summarise`'s output.
    gate: the trust gate (`findings.trust_gate`).
    options: the statistics options (`comparisons.stats_options`); None: the defaults.
    cost: the annotation cost model; None: `cells.DEFAULT_COST`.
    needed: `comparisons.seeds_needed`'s table.
    unconverged: {(dims, budget): its steps check's verdict} of the budgets whose check says more steps are needed
      or is pending (`steps.steps_check`).

  Returns:
    One `budget_recommendation` per budget, with `case_without_gate` and `agreement_without_gate`: when the trust
    gate is closed, `case` and `agreement` (where there is one) are "inconclusive: undertrained"; else, at an
    `unconverged` budget, "inconclusive: more steps needed" or "inconclusive: steps check pending"; else, where cells
    still miss planned seeds, `case` (not `agreement`, which rests on the allocation comparisons alone) is
    "inconclusive: seeds pending".
  """
  margin = comparisons_lib.stats_options(options)["margin"]
  cost = cells_lib.DEFAULT_COST if cost is None else cost
  budgets = {}
  for cell in cells:
    if not cell["reference"] and not math.isnan(cell["dice_mean"]):
      budgets.setdefault((cell["dims"], cell["budget"]), []).append(cell)
  out = []
  for (dims, budget), members in budgets.items():
    if len(members) < 2:
      continue
    here = [c for c in comparisons if (c["a"]["dims"], c["a"]["budget"]) == (dims, budget)]
    entry = budget_recommendation(members, here, margin=margin, seconds_per_volume=cost["seconds_per_volume"],
                                  needed=needed, options=options)
    entry.update(case_without_gate=entry["case"], agreement_without_gate=entry["agreement"])
    steps_held = {steps_lib.MORE: MORE_STEPS, steps_lib.PENDING: STEPS_PENDING}.get((unconverged or {}).get(
        (dims, budget)))
    held = UNDERTRAINED if gate["undertrained"] else steps_held
    if held:
      entry["case"] = held
      entry["agreement"] = None if entry["agreement"] is None else held
    elif entry["pending"]:  # cells still missing planned seeds may change the case when they arrive; the agreement
      entry["case"] = findings_lib.SEEDS_PENDING  # rests on the allocation comparisons, pending or not, as they are
    out.append(entry)
  return out
