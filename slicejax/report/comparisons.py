"""Paired comparisons of cells fixed in advance, Holm-adjusted within each family, and the seeds each family needs.

A comparison (`slicejax.report.statistics`) reports a - b, paired by seed and test volume, so a positive difference
means a is better; the fully annotated reference is summarised but never compared. A cell that selects in rounds is
compared with the one-shot selections of the same budget and allocation like any other selection, in Holm families
of its own: against its control `passive` ("selection, rounds, control"), against one-shot random and fixed interval
("selection, rounds, one-shot"), and the rest ("selection, rounds"). 3D comparisons never share a family with 2D ones. Fixed interval against random at one
slice per volume is an A/A check (`is_a_a`), in no family: `a_a_checks`.
"""

import math

from absl import logging

from slicejax.errors import InputError
from slicejax.report import cells as cells_lib
from slicejax.report import statistics as stats


def _groups(keys, fields) -> list[list[tuple]]:
  """Splits cell keys into groups that agree on `fields`; each group sorted like the tables."""
  groups = {}
  for key in sorted(keys, key=cells_lib.sort_key):
    groups.setdefault(tuple(cells_lib.key_field(key, name) for name in fields), []).append(key)
  return list(groups.values())


def _compare(family, cells, a, b, options):
  if not set(cells[a]) & set(cells[b]):
    logging.info("no shared seeds for the %s comparison %s vs %s", family, a, b)
    return None
  missing = {side: cells_lib.missing_seeds(cells[key]) for side, key in (("a", a), ("b", b))}
  planned = (set(cells[a]) | set(missing["a"])) & (set(cells[b]) | set(missing["b"]))
  return {"comparison": family, "a": dict(zip(cells_lib.CELL_KEY, a)), "b": dict(zip(cells_lib.CELL_KEY, b)),
          **stats.compare(cells[a], cells[b], alpha=options["alpha"], margin=options["margin"]),
          "pending": bool(missing["a"] or missing["b"]), "planned_seeds": len(planned)}


def dims_family(name: str, dims: int) -> str:
  """The Holm family `name` of 2D comparisons for `dims`: the name itself in 2D, "name, 3D" in 3D."""
  return name if dims == 2 else f"{name}, {dims}D"


def holm_family(comparison) -> str:
  """The family a comparison's Holm adjustment runs in: exactly the comparisons one finding's verdict rests on.

  "allocation": random and fixed interval (finding 1's verdict), "allocation, ual" and other selections apart;
  "selection, ual": UAL against the others (finding 2), "selection, rounds, control": a model-based selection in
  rounds against the control `passive` on the same schedule (`is_control`), "selection, rounds, one-shot": a
  model-based selection in rounds against one-shot random or fixed interval (`is_against_one_shot`), "selection,
  rounds": the other comparisons of a selection in rounds, "selection": the other pairs; "interpolation, 2D" (finding 3) and "interpolation, 3D".
  A 3D comparison's family carries ", 3D" (`dims_family`: "allocation, 3D", "selection, ual, 3D"), so 3D never
  adjusts or decides with 2D.
  """
  kind, a, b = comparison["comparison"], comparison["a"], comparison["b"]
  if kind == "interpolation":
    return f"interpolation, {a['dims']}D"
  if kind == "allocation":
    name = kind if a["selection"] in ("random", "fixed") else f"allocation, {a['selection']}"
  elif is_control(a["selection"], b["selection"]):
    name = "selection, rounds, control"
  elif is_against_one_shot(a["selection"], b["selection"]):
    name = "selection, rounds, one-shot"
  elif cells_lib.in_rounds(a["selection"]) or cells_lib.in_rounds(b["selection"]):
    name = "selection, rounds"
  else:
    name = "selection, ual" if "ual" in (a["selection"], b["selection"]) else kind
  return dims_family(name, a["dims"])


def is_control(a: str, b: str) -> bool:
  """Whether cells of selections a and b ("entropy r2", "passive r2") are a model-based selection in rounds against
  its control `passive` on the same schedule (rounds and allocation rule)."""
  schedule = lambda selection: selection.split(" ", 1)[1] if cells_lib.in_rounds(selection) else None
  methods = {a.split(" ", 1)[0], b.split(" ", 1)[0]}
  return schedule(a) is not None and schedule(a) == schedule(b) and "passive" in methods and len(methods) == 2


