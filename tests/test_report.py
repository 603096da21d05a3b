"""Tests for slicejax.report: cell statistics, paired comparisons, and the summary files."""

import csv
import json
import logging
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from slicejax.errors import InputError
from slicejax.report import cells as cells_lib
from slicejax.report import comparisons as comparisons_lib
from slicejax.report import findings as findings_lib
from slicejax.report import recommendations
from slicejax.report import render
from slicejax.report import results
from slicejax.report import runs
from slicejax.report import statistics as stats
from slicejax.report import summary



def _row(seed, dice, *, dims=2, budget=8, slices=1, selection="random", interpolation=False, **extra):
  row = {
      "dims": dims, "budget": budget, "volumes": budget // slices, "slices_per_volume": slices, "selection": selection,
      "interpolation": interpolation, "reference": False, "seed": seed, "steps": 100, "dice_mean": dice}
  row.update(extra)
  return row


def _reference(seed, dice, dims=2):
  return {"dims": dims, "budget": 320, "volumes": 10, "slices_per_volume": None, "density": 1.0, "selection": "all",
          "interpolation": False, "reference": True, "seed": seed, "steps": 100, "dice_mean": dice,
          "dice_per_class": {"anterior": dice, "posterior": dice}, "train_seconds": 40.0}


def _grid_rows():
  """A small grid; the dice values are dyadic so that means and stds are exact."""
  return [
      _reference(0, 0.875),
      _row(0, 0.25, slices=2, selection="fixed"),
      _row(0, 0.75, dims=3),
      _row(2, 0.875, slices=2, density=0.0625, train_seconds=30.0),
      _row(0, 0.5, slices=2, interpolation=True, interp_dice=0.75),
      _row(0, 0.5, slices=1, density=0.03125, train_seconds=10.0,
           dice_per_class={"anterior": 0.25, "posterior": 0.75}),
      _row(1, 0.625, slices=1, density=0.03125, train_seconds=20.0,
           dice_per_class={"anterior": 0.5, "posterior": 0.75}),
      _row(2, 0.75, slices=1, density=0.03125, train_seconds=30.0,
           dice_per_class={"anterior": 0.75, "posterior": 0.75}, diverged=False),
      _row(0, 0.5, slices=2, density=0.0625, train_seconds=10.0),
      _row(1, 0.5, slices=2, density=0.0625, train_seconds=20.0, diverged=True, diverged_step=40),
  ]


def _key(cell):
  return tuple(cell[name] for name in cells_lib.CELL_KEY)


def test_summarise_means_std_counts_and_order():
  cells = cells_lib.summarise(_grid_rows())
  assert [_key(cell) for cell in cells] == [
      (2, 8, 8, 1, "random", False, False),
      (2, 8, 4, 2, "random", False, False),
      (2, 8, 4, 2, "random", True, False),
      (2, 8, 4, 2, "fixed", False, False),
      (2, 320, 10, None, "all", False, True),
      (3, 8, 8, 1, "random", False, False),
  ]
  one, two, two_interp, fixed, reference, three_d = cells
  # Dice [0.5, 0.625, 0.75]: mean 0.625, squared deviations 2 * 0.125^2 over n - 1 = 2 -> std 0.125.
  assert (one["n_seeds"], one["seeds"], one["dice_mean"], one["dice_std"]) == (3, [0, 1, 2], 0.625, 0.125)
  assert one["dice_per_class"] == {"anterior": 0.5, "posterior": 0.75}
  assert (one["density"], one["train_seconds"], one["interp_dice"], one["n_diverged"]) == (0.03125, 20.0, None, 0)
  # Dice [0.5, 0.5, 0.875]: mean 0.625, squared deviations 0.015625 + 0.015625 + 0.0625 = 0.09375 over 2.
  assert two["dice_mean"] == 0.625
  assert two["dice_std"] == pytest.approx(math.sqrt(0.046875), rel=1e-15)
  assert (two["n_diverged"], two["density"], two["dice_per_class"]) == (1, 0.0625, {})
  assert (two_interp["n_seeds"], two_interp["dice_std"], two_interp["interp_dice"]) == (1, None, 0.75)
  # Cost model defaults: the cost is the budget.
  assert one["cost"] == 8 and reference["cost"] == 320
  assert (fixed["dice_mean"], fixed["train_seconds"], fixed["density"]) == (0.25, None, None)
  assert (reference["dice_mean"], reference["train_seconds"], reference["density"]) == (0.875, 40.0, 1.0)
  assert three_d["dice_mean"] == 0.75


def test_summarise_later_row_of_a_seed_replaces_the_earlier_one():
  cells = cells_lib.summarise([_row(0, 0.25), _row(1, 0.5), _row(0, 0.75)])
  # Dice [0.75, 0.5]: mean 0.625, std sqrt(2 * 0.125^2 / 1).
  assert (cells[0]["n_seeds"], cells[0]["dice_mean"]) == (2, 0.625)
  assert cells[0]["dice_std"] == pytest.approx(0.125 * math.sqrt(2), rel=1e-15)


def test_a_seed_scoring_0_on_every_class_stays_in_the_mean_and_is_flagged():
  zero, some = {"a": 0.0, "b": 0.0}, {"a": 0.0, "b": 0.5}
  rows = [_row(0, 0.0, dice_per_class=zero), _row(1, 0.25, dice_per_class=some), _row(2, 0.5),
          _row(3, 0.0, dice_per_class=zero)]
  (cell,) = cells_lib.summarise(rows)
  assert (cell["dice_mean"], cell["collapsed_seeds"]) == (0.1875, [0, 3])
  assert render._flags(cell) == "collapsed: seeds 0, 3 of 4 score 0 on every class"
  (cell,) = cells_lib.summarise(rows[1:3])
  assert cell["collapsed_seeds"] == [] and render._flags(cell) == ""


def test_summarise_leaves_out_seeds_without_dice_and_says_so():
  rows = [_row(0, 0.5), _row(1, None), _row(2, 0.75)]
  (cell,) = cells_lib.summarise(rows)
  assert (cell["dice_mean"], cell["undefined_seeds"], cell["n_seeds"]) == (0.625, [1], 3)
  assert render._spread(cell) == "0.625 ± 0.177 (2, 1 left out: Dice undefined)"
  (empty,) = cells_lib.summarise([_row(0, None)])
  assert math.isnan(empty["dice_mean"]) and render._spread(empty) == "— (1, 1 left out: Dice undefined)"


def test_summarise_rejects_rows_without_required_fields():
  row = _row(0, 0.5)
  del row["dice_mean"]
  with pytest.raises(InputError, match="results row 1: missing field"):
    cells_lib.summarise([_row(0, 0.5), row])
  with pytest.raises(InputError, match="slices_per_volume is required"):
    cells_lib.summarise([_row(0, 0.5, slices_per_volume=None)])



