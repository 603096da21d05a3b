"""Writes the study report of one or several runs: summary.md, summary.csv, findings.json and the figures.

    python -m slicejax.report --workdir=runs/a [--workdir=runs/b ...] [--out=DIR]
        [--seconds_per_volume=60 --seconds_per_slice=20]

Every file written here is replaced atomically (`slicejax.files`).
"""

import json
import math
import os
import pathlib

from absl import flags
from absl import logging
import numpy as np

from slicejax.errors import exit_with
from slicejax.errors import InputError
from slicejax import files
from slicejax.report import cells as cells_lib
from slicejax.report import comparisons as comparisons_lib
from slicejax.report import figures
from slicejax.report import findings as findings_lib
from slicejax.report import recommendations
from slicejax.report import render
from slicejax.report import runs
from slicejax.report import steps


def write_summary(workdir, rows, options=None, *, cost=None, preamble: str = "", document=None,
                  launches=()) -> None:
  """Writes the study report of `rows` into `workdir`, each file replaced atomically.

  - `summary.md`: the rules (`statistics.rules_markdown`), the trust gate, the checks (the A/A comparisons,
    `comparisons.a_a_checks`, and the steps check, `steps.steps_check`), the findings, the cells (mean ± std over
    seeds, surface metrics, flags), the reference, the pre-specified comparisons with intervals, raw and adjusted
    p-values and verdicts, the seeds each family needs, the recommendation per budget
    (`recommendations.recommendations`) and the annotation cost view.
  - `summary.csv`: one line per cell with plain numbers (booleans as 0/1, missing values empty).
  - `findings.json`: `findings`, `trust_gate`, `a_a_checks`, `steps_check`, `seeds_needed`, `recommendations`,
    `comparisons`, `options` and `cost`.
  - figures (`slicejax.report.figures`): `dice_vs_allocation.png`, `dice_vs_budget.png`, `forest.png`,
    `dice_per_class.png`, `dice_vs_cost.png`, `learning_curves.png`.
  Everything but the steps check and the compute used is made of the study's rows (`steps.study_rows`).

  Args:
    workdir: an existing folder.
    rows: result rows (`slicejax.report.cells`), of every step count (`runs.read_runs`).
    options: the statistics options (`comparisons.stats_options`); None: the defaults.
    cost: the annotation cost model; None: `cells.DEFAULT_COST`.
    preamble: markdown put before the summary (e.g. a study's protocol and commands).
    document: also write the summary (with its preamble) to this markdown file, its figure links relative to it.
    launches: the launch records of the runs (`runs.read_launches`): the machines and versions "Compute" names.
  """
  workdir = os.fspath(workdir)
  options = comparisons_lib.stats_options(options)
  cost = dict(cells_lib.DEFAULT_COST if cost is None else cost)
  study = steps.study_rows(rows, options["retrained"])
  cells = cells_lib.summarise(study, cost, options["plateau_tolerance"])
  comparisons = comparisons_lib.paired_comparisons(study, options)
  a_a = comparisons_lib.a_a_checks(study, options)
  steps_check = steps.steps_check(rows, options["steps_tolerance"], options["steps_seeds"], options["retrained"])
  unconverged = {(e["dims"], e["budget"]): e["verdict"] for e in steps_check
                 if e["verdict"] in (steps.MORE, steps.PENDING) and not e["reference"]}
  found = findings_lib.findings(comparisons, cells, options, unconverged)
  gate = findings_lib.trust_gate(cells, options)
  needed = comparisons_lib.seeds_needed(comparisons, options)
  recommended = recommendations.recommendations(comparisons, cells, gate, options, cost=cost, needed=needed,
                                                unconverged=unconverged)
  # As in the recommendation: cells still missing planned seeds (means over other seeds than the rest) and cells in
  # rounds not shown to pay take no part.
  sparse = [cells_lib.key_of(c) for c in cells if not c["reference"]]
  left_out = ({cells_lib.key_of(c) for c in cells if c.get("missing_seeds")}
              | set(recommendations.held_back(sparse, comparisons)))
  frontier = cells_lib.cost_frontier(cells, left_out)
  text = render.summary_markdown(cells, comparisons, found, gate, needed, recommended, frontier, cost, options,
                                 runs.compute_used(rows, launches), checks={"a_a": a_a, "steps": steps_check})
  if preamble:  # the preamble has the document's title
    text = text.removeprefix("# Study summary\n\n")
  pngs = figures.all_figures(cells, comparisons, cost, left_out)
  files.atomic_write(os.path.join(workdir, "summary.md"), preamble + text + render.figure_links(pngs, ""))
  if document is not None:
    prefix = os.path.relpath(workdir, os.path.dirname(os.path.abspath(document)) or ".")
    files.atomic_write(document, preamble + text + render.figure_links(pngs, prefix + "/"))
  files.atomic_write(os.path.join(workdir, "summary.csv"), render.summary_csv(cells))
  files.atomic_write(os.path.join(workdir, "findings.json"), json.dumps(
      {"findings": found, "trust_gate": gate, "a_a_checks": a_a, "steps_check": steps_check, "seeds_needed": needed,
       "recommendations": recommended, "comparisons": comparisons, "options": options, "cost": cost}, indent=1,
      default=_json_value) + "\n")
  for name, png in pngs.items():
    files.atomic_write(os.path.join(workdir, name), png)
  logging.info("wrote the summary of %d rows (%d cells) to %s", len(study), len(cells), workdir)