def is_against_one_shot(a: str, b: str) -> bool:
  """Whether cells of selections a and b are a model-based selection in rounds ("entropy r2", not the control
  `passive`) against one-shot random or fixed interval: the comparisons that say whether choosing in rounds beats
  the one-shot selections a team would otherwise use."""
  model_based = lambda s: cells_lib.in_rounds(s) and not s.startswith("passive ")
  return (model_based(a) and b in ("random", "fixed")) or (model_based(b) and a in ("random", "fixed"))


def is_a_a(kind: str, a: tuple, b: tuple) -> bool:
  """Whether the comparison `kind` of cell keys a and b is an A/A check: fixed interval against random at one slice
  per volume. With one slice, fixed interval's offset is uniform over the whole candidate range
  (`slicejax.study.selection.fixed`), so it picks a uniformly random candidate slice, as `random` does, in the same
  volumes: the two cells are two draws of one distribution."""
  selections = {cells_lib.key_field(a, "selection"), cells_lib.key_field(b, "selection")}
  return kind == "selection" and selections == {"fixed", "random"} and cells_lib.key_field(a, "slices_per_volume") == 1


def stats_options(options=None) -> dict:
  """The statistics options (`stats.DEFAULTS` updated with `options`, e.g. a run's `config.stats`), checked.

  Besides the config's keys, `families`: {Holm family: planned number of comparisons} of a study that is not
  complete yet (the report's `--families`), or None; each family then adjusts over its planned size
  (`stats.holm`). And `run_families`: the plan the runs' own grids hold (`runs.read_families`), or None; without
  `families`, a family that has made fewer comparisons than it plans counts the missing ones as p = 1. And
  `retrained`: the budgets declared trained again in full at more steps (`steps.study_steps`), by default none.

  Raises:
    InputError: a value out of its range.
  """
  o = dict(stats.DEFAULTS, **{k: v for k, v in (options or {}).items() if k in stats.DEFAULTS})
  o["families"] = checked_families((options or {}).get("families"))
  o["run_families"] = checked_families((options or {}).get("run_families"), "families.json")
  for family, size in (o["run_families"] or {}).items() if o["families"] is not None else ():
    if o["families"].get(family, 0) < size:  # the whole study's plan holds every run's
      raise InputError("--families", f"plans {o['families'].get(family, 0)} comparisons of family {family!r}, fewer "
                       f"than the {size} a run's own grid plans (its families.json)")
  o["plans_merged"] = bool((options or {}).get("plans_merged"))  # several runs' plans, no `families` (`summary.run`)
  o["closed"] = (options or {}).get("closed")  # the seeds a report closes its study at (`runs.close_seeds`), or None
  # Budgets declared trained again in full at more steps (the report's `--retrained`; `steps.study_steps`).
  o["retrained"] = tuple((options or {}).get("retrained") or ())
  if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in o["retrained"]):
    raise InputError("--retrained", f"must list budgets (integers >= 1), got {list(o['retrained'])}")
  checks = {"alpha": (0 < o["alpha"] < 0.5, "in (0, 0.5)"), "margin": (o["margin"] > 0, "> 0"),
            "min_seeds": (int(o["min_seeds"]) == o["min_seeds"] and o["min_seeds"] >= 2, "an integer >= 2"),
            "power": (0 < o["power"] < 1, "in (0, 1)"),
            "plateau_tolerance": (o["plateau_tolerance"] >= 0, ">= 0"),
            "max_improving_share": (0 <= o["max_improving_share"] <= 1, "in [0, 1]"),
            "steps_tolerance": (o["steps_tolerance"] > 0, "> 0"),
            "steps_seeds": (int(o["steps_seeds"]) == o["steps_seeds"] and o["steps_seeds"] >= 1, "an integer >= 1")}
  for key, (ok, want) in checks.items():
    if not ok:
      raise InputError(f"config.stats.{key}", f"must be {want}, got {o[key]}")
  return o


def checked_families(families, where="--families"):
  """`families` ({Holm family: planned comparisons}, or None), checked.

  Raises:
    InputError: not a mapping of names to integers >= 1; the message names `where` (the flag, or the file).
  """
  if families is not None and not (isinstance(families, dict) and all(
      isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 1 for k, v in families.items())):
    raise InputError(where, f"must map family names to planned comparisons (integers >= 1), got {families!r}")
  return families