def test_a_foreground_cost_needs_every_seeds_foreground():
  cost = {"seconds_per_volume": 0.0, "seconds_per_slice": 1.0, "seconds_per_kilopixel": 2.0}
  rows = [_row(0, 0.5, annotated_foreground=1000), _row(1, 0.5, annotated_foreground=3000)]
  # 8 slices x 1 s + the mean 2,000 foreground pixels x 2 s per 1,000.
  assert cells_lib.summarise(rows, cost)[0]["cost"] == 12.0
  rows.append(_row(2, 0.5))  # written before rows recorded their foreground: no mean over the other seeds
  with pytest.raises(InputError, match=r"2D budget 8 8×1 random: seed\(s\) 2 lack annotated_foreground"):
    cells_lib.summarise(rows, cost)
  assert cells_lib.summarise(rows)[0]["cost"] == 8.0  # a cost model without foreground does not need it

def _find(comparisons, kind, **a_fields):
  found = [c for c in comparisons if c["comparison"] == kind and all(c["a"][k] == v for k, v in a_fields.items())]
  assert len(found) == 1, found
  return found[0]


def test_allocation_comparison_is_the_fewest_slices_against_the_others_with_the_paired_t():
  rows = [_row(seed, 0.5, slices=1) for seed in range(3)]
  rows += [_row(seed, 0.5 + diff, slices=2) for seed, diff in enumerate([0.01, 0.03, 0.02])]
  (allocation,) = comparisons_lib.paired_comparisons(rows)
  # The fewest slices per volume (1) is a, fixed in advance: a - b per seed [-0.01, -0.03, -0.02].
  assert allocation["comparison"] == "allocation"
  assert (allocation["a"]["slices_per_volume"], allocation["b"]["slices_per_volume"]) == (1, 2)
  assert (allocation["n_pairs"], allocation["seeds"], allocation["family_size"]) == (3, [0, 1, 2], 1)
  assert allocation["mean_diff"] == pytest.approx(-0.02, abs=1e-12)
  # Without per-volume results each seed is one value: exactly the paired t-test on the per-seed differences.
  want = scipy_stats.ttest_1samp([-0.01, -0.03, -0.02], 0.0)
  assert allocation["p_value"] == pytest.approx(want.pvalue) == allocation["p_adjusted"]
  assert (allocation["ci_low"], allocation["ci_high"]) == pytest.approx(tuple(want.confidence_interval(0.95)))
  # p = 0.074: not resolved with 3 seeds; the 90% interval [-0.037, -0.003] is not inside +-0.02 either.
  assert allocation["verdict"] == "inconclusive"


def test_allocations_are_compared_with_the_fewest_slices_never_with_the_best():
  rows = [_row(0, 0.5, slices=2), _row(0, 0.75, slices=4), _row(0, 0.625, slices=8)]
  comparisons = comparisons_lib.paired_comparisons(rows)
  assert [(c["comparison"], c["a"]["slices_per_volume"], c["b"]["slices_per_volume"], c["mean_diff"])
          for c in comparisons] == [("allocation", 2, 4, -0.25), ("allocation", 2, 8, -0.125)]
  assert all(c["verdict"] == stats.UNDERPOWERED and c["ci_low"] is None for c in comparisons)


def test_unpaired_seeds_are_excluded_and_too_few_seeds_are_underpowered():
  rows = [_row(seed, 0.5, slices=1) for seed in (1, 2, 5)]
  rows += [_row(seed, dice, slices=2) for seed, dice in [(0, 0.0), (1, 0.75), (2, 0.625), (3, 0.0)]]
  (comparison,) = comparisons_lib.paired_comparisons(rows)
  assert (comparison["seeds"], comparison["n_pairs"], comparison["mean_diff"]) == ([1, 2], 2, -0.1875)
  # Two seeds give an interval but no verdict below the minimum of 3; with min_seeds 2 they do.
  assert comparison["ci_low"] is not None and comparison["verdict"] == "underpowered"
  (two,) = comparisons_lib.paired_comparisons(rows, {"min_seeds": 2})
  assert two["verdict"] == "inconclusive" and two["p_adjusted"] == two["p_value"]
  single = comparisons_lib.paired_comparisons([_row(1, 0.5, slices=1), _row(1, 0.75, slices=2), _row(2, 0.0, slices=2)])
  assert (single[0]["n_pairs"], single[0]["mean_diff"], single[0]["ci_low"]) == (1, -0.25, None)
  assert comparisons_lib.paired_comparisons([_row(0, 0.5, slices=1), _row(1, 0.75, slices=2)]) == []


def test_selection_and_interpolation_comparisons():
  comparisons = comparisons_lib.paired_comparisons(_grid_rows())
  assert [c["comparison"] for c in comparisons] == ["allocation", "selection", "interpolation"]
  allocation = _find(comparisons, "allocation", interpolation=False, selection="random")
  # Random: 1 slice per volume against 2, per seed [0.5 - 0.5, 0.625 - 0.5, 0.75 - 0.875] = [0, 0.125, -0.125].
  assert (allocation["n_pairs"], allocation["mean_diff"]) == (3, 0.0)
  selection = _find(comparisons, "selection", selection="fixed")
  assert selection["b"] == {"dims": 2, "budget": 8, "volumes": 4, "slices_per_volume": 2, "selection": "random",
                            "interpolation": False, "reference": False}
  assert (selection["n_pairs"], selection["mean_diff"]) == (1, -0.25)
  interpolation = _find(comparisons, "interpolation", selection="random")
  assert (interpolation["a"]["interpolation"], interpolation["b"]["interpolation"]) == (True, False)
  assert interpolation["mean_diff"] == 0.0
  assert all(not c["a"]["reference"] and not c["b"]["reference"] for c in comparisons)


def test_holm_runs_within_each_family():
  # Two budgets, 4 seeds: the fewest-slices allocation wins by a steady 0.05 at budget 8 and by a noisy amount at
  # budget 16; the two allocation comparisons form one family of 2.
  rows = []
  for seed, noise in enumerate([0.01, -0.01, 0.02, -0.02]):
    rows += [_row(seed, 0.8, slices=1), _row(seed, 0.75 + noise / 10, slices=2)]
    rows += [_row(seed, 0.8, budget=16, slices=1), _row(seed, 0.78 + 2 * noise, budget=16, slices=2)]
  comparisons = comparisons_lib.paired_comparisons(rows)
  assert [c["family_size"] for c in comparisons] == [2, 2]
  assert [c["p_adjusted"] for c in comparisons] == pytest.approx(stats.holm([c["p_value"] for c in comparisons]))
  assert [c["verdict"] for c in comparisons] == ["better", "inconclusive"]