def _json_value(value):
  if isinstance(value, (np.integer, np.floating)):
    return value.item()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def run(workdirs, out=None, *, seconds_per_volume=None, seconds_per_slice=None, seconds_per_kilopixel=None,
        preamble=None, document=None, families=None, close=False, retrained=None, **options) -> pathlib.Path:
  """Regenerates the report of one or several runs into `out` (default: the only workdir); returns `out`.

  `families`: a JSON file {Holm family: planned comparisons} of a study in progress (`comparisons.stats_options`).
  `close`: report a study stopped short of its planned seeds at the seeds every cell has (`runs.close_seeds`).
  `retrained`: the budgets trained again in full at more steps after their steps check said more steps are needed,
  whose study rows are then those at the longer steps (`steps.study_steps`); by default none: a check never moves a
  budget's rows.
  """
  if not workdirs:
    raise InputError("--workdir", "give at least one run folder")
  if out is None and len(workdirs) > 1:
    raise InputError("--out", "several --workdir merge into one report: say where it goes")
  rows, config = runs.read_runs(workdirs)
  cost = dict(cells_lib.DEFAULT_COST, **(config.get("cost") or {}))
  options = {**(config.get("stats") or {}), **{k: v for k, v in options.items() if v is not None}}
  if families is not None:
    try:
      planned = json.loads(pathlib.Path(families).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
      raise InputError(str(families), f"cannot be read as JSON ({err})") from err
    options["families"] = comparisons_lib.checked_families(planned, str(families))
  options["run_families"] = runs.read_families(workdirs)
  # Several runs' own plans, merged, hold the whole study's only if one run planned it all: said under the comparisons.
  options["plans_merged"] = families is None and sum(runs.read_families([w]) is not None for w in workdirs) > 1
  options["retrained"] = retrained
  options = comparisons_lib.stats_options(options)
  steps.check_declared(rows, options["retrained"])
  if close:
    rows, options["closed"] = runs.close_seeds(rows, options)
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
  if document is not None and not pathlib.Path(document).resolve().parent.is_dir():
    raise InputError(str(document), "its folder does not exist (the report writes the file, not its folder)")
  out = pathlib.Path(out if out is not None else workdirs[0])
  out.mkdir(parents=True, exist_ok=True)
  write_summary(out, rows, options, cost=cost, preamble=text, document=document,
                launches=runs.read_launches(workdirs))
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
  flags.DEFINE_float("steps_tolerance", None, "The steps check's tolerance in Dice; default: the run's config.stats.")
  flags.DEFINE_integer("steps_seeds", None, "Fewest seeds the steps check decides on; default: the run's "
                       "config.stats.")
  flags.DEFINE_string("preamble", None, "A markdown file put before the summary (a study's protocol and commands).")
  flags.DEFINE_string("document", None, "Also write the summary, after the preamble, to this markdown file.")
  flags.DEFINE_string("families", None, "A JSON file {Holm family: planned comparisons} of a study in progress: each "
                      "family is adjusted over its planned size, comparisons not yet run counted as p = 1.")
  flags.DEFINE_list("retrained", [], "Budgets trained again in full at more steps after their steps check said more "
                    "steps are needed, declared once the retraining has rows: their study rows are those at the "
                    "longer steps (comma-separated; every dims with that budget).")
  flags.DEFINE_bool("close", False, "Close a study stopped for good short of its planned seeds: report it at the "
                    "seeds every cell has, as if the runs planned no other.")


def _budgets(values) -> list:
  """`--retrained`'s values as integers."""
  try:
    return [int(v) for v in values]
  except ValueError as err:
    raise InputError("--retrained", f"must list budgets (integers), got {','.join(values)}") from err


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    out = run(f.workdir or [], f.out, seconds_per_volume=f.seconds_per_volume, seconds_per_slice=f.seconds_per_slice,
              seconds_per_kilopixel=f.seconds_per_kilopixel, preamble=f.preamble, document=f.document,
              families=f.families, close=f.close, retrained=_budgets(f.retrained),
              alpha=f.alpha, margin=f.margin, min_seeds=f.min_seeds, steps_tolerance=f.steps_tolerance,
              steps_seeds=f.steps_seeds)
  except InputError as err:
    exit_with(err)
  print(f"report written to {out}")