def _sparse_cells(rows) -> dict:
  return {key: by_seed for key, by_seed in cells_lib.by_cell(rows).items()
          if not cells_lib.key_field(key, "reference")}


def _pairs(cells) -> list[tuple]:
  """Every pre-specified (kind, a, b) between the cells (keys), the A/A checks included, in table order."""
  pairs = []
  for group in _groups(cells, ("dims", "budget", "selection", "interpolation")):
    if cells_lib.key_field(group[0], "interpolation"):
      continue
    fewest = min(group, key=lambda key: cells_lib.key_field(key, "slices_per_volume"))
    pairs += [("allocation", fewest, key) for key in group if key != fewest]
  for group in _groups(cells, ("dims", "budget", "volumes", "slices_per_volume", "interpolation")):
    ordered = sorted(group, key=cells_lib.sort_key)
    for i, a in enumerate(ordered):
      for b in ordered[i + 1:]:
        # a round method against its control: method - passive
        control = cells_lib.key_field(b, "selection").startswith("passive ")
        pairs.append(("selection", a, b) if control and is_control(*(cells_lib.key_field(k, "selection")
                                                                       for k in (a, b))) else ("selection", b, a))
  for group in _groups(cells, ("dims", "budget", "volumes", "slices_per_volume", "selection")):
    by_interpolation = {cells_lib.key_field(key, "interpolation"): key for key in group}
    if len(by_interpolation) == 2:
      pairs.append(("interpolation", by_interpolation[True], by_interpolation[False]))
  return pairs


def paired_comparisons(rows, options=None) -> list[dict]:
  """The pre-specified comparisons of a study, paired by seed and test volume, with their family's adjustment.

  Families (fixed before any result is seen; `stats.rules_markdown`):
  - "allocation": within one (dims, budget, selection), without interpolation, the allocation with the fewest slices
    per volume as a against every other allocation as b;
  - "selection": within one (dims, budget, allocation, interpolation), every pair of selection methods, the later
    of `random`, `fixed`, `ual` as a (ual - random, ual - fixed, fixed - random), less fixed - random at one slice
    per volume (`is_a_a`: an A/A check, `a_a_checks`);
  - "interpolation": within one (dims, budget, allocation, selection), interpolation on against off.
  Holm's adjustment runs within each comparison's `holm_family`, the comparisons one finding rests on
  (`stats.adjust_family`).

  Args:
    rows: result rows (`slicejax.report.cells`); the reference rows are ignored.
    options: the statistics options (`stats_options`); None: the defaults.

  Returns:
    One dict per comparison with at least one shared seed: `comparison` (the family), `a` and `b` (the cells'
    `cells.CELL_KEY` fields), the fields of `stats.compare`, `pending` (a cell still misses seeds its runs plan,
    `cells.missing_seeds`: the comparison waits for them, `stats.adjust_family`), `planned_seeds` (the seeds the two
    cells will share), `family` (`holm_family`), `p_adjusted`, `p_equivalence_adjusted`, `family_size` and
    `verdict`.

  Raises:
    InputError: an option out of range, or a row lacks a required field.
  """
  options = stats_options(options)
  cells = _sparse_cells(rows)
  pairs = [(kind, a, b) for kind, a, b in _pairs(cells) if not is_a_a(kind, a, b)]
  comparisons = [c for c in (_compare(kind, cells, a, b, options) for kind, a, b in pairs) if c is not None]
  for c in comparisons:
    c["family"] = holm_family(c)
  planned = options["families"]
  for family in dict.fromkeys(c["family"] for c in comparisons):
    members = [c for c in comparisons if c["family"] == family]
    if planned is not None and family not in planned:
      raise InputError("--families", f"the rows make comparisons of family {family!r}, which the plan does not list")
    if planned is not None and len(members) > planned[family]:
      raise InputError("--families", f"family {family!r} has {len(members)} comparisons in the rows, more than the "
                       f"{planned[family]} planned")
    stats.adjust_family(members, alpha=options["alpha"], min_seeds=options["min_seeds"],
                        unmade=unmade(family, len(members), options))
  return comparisons


def unmade(family: str, made: int, options) -> int:
  """The comparisons of `family` that the plan holds beyond the `made` ones: those whose cells have no rows yet (or
  no shared seed), each counted in the family as p = 1 (`stats.adjust_family`). The plan is the whole study's
  (`families`, the report's `--families`) where given, else the runs' own grids' (`run_families`)."""
  plan = options.get("families") or options.get("run_families") or {}
  return max(0, plan.get(family, 0) - made)