def test_a_planned_family_adjusts_over_its_planned_size_and_checks_the_rows_against_it(tmp_path):
  rows = []
  for seed, noise in enumerate([0.01, -0.01, 0.02, -0.02]):
    rows += [_row(seed, 0.8, slices=1), _row(seed, 0.75 + noise / 10, slices=2)]
    rows += [_row(seed, 0.8, budget=16, slices=1), _row(seed, 0.78 + 2 * noise, budget=16, slices=2)]
  own = comparisons_lib.paired_comparisons(rows)
  planned = comparisons_lib.paired_comparisons(rows, {"families": {"allocation": 6}})
  assert [c["family_size"] for c in planned] == [6, 6]
  assert [c["p_adjusted"] for c in planned] == pytest.approx(stats.holm([c["p_value"] for c in own], size=6))
  assert all(p["p_adjusted"] > o["p_adjusted"] for p, o in zip(planned, own))  # 6 planned: stricter than 2
  needed = comparisons_lib.seeds_needed(planned, {"families": {"allocation": 6}})
  assert needed["allocation"]["comparisons"] == 6 and needed["allocation"]["alpha"] == pytest.approx(0.05 / 6)
  with pytest.raises(InputError, match="--families: family 'allocation' has 2 comparisons in the rows, more than"):
    comparisons_lib.paired_comparisons(rows, {"families": {"allocation": 1}})
  with pytest.raises(InputError, match="family 'allocation', which the plan does not list"):
    comparisons_lib.paired_comparisons(rows, {"families": {"selection": 3}})
  with pytest.raises(InputError, match="--families: must map family names"):
    comparisons_lib.paired_comparisons(rows, {"families": {"allocation": 0}})
  # The report: the plan comes from a JSON file; a bad one is named.
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text("{}")
  results.append_rows(run / "results.jsonl", rows)
  plan = tmp_path / "families.json"
  plan.write_text(json.dumps({"allocation": 6}))
  summary.run([run], tmp_path / "out", families=plan)
  text = (tmp_path / "out" / "summary.md").read_text()
  assert "`allocation` 2 made of 6 planned (m = 6)." in text and "The plan: the whole study's planned families" in text
  plan.write_text("{not json")
  with pytest.raises(InputError, match=f"{plan}: cannot be read as JSON"):
    summary.run([run], tmp_path / "out", families=plan)
  plan.write_text(json.dumps({"allocation": "six"}))
  with pytest.raises(InputError, match=f"{plan}: must map family names"):
    summary.run([run], tmp_path / "out", families=plan)


def test_a_run_counts_the_comparisons_its_grid_plans_but_has_not_made(tmp_path):
  # Budgets 8 and 16, 4 seeds: 1 x 8 against 2 x 4 at each (2 comparisons made, both tested); budget 32 has 2 seeds so
  # far (made, underpowered). The run's grid plans 4 allocation comparisons: one has no rows yet.
  rows = []
  for seed, noise in enumerate([0.01, -0.01, 0.02, -0.02]):
    rows += [_row(seed, 0.8, slices=1), _row(seed, 0.75 + noise / 10, slices=2)]
    rows += [_row(seed, 0.8, budget=16, slices=1), _row(seed, 0.78 + 2 * noise, budget=16, slices=2)]
    rows += [_row(seed, 0.8, budget=32, slices=1), _row(seed, 0.7, budget=32, slices=2)] if seed < 2 else []
  own = comparisons_lib.paired_comparisons(rows)
  assert [c["family_size"] for c in own] == [2, 2, 2]  # the underpowered comparison is not counted
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text("{}")
  results.append_rows(run / "results.jsonl", rows)
  (run / "families.json").write_text(json.dumps({"allocation": 4, "selection": 3}))
  report = json.loads((summary.run([run], tmp_path / "out") / "findings.json").read_text())
  # m = 2 tested + 1 not made = 3 (the made but underpowered one stays out, as without a plan).
  assert [c["family_size"] for c in report["comparisons"]] == [3, 3, 3]
  assert [c["p_adjusted"] for c in report["comparisons"][:2]] == pytest.approx(
      stats.holm([c["p_value"] for c in own[:2]], size=3))
  text = (tmp_path / "out" / "summary.md").read_text()
  assert "`allocation` 3 made of 4 planned (m = 3)." in text and "The plan: its runs' own grids' families" in text
  assert "merges runs that each wrote their own plan" not in text
  # The seeds a family needs are sized for the whole plan: 4 comparisons.
  assert report["seeds_needed"]["allocation"]["comparisons"] == 4
  # The same plan through the options, or as the whole study's (`--families`): the same m, the same p-values.
  via_run = comparisons_lib.paired_comparisons(rows, {"run_families": {"allocation": 4}})
  via_study = comparisons_lib.paired_comparisons(rows, {"families": {"allocation": 4}})
  assert [c["p_adjusted"] for c in via_run] == [c["p_adjusted"] for c in via_study] == [
      c["p_adjusted"] for c in report["comparisons"]]
  # A plan no larger than what is made changes nothing.
  assert comparisons_lib.paired_comparisons(rows, {"run_families": {"allocation": 3}}) == own
  # The whole study's plan holds every run's: larger, it counts its own unmade comparisons (5 - 3 = 2, m = 4) once;
  # smaller, it is refused.
  wider = comparisons_lib.paired_comparisons(rows, {"families": {"allocation": 5}, "run_families": {"allocation": 4}})
  assert [c["family_size"] for c in wider] == [4, 4, 4]
  with pytest.raises(InputError, match="--families: plans 3 comparisons of family 'allocation', fewer than the 4"):
    comparisons_lib.paired_comparisons(rows, {"families": {"allocation": 3}, "run_families": {"allocation": 4}})
  # Merged runs take each family's largest plan; a run without one adds nothing.
  other = tmp_path / "other"
  other.mkdir()
  (other / "config.json").write_text("{}")
  (other / "families.json").write_text(json.dumps({"allocation": 2, "interpolation, 2D": 1}))
  assert runs.read_families([run, other, tmp_path]) == {"allocation": 4, "selection": 3, "interpolation, 2D": 1}
  assert runs.read_families([tmp_path]) is None
  summary.run([run, other], tmp_path / "merged")
  assert "merges runs that each wrote their own plan" in (tmp_path / "merged" / "summary.md").read_text()
  for bad in ("[1, 2]", '{"allocation": 0}', '{"allocation": true}'):
    (other / "families.json").write_text(bad)
    with pytest.raises(InputError, match=f"{other / 'families.json'}: must map family names"):
      summary.run([run, other], tmp_path / "merged")


def test_stats_options_are_checked():
  with pytest.raises(InputError, match="config.stats.margin"):
    comparisons_lib.paired_comparisons([_row(0, 0.5)], {"margin": 0})
  with pytest.raises(InputError, match="config.stats.alpha"):
    comparisons_lib.paired_comparisons([_row(0, 0.5)], {"alpha": 1.0})


def _volume_row(seed, dice, *, cases=("v0", "v1", "v2", "v3"), **fields):
  """A row with per-volume Dice `dice [V]` (one class), named like a grid point."""
  row = _row(seed, float(np.mean(dice)), **fields)
  row.update(name=f"{row['dims']}d_b{row['budget']}_rho{row['slices_per_volume']}_{row['selection']}"
                  f"{'_interp' if row['interpolation'] else ''}_seed{seed}",
             test_cases=list(cases), per_volume={"dice": [[d] for d in dice]}, test_volumes=len(cases),
             class_volumes={"a": len(cases)})
  return row