def a_a_checks(rows, options=None) -> list[dict]:
  """The A/A checks of a study (`is_a_a`: fixed - random at one slice per volume), in no Holm family and no finding.

  Returns:
    One dict per check with at least one shared seed: `comparison` ("selection"), `a`, `b`, the fields of
    `stats.compare`, `pending`, `planned_seeds` and `excludes_zero` (whether its 1 - alpha interval excludes 0, a
    warning that the intervals are too narrow; None without an interval, below `min_seeds` seeds or while pending:
    not tested).
  """
  options = stats_options(options)
  cells = _sparse_cells(rows)
  checks = [c for c in (_compare(kind, cells, a, b, options) for kind, a, b in _pairs(cells) if is_a_a(kind, a, b))
            if c is not None]
  for c in checks:  # no test below the seeds a verdict needs, or while a cell waits for planned seeds
    tested = c["ci_low"] is not None and c["n_pairs"] >= options["min_seeds"] and not c["pending"]
    c["excludes_zero"] = bool(c["ci_low"] > 0 or c["ci_high"] < 0) if tested else None
  return checks


def seeds_needed(comparisons, options=None, family_sizes=None) -> dict:
  """The a-priori seeds of each Holm family: 80% (`stats.power`) to detect a difference of the margin at the
  family's Bonferroni level alpha / m, from the family's pooled variability (`stats.pooled_variability`, its
  per-seed SD taken at the upper confidence limit), and never fewer than `min_seeds`.

  Args:
    comparisons: `paired_comparisons`' output (e.g. a pilot's).
    options: the statistics options.
    family_sizes: {family: m} of the grid being sized (e.g. `grid_family_sizes`); None: the comparisons' own
      families, each at its planned size when `options` holds the planned `families`, else at the number of its
      comparisons. A family without comparisons of its own is sized from all of them pooled (`pooled_from` says
      so).

  Returns:
    {family: {`seeds_needed` (int, or None without two seeds or when unreachable), `unreachable` (no number of
    seeds up to `stats.MAX_SEEDS` is enough), `unreachable_by` (then `stats.unreachable_by`: "volumes" or "seeds";
    else None), `comparisons` (m), `alpha`, `pooled_from` ("family" or "all"), `seeds_now` (the most seeds one of
    the family's comparisons shares; None without comparisons of its own), `power_now` (`stats.power` there, on the
    same basis as `seeds_needed`: what the family's tests can detect now; None likewise), and
    `stats.pooled_variability`'s fields}}.
  """
  options = stats_options(options)
  families = {}
  for c in comparisons:
    families.setdefault(c.get("family") or holm_family(c), []).append(c)
  if family_sizes is not None:
    sizes = family_sizes
  else:  # the families' planned sizes (`--families` or the runs' own), else their own
    sizes = {f: len(m) + unmade(f, len(m), options) for f, m in families.items()}
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
    limit = None if needed != math.inf else stats.unreachable_by(
        pooled["volume_var"], pooled["num_volumes"], options["margin"], level, options["power"])
    now = max((c["n_pairs"] for c in families.get(family, ())), default=None)
    power_now = None if pooled is None or not now or now < 2 else stats.power(
        now, pooled["seed_sd_upper"], pooled["volume_var"], pooled["num_volumes"], options["margin"], level)
    out[family] = {"seeds_needed": None if needed == math.inf else needed, "unreachable": needed == math.inf,
                   "unreachable_by": limit, "comparisons": m, "alpha": level, "pooled_from": source,
                   "seeds_now": now, "power_now": power_now, **(pooled or {})}
  return out


def grid_family_sizes(points) -> dict:
  """{Holm family: comparisons} that a grid's points will make (`paired_comparisons`' pairs between their cells), for
  sizing its seeds before it runs and as the plan a report of the unfinished run adjusts over (`stats_options`'
  `run_families`)."""
  cells = {cells_lib.cell_key(p.fields()) for p in points if not p.reference}
  sizes = {}
  for kind, a, b in _pairs(cells):
    if not is_a_a(kind, a, b):
      family = holm_family({"comparison": kind, "a": dict(zip(cells_lib.CELL_KEY, a)),
                            "b": dict(zip(cells_lib.CELL_KEY, b))})
      sizes[family] = sizes.get(family, 0) + 1
  return sizes