def _study_rows():
  """Budget 8, 5 seeds: 1 slice per volume clearly beats 2; ual ties with random; interpolation helps."""
  rows = []
  for seed in range(5):
    wobble = [0.01 * seed, -0.01 * seed, 0.02, -0.02]
    base = [0.8 + w for w in wobble]
    rows.append(_volume_row(seed, base, slices=1))
    rows.append(_volume_row(seed, [b - 0.1 for b in base], slices=2))
    rows.append(_volume_row(seed, [b + (0.01 if i % 2 else -0.01) for i, b in enumerate(base)], slices=1,
                            selection="ual"))
    rows.append(_volume_row(seed, [b - 0.05 for b in base], slices=2, interpolation=True))
  return rows


def test_findings_from_clear_cases():
  rows = _study_rows()
  comparisons = comparisons_lib.paired_comparisons(rows)
  found = findings_lib.findings(comparisons, cells_lib.summarise(rows))
  assert [f["verdict"] for f in found] == ["reproduced", "reproduced", "not reproduced"]
  one, two, three = found
  assert one["counts"]["better"] == 1 and one["best"]["2D budget 8"]["slices_per_volume"] == 1
  assert one["by_dims"]["2D"]["by_selection"]["random"]["verdict"] == "reproduced"
  (evidence,) = one["evidence"]
  assert evidence["mean_diff"] == pytest.approx(0.1) and evidence["ci_low"] == pytest.approx(0.1)
  # UAL against random at 1 slice per volume: differences +-0.01 per volume, mean 0, resolved as equivalent.
  (ual,) = two["evidence"]
  assert ual["a"].endswith("ual") and ual["mean_diff"] == pytest.approx(0.0, abs=1e-12)
  assert ual["verdict"] == "equivalent"
  assert three["counts"]["better"] == 1 and three["evidence"][0]["mean_diff"] == pytest.approx(0.05)


def test_finding_one_names_ual_s_allocations_as_a_family_outside_its_verdict():
  rows = _study_rows() + [dict(r, selection="ual") for r in _study_rows()
                          if r["slices_per_volume"] == 2 and not r["interpolation"]]
  comparisons = comparisons_lib.paired_comparisons(rows)
  assert {c["family"] for c in comparisons if c["comparison"] == "allocation"} == {"allocation", "allocation, ual"}
  found = findings_lib.findings(comparisons, cells_lib.summarise(rows))
  text = "\n".join(render.findings_markdown(found))
  assert "By selection: random: reproduced (1 better); ual (its own family, not in the verdict): " in text
  assert found[0]["verdict"] == "reproduced" and found[0]["counts"]["better"] == sum(found[0]["counts"].values()) == 1


def _undetectable_ual_rows():
  """6 UAL comparisons (3 budgets x ual - random, ual - fixed) whose differences are noise far larger than the
  margin over 3 seeds: nothing can be resolved."""
  rng = np.random.default_rng(3)
  rows = []
  for budget in (8, 16, 32):
    for seed in range(3):
      for selection in ("random", "fixed", "ual"):
        rows.append(_volume_row(seed, list(0.7 + rng.normal(0, 0.15, 4)), budget=budget, slices=2,
                                selection=selection))
  return rows


@pytest.mark.slow
def test_finding_2_with_only_undetectable_differences_is_inconclusive(tmp_path):
  rows = _undetectable_ual_rows()
  comparisons = comparisons_lib.paired_comparisons(rows)
  ual = [c for c in comparisons if "ual" in (c["a"]["selection"], c["b"]["selection"])]
  assert len(ual) == 6 and {c["verdict"] for c in ual} == {"inconclusive"}
  _run_folder(tmp_path / "run", rows)
  out = subprocess.run([sys.executable, "-m", "slicejax.report", f"--workdir={tmp_path / 'run'}"],
                       capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  found = json.loads((tmp_path / "run" / "findings.json").read_text())["findings"]
  assert found[1]["verdict"] == "inconclusive"
  assert "**2. UAL is not better than random or fixed-interval selection at equal slices per volume.** Verdict: " \
         "**inconclusive**." in (tmp_path / "run" / "summary.md").read_text()


def _curve(rise):
  return {"steps": [50, 100], "dice": [0.7, 0.7 + rise]}


def test_the_trust_gate_closes_on_an_undertrained_study():
  rows = [dict(row, val_curve=_curve(0.0)) for row in _study_rows()]
  cells = cells_lib.summarise(rows)
  assert findings_lib.trust_gate(cells)["undertrained"] is False
  # The reference still improving closes the gate, and every finding says so with the reason.
  with_reference = rows + [dict(_reference(0, 0.5), val_curve=_curve(0.02))]
  cells = cells_lib.summarise(with_reference)
  gate = findings_lib.trust_gate(cells)
  assert gate["undertrained"] and "reference is still improving" in gate["reasons"][0]
  assert any("scores below the best sparse cell" in flag for flag in gate["flags"])
  found = findings_lib.findings(comparisons_lib.paired_comparisons(with_reference), cells)
  assert {f["verdict"] for f in found} == {"inconclusive: undertrained"}
  assert found[0]["verdict_without_gate"] == "reproduced"
  # More than 10% of the cells still improving closes it too: 1 of 4 cells is 25%.
  improving = [dict(row, val_curve=_curve(0.02 if row["selection"] == "ual" else 0.0)) for row in _study_rows()]
  gate = findings_lib.trust_gate(cells_lib.summarise(improving))
  assert gate["undertrained"] and gate["reasons"] == ["1 of 4 cells are still improving (more than 10%)"]
  assert findings_lib.trust_gate(cells_lib.summarise(improving), {"max_improving_share": 0.25})["undertrained"] is False


def test_seeds_needed_per_family_from_the_pooled_variability():
  rows = _study_rows()
  comparisons = comparisons_lib.paired_comparisons(rows)
  assert {c["family"] for c in comparisons} == {"allocation", "selection, ual", "interpolation, 2D"}
  needed = comparisons_lib.seeds_needed(comparisons)
  assert set(needed) == {"allocation", "selection, ual", "interpolation, 2D"}
  allocation = needed["allocation"]
  pooled = stats.pooled_variability([c for c in comparisons if c["family"] == "allocation"])
  assert allocation["seed_sd_upper"] == pytest.approx(pooled["seed_sd"] * math.sqrt(
      4 / scipy_stats.chi2.ppf(0.2, 4)))  # the 80% upper confidence limit on 4 degrees of freedom
  want = stats.seeds_needed(pooled["seed_sd_upper"], pooled["volume_var"], 4, 0.02, 0.05, min_seeds=3)
  assert allocation["seeds_needed"] == want and allocation["alpha"] == 0.05 and allocation["comparisons"] == 1


def test_holm_runs_over_exactly_the_comparisons_a_finding_uses():
  # fixed - random comparisons are not part of finding 2's family: they form a family of their own (at 1 slice per
  # volume, an A/A check in none).
  rows = [r for r in _study_rows() if not r["interpolation"]]
  with_fixed = rows + [dict(r, selection="fixed", name=r["name"].replace("random", "fixed"))
                       for r in rows if r["selection"] == "random"]
  ual = [c for c in comparisons_lib.paired_comparisons(rows) if c["family"] == "selection, ual"]
  ual_with_fixed = [c for c in comparisons_lib.paired_comparisons(with_fixed) if c["family"] == "selection, ual"]
  assert len(ual) == 1 and len(ual_with_fixed) == 2
  (fixed_random,) = [c for c in comparisons_lib.paired_comparisons(with_fixed) if c["family"] == "selection"]
  assert fixed_random["a"]["slices_per_volume"] == 2 and fixed_random["family_size"] == 1


def test_cost_frontier_and_cost_model():
  rows = [_row(0, 0.7, budget=8, slices=1), _row(0, 0.75, budget=8, slices=2), _row(0, 0.72, budget=8, slices=8),
          _row(0, 0.8, budget=16, slices=4)]
  # 30 s per volume + 2 s per slice: 8x1 -> 256, 4x2 -> 136, 1x8 -> 46, 4x4 -> 152.
  cells = cells_lib.summarise(rows, {"seconds_per_volume": 30.0, "seconds_per_slice": 2.0})
  assert sorted(cell["cost"] for cell in cells) == [46, 136, 152, 256]
  frontier = cells_lib.cost_frontier(cells)
  assert [(c["cost"], c["dice_mean"]) for c in frontier] == [(46, 0.72), (136, 0.75), (152, 0.8)]


_TIMED = {"seconds_per_volume": 30.0, "seconds_per_slice": 2.0}  # 8 x 1 costs 256 s, 4 x 2 costs 136 s


def _recommend(rows, cost=None):
  """(the recommendations, the section's markdown lines) of `rows` under `cost`, as write_summary computes them."""
  cost = cells_lib.DEFAULT_COST if cost is None else cost
  cells = cells_lib.summarise(rows, cost)
  comparisons = comparisons_lib.paired_comparisons(rows)
  recommended = recommendations.recommendations(comparisons, cells, findings_lib.trust_gate(cells), cost=cost,
                                                needed=comparisons_lib.seeds_needed(comparisons))
  return recommended, render.recommendations_markdown(recommended, cells, cost)


def _allocation_rows(differences, *, base=0.75, offset=0.0):
  """Per seed, 8 x 1 scoring `base + offset` and 4 x 2 scoring `base - d` (d: that seed's difference)."""
  return [r for seed, d in enumerate(differences)
          for r in (_row(seed, base + offset, slices=1), _row(seed, base - d, slices=2))]


def test_a_budget_s_seeds_come_from_its_own_unresolved_comparisons_at_the_family_s_level():
  # Budget 8: differences [1/16, -1/32, 0] (203 seeds alone at level 0.05); budget 16 in the same family spreads ten
  # times wider. The budget-8 entry sizes its own comparison at the family's level 0.05 / 2, not the pooled spread.
  rows = _allocation_rows([1 / 16, -1 / 32, 0])
  rows += [dict(r, budget=16, volumes=16 // r["slices_per_volume"]) for r in _allocation_rows([10 / 16, -10 / 32, 0])]
  recommended, _ = _recommend(rows)
  comparisons = comparisons_lib.paired_comparisons(rows)
  own = stats.pooled_variability([c for c in comparisons if c["a"]["budget"] == 8])
  alone = stats.seeds_needed(own["seed_sd_upper"], 0.0, 1, 0.02, 0.05 / 2, min_seeds=3)
  pooled = comparisons_lib.seeds_needed(comparisons)["allocation"]
  assert recommended[0]["budget"] == 8 and recommended[0]["seeds_needed"]["allocation"]["seeds_needed"] == alone
  assert alone > 203 and (pooled["unreachable"] or pooled["seeds_needed"] > alone)


def test_recommendation_is_best_when_one_allocation_is_clearly_better():
  # 4 x 2 scores 0.125 below 8 x 1, give or take 1/64: differences 0.125 - noise over 5 seeds.
  noise = [0, 1 / 64, -1 / 64, 1 / 128, -1 / 128]
  rows = _allocation_rows([0.125 - n for n in noise]) + [_row(0, 0.5, dims=3)]  # 3D: a budget of one cell
  (entry,), lines = _recommend(rows, _TIMED)
  assert (entry["dims"], entry["case"], entry["recommended"], entry["agreement"]) == (2, "best", "8×1 random",
                                                                                      "MIDL 2025")
  assert entry["shown_worse"] == {"4×2 random": ["8×1 random"]} and entry["break_even"] is None
  # SD of the noise sqrt((2/64^2 + 2/128^2) / 4), over sqrt(5) seeds, times t(0.975, 4) = 2.776: [0.110, 0.140].
  half = scipy_stats.t.ppf(0.975, 4) * math.sqrt((2 / 64 ** 2 + 2 / 128 ** 2) / 4 / 5)
  (evidence,) = entry["allocation"]
  assert (evidence["mean_diff"], evidence["ci_low"], evidence["ci_high"]) == pytest.approx(
      (0.125, 0.125 - half, 0.125 + half))
  assert lines[4:7] == [
      "- **2D, budget 8: best: 8×1 random**. Dice 0.750 ± 0.000 (5), 256 s; better than each cell it was compared "
      "with (1 comparison).",
      "  - Shown worse, left out: 4×2 random (than 8×1 random).",
      "  - Prior studies (the `allocation` family here, finding 1's rule): agrees with the MIDL 2025 study (fewer "
      "slices per volume over more volumes is better). 8×1 random − 4×2 random: Δ +0.125 [+0.110, +0.140], better; "
      "margin 0.02."]
  assert lines[-3:] == ["| dims | budget | candidate | Dice mean ± std (n) | cost s |", "|---|---|---|---|---|",
                        "| 2D | 8 | 8×1 random | 0.750 ± 0.000 (5) | 256 |"]
  assert not any("3D" in line for line in lines)


def test_recommendation_is_an_equivalent_set_with_its_break_even():
  # 6 seeds, differences 1/256 +- 1/128: the 90% interval [-0.003, +0.011] lies inside +-0.02.
  rows = _allocation_rows([(1 if seed % 2 else -1) / 128 for seed in range(6)], offset=1 / 256)
  (entry,), lines = _recommend(rows, _TIMED)
  assert (entry["case"], entry["recommended"], entry["agreement"]) == ("equivalent", "8×1 random", "neither")
  assert [(c["cell"], c["cost"]) for c in entry["candidates"]] == [("8×1 random", 256), ("4×2 random", 136)]
  # At equal Dice, 4 volumes instead of 8 save 4 x 30 s.
  assert entry["break_even"] == {"more": "8×1 random", "fewer": "4×2 random", "volumes": 4, "seconds": 120.0}
  # SD sqrt(6 / 128^2 / 5) over sqrt(6) seeds, times t(0.975, 5) = 2.571: 1/256 -+ 0.009.
  half = scipy_stats.t.ppf(0.975, 5) * math.sqrt(6 / 128 ** 2 / 5 / 6)
  (evidence,) = entry["allocation"]
  assert (evidence["ci_low"], evidence["ci_high"]) == pytest.approx((1 / 256 - half, 1 / 256 + half))
  assert lines[4:7] == [
      "- **2D, budget 8: equivalent within ±0.02: any of 8×1 random, 4×2 random**. Comparisons between them: 1 "
      "equivalent. Highest mean: 8×1 random (Dice 0.754 ± 0.000 (6), 256 s); the cheapest: 4×2 random (136 s).",
      "  - Break-even: at equal Dice, 4×2 random opens 4 fewer volumes than 8×1 random and saves 4 × 30 s = 120 s.",
      "  - Prior studies (the `allocation` family here, finding 1's rule): agrees with neither study (the allocations "
      "are equivalent within the margin). 8×1 random − 4×2 random: Δ +0.004 [-0.005, +0.013], equivalent; margin "
      "0.02."]


def test_recommendation_is_not_separated_under_large_noise_and_points_at_the_seeds():
  # 3 seeds, differences [1/16, -1/32, 0]: mean 1/96, SD 0.048, 95% interval [-0.108, +0.129].
  rows = _allocation_rows([1 / 16, -1 / 32, 0])
  (entry,), lines = _recommend(rows)
  assert (entry["case"], entry["recommended"], entry["agreement"], entry["seeds"]) == (
      "not separated", "8×1 random", "inconclusive", [3])
  pooled = stats.pooled_variability(comparisons_lib.paired_comparisons(rows))
  assert pooled["seed_sd"] == pytest.approx(float(np.std([1 / 16, -1 / 32, 0], ddof=1)))
  # 80% power at 0.05 for a difference of 0.02 with the SD's 80% upper limit, 0.048 x sqrt(2 / chi2(0.2, 2)) = 0.101:
  # about ((1.96 + 0.84) x 0.101 / 0.02)^2 = 200 seeds, 203 under the t distribution.
  needed = stats.seeds_needed(pooled["seed_sd_upper"], 0.0, 1, 0.02, 0.05, min_seeds=3)
  assert entry["seeds_needed"]["allocation"]["seeds_needed"] == needed == 203
  # The default cost model charges nothing per volume: the break-even says so instead of a number.
  assert entry["break_even"] == {"more": "8×1 random", "fewer": "4×2 random", "volumes": 4, "seconds": None}
  assert lines[4:7] == [
      "- **2D, budget 8: not separated at this number of seeds (3)**. Highest mean of the 2 candidates: 8×1 random "
      "(Dice 0.750 ± 0.000 (3), 8 s). Comparisons between them: 1 inconclusive; seeds that would separate them (80% "
      "power at the margin, from these comparisons' own spread, at their family's level): allocation 203.",
      "  - Cost: for the same slices, 4×2 random opens 4 fewer volumes than 8×1 random; the cost model charges "
      "nothing per volume opened (`--seconds_per_volume=...` prices it); their Dice is not shown equal.",
      "  - Prior studies (the `allocation` family here, finding 1's rule): inconclusive. 8×1 random − 4×2 random: "
      "Δ +0.010 [-0.108, +0.129], inconclusive; margin 0.02."]
  # One seed: no interval, and no variability to size the seeds from.
  (entry,), lines = _recommend(_allocation_rows([1 / 16]))
  assert (entry["case"], entry["seeds"], entry["seeds_needed"]) == ("not separated", [1], {})
  assert lines[4].endswith("Comparisons between them: 1 underpowered.")
  assert lines[6].endswith("inconclusive: underpowered. 8×1 random − 4×2 random: Δ +0.062, underpowered; margin 0.02.")


def test_an_undertrained_study_recommends_nothing_but_says_what_the_comparisons_would():
  noise = [0, 1 / 64, -1 / 64, 1 / 128, -1 / 128]
  rows = [dict(row, val_curve=_curve(0.02)) for row in _allocation_rows([0.125 - n for n in noise])]
  (entry,), lines = _recommend(rows)
  assert (entry["case"], entry["case_without_gate"]) == ("inconclusive: undertrained", "best")
  assert (entry["agreement"], entry["agreement_without_gate"]) == ("inconclusive: undertrained", "MIDL 2025")
  assert lines[4].startswith("- **2D, budget 8: inconclusive: undertrained** (the comparisons alone would say: best: "
                             "8×1 random). Dice 0.750 ± 0.000 (5), 8 s;")
  assert "inconclusive: undertrained (the comparisons alone would say: agrees with the MIDL 2025 study" in lines[6]


def _cell_key(volumes, selection="random"):
  """The key of the budget-8 cell of `volumes` volumes (2D, without interpolation)."""
  return (2, 8, volumes, 8 // volumes, selection, False, False)


def _verdict(a, b, verdict):
  """A comparison of the cells with keys a and b (`_cell_key`) that says `verdict` of a - b."""
  return {"a": dict(zip(cells_lib.CELL_KEY, a)), "b": dict(zip(cells_lib.CELL_KEY, b)), "verdict": verdict}


def test_recommendation_cases_from_the_verdicts_alone():
  rho1, rho2, rho4, ual = _cell_key(8), _cell_key(4), _cell_key(2), _cell_key(8, "ual")
  # One candidate, better than each cell it is compared with, whether it is a or b.
  comparisons = [_verdict(rho1, rho2, "better"), _verdict(ual, rho1, "worse")]
  assert recommendations.case([rho1], comparisons) == "best"
  # One candidate with an unresolved comparison of its own is not separated, though that cell (rho4) is shown worse
  # than another (rho2).
  comparisons = [_verdict(rho1, rho2, "better"), _verdict(rho1, rho4, "inconclusive"), _verdict(rho4, rho2, "worse")]
  assert recommendations.case([rho1], comparisons) == "not separated"
  # Equivalences that link every candidate, directly or through another: any of them.
  comparisons = [_verdict(rho1, rho2, "equivalent"), _verdict(rho1, rho4, "equivalent")]
  assert recommendations.case([rho1, rho2, rho4], comparisons) == "equivalent"
  assert recommendations.case([rho1, rho2, rho4, ual], comparisons) == "not separated"  # ual is linked to none
  comparisons.append(_verdict(ual, rho1, "inconclusive"))
  assert recommendations.case([rho1, rho2, rho4, ual], comparisons) == "not separated"
  # Rendered: two equivalent pairs that no comparison joins (fixed - random at 4 x 2, interpolation of ual at 8 x 1)
  # are not separated, and the line says why.
  rows = [_row(seed, 0.75, **fields) for seed in range(3)
          for fields in ({"slices": 2, "selection": "random"}, {"slices": 2, "selection": "fixed"},
                         {"selection": "ual"}, {"selection": "ual", "interpolation": True})]
  (entry,), lines = _recommend(rows)
  assert (entry["case"], entry["counts"], entry["seeds"]) == ("not separated", {"equivalent": 2}, [])
  assert lines[4] == ("- **2D, budget 8: not separated**. Highest mean of the 4 candidates: 8×1 ual (Dice 0.750 ± "
                      "0.000 (3), 8 s). Comparisons between them: 2 equivalent, which do not link every candidate to "
                      "the others.")
  assert recommendations.shown_worse(_verdict(ual, rho1, "worse")) == ual
  assert recommendations.shown_worse(_verdict(ual, rho1, "better")) == rho1


def test_still_improving_flag_from_learning_curves():
  rows = [_row(s, 0.5, val_curve={"steps": [50, 100], "dice": [0.5, 0.5 + 0.0078125 * s]}) for s in range(2)]
  rows += [_row(s, 0.5, slices=2, val_curve={"steps": [50, 100], "dice": [0.625, 0.5]}) for s in range(2)]
  improving, falling = cells_lib.summarise(rows)
  # Mean rise 0.00390625 is within the tolerance 0.005; with a third seed rising 0.015625 the mean rise is 0.0078125.
  assert (improving["curve_steps"], improving["curve_dice"]) == ([50, 100], [0.5, 0.50390625])
  assert improving["still_improving"] is False and falling["still_improving"] is False
  rows.append(_row(2, 0.5, val_curve={"steps": [50, 100], "dice": [0.5, 0.515625]}))
  assert cells_lib.summarise(rows)[0]["still_improving"] is True


def test_absent_classes_are_flagged(tmp_path):
  rows = [_row(0, 0.5, test_volumes=10, class_volumes={"anterior": 10, "posterior": 7})]
  (cell,) = cells_lib.summarise(rows)
  assert cell["absent"] == {"posterior": 3}
  summary.write_summary(tmp_path, rows)
  assert "absent: posterior in 3/10" in (tmp_path / "summary.md").read_text()


def _run_folder(path, rows, **config_changes):
  config = {"seed": 0, "data": {"root": str(path), "split": {"seed": 0}}, "model": {"features": 8},
            "train": {"steps": 100}, "study": {"seeds": [0]}}
  for key, value in config_changes.items():
    section, name = key.split(".")
    config[section][name] = value
  path.mkdir()
  (path / "config.json").write_text(json.dumps(config))
  results.append_rows(path / "results.jsonl", rows)
  return path


@pytest.mark.slow
def test_merging_two_runs_equals_one_run_of_the_union(tmp_path):
  rows = _study_rows()
  half = len(rows) // 2
  one = _run_folder(tmp_path / "one", rows)
  first = _run_folder(tmp_path / "first", rows[:half], **{"study.seeds": [0, 1]})
  second = _run_folder(tmp_path / "second", rows[half - 2:], **{"data.root": "/elsewhere"})  # overlapping rows
  summary.run([one])
  summary.run([first, second], tmp_path / "merged")
  for name in ("summary.md", "summary.csv", "findings.json"):
    assert (tmp_path / "merged" / name).read_text() == (one / name).read_text(), name


@pytest.mark.slow
def test_merging_incompatible_runs_names_the_key(tmp_path):
  first = _run_folder(tmp_path / "first", _study_rows()[:2])
  second = _run_folder(tmp_path / "second", _study_rows()[2:4], **{"train.steps": 200})
  with pytest.raises(InputError, match=r"second/config.json: train.steps is 200 here but 100 in"):
    summary.run([first, second], tmp_path / "merged")
  assert not (tmp_path / "merged").exists()
  out = subprocess.run([sys.executable, "-m", "slicejax.report", f"--workdir={first}", f"--workdir={second}",
                        f"--out={tmp_path / 'merged'}"], capture_output=True, text=True)
  assert out.returncode == 2
  assert out.stderr.strip().count("\n") == 0 and "train.steps is 200 here but 100" in out.stderr
  with pytest.raises(InputError, match="no config.json"):
    summary.run([tmp_path / "nothing"])


def test_a_document_in_a_missing_folder_is_refused_before_anything_is_written(tmp_path):
  run = _run_folder(tmp_path / "run", _study_rows()[:2])
  with pytest.raises(InputError, match=r"missing/study.md: its folder does not exist"):
    summary.run([run], tmp_path / "out", document=tmp_path / "missing" / "study.md")
  assert not (tmp_path / "out").exists() and not (tmp_path / "missing").exists()


@pytest.mark.slow
def test_compute_names_the_machines_of_the_merged_runs_and_the_rows_without_one(tmp_path):
  rows = _study_rows()
  launch = {"cpu": "CPU A", "cores": 2, "backend": "cpu", "python": "3.11.7",
            "versions": {"jax": "0.10.2", "jaxlib": "0.10.2", "nibabel": None}}
  first = _run_folder(tmp_path / "first", [dict(r, launch=0 if i % 2 else 1) for i, r in enumerate(rows[:6])])
  (first / "launches.jsonl").write_text("".join(json.dumps(dict(launch, launch=i)) + "\n" for i in range(2)))
  # A later run on a GPU machine, and rows written before launches were recorded (no `launch`, no file).
  second = _run_folder(tmp_path / "second", rows[6:8])
  gpu = dict(launch, backend="gpu", devices=1, device="H100", cores=16, cpu="CPU B")
  (second / "launches.jsonl").write_text(json.dumps(dict(gpu, launch=0)) + "\n")
  third = _run_folder(tmp_path / "third", rows[8:])
  text = (summary.run([first, second, third], tmp_path / "merged") / "summary.md").read_text()
  compute = text[text.index("## Compute"):]
  assert "- CPU A, 2 cores (cpu); Python 3.11.7; jax 0.10.2, jaxlib 0.10.2: 2 launches" in compute
  assert "- CPU B, 16 cores (1 x H100); Python 3.11.7; jax 0.10.2, jaxlib 0.10.2: 1 launch\n" in compute
  assert f"- {len(rows) - 6} rows from launches that did not record their machine and versions" in compute
  # A line that is not JSON is named with its file and line number.
  (third / "launches.jsonl").write_text("\n{not json\n")
  with pytest.raises(InputError, match=r"third/launches.jsonl:2: not valid JSON"):
    summary.run([first, second, third], tmp_path / "refused")


@pytest.mark.slow
def test_runs_of_different_lengths_merge_when_their_budgets_differ(tmp_path):
  rows = _study_rows()
  short = _run_folder(tmp_path / "short", [dict(r, steps=100) for r in rows])
  longer = _run_folder(tmp_path / "long", [dict(r, budget=16, steps=300, name=r["name"].replace("b8", "b16"))
                                           for r in rows], **{"train.steps": 300})
  merged = summary.run([short, longer], tmp_path / "merged")
  text = (merged / "summary.md").read_text()
  assert "Training length differs between budgets (cells are compared only at equal budget): 100 steps: 8; " \
         "300 steps: 16." in text
  # The same budget trained for another length merges only as a steps check (test_report_checks.py): a point the
  # other run does not hold (seed 5) is refused.
  again = _run_folder(tmp_path / "again", [dict(r, steps=300, seed=5, name=r["name"].replace("seed0", "seed5"))
                                           for r in rows[:4]], **{"train.steps": 300})
  with pytest.raises(InputError, match="train.steps is 300 here but 100 .* or when one trains only points of the "
                                       "other again: a steps check"):
    summary.run([short, again], tmp_path / "refused")


@pytest.mark.slow
def test_write_summary_writes_every_file(tmp_path):
  rows = _grid_rows()
  summary.write_summary(tmp_path, rows)
  assert sorted(os.listdir(tmp_path)) == [
      "dice_per_class.png", "dice_vs_allocation.png", "dice_vs_budget.png", "dice_vs_cost.png", "findings.json",
      "forest.png", "learning_curves.png", "summary.csv", "summary.md"]
  for name in os.listdir(tmp_path):
    if name.endswith(".png"):
      assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  with open(tmp_path / "summary.csv", newline="") as f:
    table = list(csv.DictReader(f))
  cells = cells_lib.summarise(rows)
  assert len(table) == len(cells)
  for line, cell in zip(table, cells):
    assert int(line["dims"]) == cell["dims"] and int(line["budget"]) == cell["budget"]
    assert line["selection"] == cell["selection"] and int(line["interpolation"]) == cell["interpolation"]
    assert int(line["n_seeds"]) == cell["n_seeds"] and int(line["n_diverged"]) == cell["n_diverged"]
    assert float(line["dice_mean"]) == cell["dice_mean"]
    assert (None if line["dice_std"] == "" else float(line["dice_std"])) == cell["dice_std"]
    for name in ("density", "train_seconds", "interp_dice", "slices_per_volume"):
      assert (None if line[name] == "" else float(line[name])) == cell[name]
    for name in ("anterior", "posterior"):
      assert (None if line[f"dice_{name}"] == "" else float(line[f"dice_{name}"])) == cell["dice_per_class"].get(name)

  markdown = (tmp_path / "summary.md").read_text()
  assert markdown.index("## How this report decides") < markdown.index("## Trust gate") < markdown.index(
      "## Findings") < markdown.index("## Cells") < markdown.index("## Paired comparisons")
  assert "| 2D | 8 | 8 | 1 | 0.031 | random | off | 0.625 ± 0.125 (3) | 0.500 | 0.750 | — | — | — | 8 | 20.0 | 0 |" \
      in markdown
  reference_line = "| 2D | 320 | 10 | all | 1.000 | all | off | 0.875 (1 seed: no spread) | 0.875 | 0.875 |"
  assert reference_line in markdown.split("## Reference (every slice annotated)")[1]
  assert "| selection | 2D | 8 | 4×2 fixed | 4×2 random | 1 | 1 | -0.250 | — | — | — | — | — | underpowered |" \
      in markdown
  # 8 x 1 and 4 x 2 random tie at 0.625 (the one with more volumes comes first); 3D budget 8 has a single cell.
  assert ("- **2D, budget 8: not separated at this number of seeds (1-3)**. Highest mean of the 4 candidates: 8×1 "
          "random (Dice 0.625 ± 0.125 (3), 8 s). Comparisons between them: 1 inconclusive, 2 underpowered") in markdown
  assert "3D, budget 8" not in markdown.split("## Recommendation per budget")[1]
  found = json.loads((tmp_path / "findings.json").read_text())
  assert [f["finding"] for f in found["findings"]] == [1, 2, 3]


def test_write_summary_with_no_rows(tmp_path):
  summary.write_summary(tmp_path, [])
  assert "No results yet." in (tmp_path / "summary.md").read_text()
  assert (tmp_path / "summary.csv").read_text().splitlines() == [
      ",".join(cells_lib.CELL_KEY) + ",n_seeds,n_seeds_planned,density,dice_mean,dice_std,hd95_mean,nsd_mean,interp_dice,cost,"
      "train_seconds,n_diverged,still_improving"]
  assert (tmp_path / "dice_vs_allocation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_2d_run_and_a_3d_run_merge_whatever_the_other_network(tmp_path):
  rows_2d = _study_rows()[:4]
  rows_3d = [dict(row, dims=3, name="3" + row["name"][1:]) for row in _study_rows()[4:8]]
  first = _run_folder(tmp_path / "first", rows_2d)
  second = _run_folder(tmp_path / "second", rows_3d)
  config = json.loads((second / "config.json").read_text())
  config["three_d"] = {"patch": [32, 32, 32]}
  (second / "config.json").write_text(json.dumps(config))
  summary.run([first, second], tmp_path / "merged", resamples=200)  # the 2D run's three_d block is never used
  config["model"] = {"features": 16}
  (second / "config.json").write_text(json.dumps(config))
  summary.run([first, second], tmp_path / "merged", resamples=200)
  third = _run_folder(tmp_path / "third", [dict(row, name=row["name"] + "_again") for row in rows_3d])
  with pytest.raises(InputError,
                     match=r"third/config.json: three_d.patch is None here but \[32, 32, 32\] in .*second"):
    summary.run([first, second, third], tmp_path / "merged")


def test_check_sizes_the_grid_families_from_the_pilot(tmp_path, caplog):
  from slicejax.report import calibration
  from slicejax import config as config_lib
  from slicejax.modes import check as dryrun
  from slicejax.study import grid as study  # the config and --check's seeds line
  rows = calibration.simulate_rows(np.random.default_rng(0), 3, 60, 0.0)  # fixed - random at one allocation
  pilot = _run_folder(tmp_path / "pilot", rows)
  config = config_lib.load("configs/demo.py:tiny")
  config.stats.pilot = str(pilot)
  config.study.update(budgets=(8,), slices_per_volume=(2, 4), selections=("random", "fixed"), seeds=(0, 1, 2))
  points = study.expand(config.study, {f"case_{i}": 8 for i in range(10)})
  # The grid: allocation 2 vs 4 for random and for fixed (2 comparisons), fixed - random at 2 allocations (2).
  with caplog.at_level(logging.INFO):
    assert comparisons_lib.grid_family_sizes(points) == {"allocation": 2, "selection": 2}
  assert not caplog.records  # every launch sizes its grid's families: not a line on its console
  needed = comparisons_lib.seeds_needed(comparisons_lib.paired_comparisons(rows), None,
                                        {"allocation": 2, "selection": 2})
  assert needed["selection"]["pooled_from"] == "family" and needed["allocation"]["pooled_from"] == "all"
  pooled = stats.pooled_variability(comparisons_lib.paired_comparisons(rows))
  want = stats.seeds_needed(pooled["seed_sd_upper"], pooled["volume_var"], 60, 0.02, 0.025, min_seeds=3)
  assert needed["selection"]["seeds_needed"] == needed["allocation"]["seeds_needed"] == want > 3
  lines = dryrun.seeds_check(config, points)
  assert lines == [f"seeds: the grid has 3; by the pilot {pilot}, 80% power for a difference of 0.02 at each "
                   f"family's Bonferroni level needs: allocation (2 comparisons, pooled SD) {want}, selection (2 "
                   f"comparisons) {want}",
                   "warning: 3 seeds are fewer than the pilot says the allocation, selection comparisons need "
                   "(--config.study.seeds)"]
  config.study.seeds = tuple(range(want))
  assert len(dryrun.seeds_check(config, points)) == 1
  # With 20 test volumes whose own variance is too large for the margin, no number of seeds is enough.
  few = _run_folder(tmp_path / "few", calibration.simulate_rows(np.random.default_rng(0), 3, 20, 0.0))
  config.stats.pilot = str(few)
  assert "more than 1000 (the test volumes' own variance" in dryrun.seeds_check(config, points)[0]
  assert dryrun.seeds_check(config, points)[1].startswith("warning:")


def test_a_single_model_gets_no_findings_boilerplate(tmp_path):
  summary.write_summary(tmp_path, [_reference(0, 0.875)])
  text = (tmp_path / "summary.md").read_text()
  assert "the paper's findings are not checked" in text and "Verdict:" not in text
