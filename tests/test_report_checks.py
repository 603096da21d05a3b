"""Tests for the report's families by dims, its A/A and steps checks, and the seeds it says a family needs."""

import csv
import importlib.util
import json
import math
import pathlib
import subprocess
import sys

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
from slicejax.report import steps
from slicejax.report import summary
from slicejax.study import grid

# Per-seed noise of the differences below: its SD is sqrt((2/64^2 + 2/128^2) / 4) = sqrt(10) / 256, so over 5 seeds
# the standard error is sqrt(2) / 256 and a mean difference m gives t = 256 m / sqrt(2) on 4 degrees of freedom.
NOISE = (0, 1 / 64, -1 / 64, 1 / 128, -1 / 128)
SE = math.sqrt(2) / 256


def _row(seed, dice, *, dims=2, budget=8, slices=1, selection="random", steps_=100, **extra):
  return {"dims": dims, "budget": budget, "volumes": budget // slices, "slices_per_volume": slices,
          "selection": selection, "interpolation": False, "reference": False, "seed": seed, "steps": steps_,
          "dice_mean": dice, **extra}


def _pair(mean, *, a, b, base=0.75, **fields):
  """5 seeds of cells a and b ({field: value}), a scoring `base` and b `base - mean - noise`: a - b = mean + noise."""
  return [r for seed, e in enumerate(NOISE)
          for r in (_row(seed, base, **fields, **a), _row(seed, base - mean - e, **fields, **b))]


def _p_two_sided_4df(t):
  """Student's t on 4 degrees of freedom in closed form: P(|T| > t) = 1 - sin(x) (1 + cos(x)^2 / 2), x = atan(t/2)."""
  sin2 = t * t / (t * t + 4)
  return 1 - math.sqrt(sin2) * (1 + (1 - sin2) / 2)


def test_2d_and_3d_allocations_are_adjusted_and_judged_apart():
  # 2D: 8 x 1 beats 4 x 2 by 1/32 (t = 4 sqrt(2)) and 2 x 4 by 1/64 (t = 2 sqrt(2)); 3D: 8 x 1 loses to 4 x 2 by 1/64.
  rows = (_pair(1 / 32, a={"slices": 1}, b={"slices": 2}) + _pair(1 / 64, a={"slices": 1}, b={"slices": 4})[1::2]
          + _pair(-1 / 64, a={"slices": 1}, b={"slices": 2}, dims=3, selection="fixed"))
  comparisons = comparisons_lib.paired_comparisons(rows)
  by_b = {(c["a"]["dims"], c["b"]["slices_per_volume"]): c for c in comparisons}
  assert sorted(by_b) == [(2, 2), (2, 4), (3, 2)]
  assert [by_b[k]["family"] for k in sorted(by_b)] == ["allocation", "allocation", "allocation, 3D"]
  p_strong = 1 - (2 * math.sqrt(2) / 3) * (1 + 1 / 18)  # t^2 = 32: sin^2 x = 32/36
  p_weak = 1 - math.sqrt(2 / 3) * (1 + 1 / 6)  # t^2 = 8: sin^2 x = 8/12
  assert (p_strong, p_weak) == pytest.approx((0.004813, 0.047421), abs=1e-6)
  assert [by_b[k]["p_value"] for k in sorted(by_b)] == pytest.approx([p_strong, p_weak, p_weak])
  assert _p_two_sided_4df(4 * math.sqrt(2)) == pytest.approx(p_strong)
  # Holm in 2D (m = 2): 2 x 0.0048 = 0.0096, then max(0.0096, 0.0474); in 3D alone (m = 1) p itself. Pooled with 3D
  # (m = 3) the 2D weak comparison would need 2 x 0.0474 = 0.095 and not be resolved.
  assert [by_b[k]["family_size"] for k in sorted(by_b)] == [2, 2, 1]
  assert [by_b[k]["p_adjusted"] for k in sorted(by_b)] == pytest.approx([2 * p_strong, p_weak, p_weak])
  assert [by_b[k]["verdict"] for k in sorted(by_b)] == ["better", "better", "worse"]

  cells = cells_lib.summarise(rows)
  one, two, _ = findings_lib.findings(comparisons, cells)
  assert one["verdict"] == "2D: reproduced; 3D: reversed"
  assert {dims: (e["family"], e["verdict"], e["counts"]["better"], e["counts"]["worse"])
          for dims, e in one["by_dims"].items()} == {"2D": ("allocation", "reproduced", 2, 0),
                                                      "3D": ("allocation, 3D", "reversed", 0, 1)}
  assert one["by_dims"]["3D"]["by_selection"] == {"fixed": {"verdict": "reversed", "counts": one["by_dims"]["3D"][
      "counts"]}}
  assert two["verdict"] == "not tested" and two["by_dims"] == {}
  text = render.findings_markdown([one])
  assert text[4] == ("**1. At a fixed budget, fewer slices per volume over more volumes is better.** Verdict: **2D: "
                     "reproduced; 3D: reversed**.")
  assert text[5] == (
      "2D (`allocation`): reproduced. The fewest-slices allocation against each other allocation at the same budget, "
      "random and fixed interval: 2 better. By selection: random: reproduced (2 better). 3D (`allocation, 3D`): "
      "reversed. The fewest-slices allocation against each other allocation at the same budget, random and fixed "
      "interval: 1 worse. By selection: fixed: reversed (1 worse). Highest mean (descriptive, not a test): 2D budget "
      "8: 8×1 random (0.750); 3D budget 8: 4×2 fixed (0.766).")
  # The 3D budget's prior study is read off its own family.
  gate = findings_lib.trust_gate(cells)
  three_d = [e for e in recommendations.recommendations(comparisons, cells, gate) if e["dims"] == 3]
  assert [(e["allocation_family"], e["agreement"]) for e in three_d] == [("allocation, 3D", "cardiac")]


def test_ual_in_3d_is_its_own_family_and_finding_2_names_both_dims():
  rows = (_pair(0.0, a={"selection": "ual"}, b={"selection": "random"}, slices=2)
          + _pair(1 / 32, a={"selection": "ual"}, b={"selection": "random"}, slices=2, dims=3))
  comparisons = comparisons_lib.paired_comparisons(rows)
  assert [(c["family"], c["family_size"], c["verdict"]) for c in comparisons] == [
      ("selection, ual", 1, "equivalent"), ("selection, ual, 3D", 1, "better")]
  _, two, _ = findings_lib.findings(comparisons, cells_lib.summarise(rows))
  assert two["verdict"] == "2D: reproduced; 3D: not reproduced"


def test_fixed_against_random_at_one_slice_per_volume_is_an_a_a_check():
  # Budget 8: fixed - random differs by 1/64 + noise at 1 slice per volume (t = 2 sqrt(2)) and by 1/32 at 4 (t =
  # 4 sqrt(2)); budget 16: by noise alone at 1 slice per volume.
  fixed_random = {"a": {"selection": "fixed"}, "b": {"selection": "random"}}
  rows = (_pair(1 / 64, **fixed_random) + _pair(1 / 32, **fixed_random, slices=4)
          + _pair(0.0, **fixed_random, budget=16))
  comparisons = comparisons_lib.paired_comparisons(rows)
  selection = [c for c in comparisons if c["family"] == "selection"]
  # Only the 2 x 4 comparison is in the family: m = 1, so Holm leaves its p as it is.
  assert [(c["a"]["slices_per_volume"], c["family_size"]) for c in selection] == [(4, 1)]
  assert selection[0]["p_adjusted"] == selection[0]["p_value"] == pytest.approx(_p_two_sided_4df(4 * math.sqrt(2)))
  checks = comparisons_lib.a_a_checks(rows)
  assert [(c["a"]["budget"], c["a"]["selection"], c["b"]["selection"], c["a"]["slices_per_volume"])
          for c in checks] == [(8, "fixed", "random", 1), (16, "fixed", "random", 1)]
  assert "family" not in checks[0] and "verdict" not in checks[0]
  # 1/64 -+ t(0.975, 4) sqrt(2) / 256 = 0.015625 -+ 0.015338: [+0.0003, +0.0310] excludes 0; 0 -+ 0.0153 does not.
  half = scipy_stats.t.ppf(0.975, 4) * SE
  assert (checks[0]["mean_diff"], checks[0]["ci_low"], checks[0]["ci_high"]) == pytest.approx(
      (1 / 64, 1 / 64 - half, 1 / 64 + half))
  assert checks[0]["ci_low"] == pytest.approx(0.000287, abs=1e-6)
  assert [c["excludes_zero"] for c in checks] == [True, False]
  # A grid's own families leave the check out too.
  points = [grid.Point(2, 8, 8 // rho, rho, sel, False, 0) for rho in (1, 4) for sel in ("random", "fixed")]
  assert comparisons_lib.grid_family_sizes(points) == {"allocation": 2, "selection": 1}

  lines = render.checks_markdown({"a_a": checks, "steps": []}, comparisons_lib.stats_options())
  assert lines[4:8] == [
      "| dims | budget | a | b | seeds | volumes | Δ Dice | 95% CI | p | interval |", "|" + "---|" * 10,
      "| 2D | 8 | 8×1 fixed | 8×1 random | 5 | 1 | +0.016 | [+0.000, +0.031] | 0.047 | **excludes 0** |",
      "| 2D | 16 | 16×1 fixed | 16×1 random | 5 | 1 | +0.000 | [-0.015, +0.015] | 1.000 | covers 0 |"]
  assert lines[9] == ("- Warning: 1 of 2 A/A intervals exclude 0 (2D budget 8, 8×1 fixed − 8×1 random): the "
                      "statistics may be anti-conservative (intervals too narrow, p-values too small).")


def _steps_rows():
  """Budget 8: 8 x 1, 2 x 4 and 4 x 2 at 100 steps (seeds 0-2); 8 x 1 (seeds 0-2) and 2 x 4 (seeds 0-1) again at
  200. Budget 16: 16 x 1, 4 x 4 and 4 x 4 fixed at 100 steps, 16 x 1 and 4 x 4 again at 200 (seeds 0-1)."""
  study = [_row(s, d) for s, d in enumerate([0.75, 0.8125, 0.5])]
  study += [_row(s, d, slices=4) for s, d in enumerate([0.6875, 0.75, 0.625])]
  study += [_row(s, 0.7, slices=2) for s in range(3)]
  longer = [_row(s, d, steps_=200) for s, d in enumerate([0.78125, 0.84375, 0.6])]
  longer += [_row(s, d, slices=4, steps_=200) for s, d in enumerate([0.71875, 0.7734375])]
  study += [_row(s, 0.75, budget=16, slices=s_) for s in range(2) for s_ in (1, 4)]
  study += [_row(s, 0.75, budget=16, slices=4, selection="fixed") for s in range(2)]
  longer += [_row(s, 0.765625 if s_ == 1 else 0.75, budget=16, slices=s_, steps_=200) for s in range(2)
             for s_ in (1, 4)]
  return study, longer


def test_the_steps_check_keeps_the_study_rows_and_follows_the_extremes():
  study, longer = _steps_rows()
  rows = study + longer
  # Only at 100 steps does every cell have all its seeds (budget 8's 4 x 2 and budget 16's 4 x 4 fixed were not trained
  # again, budget 8's 2 x 4 lacks seed 2 at 200).
  assert steps.study_steps(rows) == {(2, 8, False): 100, (2, 16, False): 100}
  assert steps.study_rows(rows) == study
  cells = cells_lib.summarise(steps.study_rows(rows))
  assert [(c["budget"], c["slices_per_volume"], c["n_seeds"], c["steps"]) for c in cells] == [
      (8, 1, 3, 100), (8, 2, 3, 100), (8, 4, 3, 100), (16, 1, 2, 100), (16, 4, 2, 100), (16, 4, 2, 100)]
  assert cells[0]["dice_mean"] == (0.75 + 0.8125 + 0.5) / 3

  eight, sixteen = steps.steps_check(rows, 0.005)
  (check,) = eight["checks"]
  # Seeds 0 and 1 have both re-trained allocations at both step counts (seed 2 lacks 2 x 4 at 200).
  assert (check["cells"], check["seeds"], check["steps"]) == (["8×1 random", "2×4 random"], [0, 1], 200)
  # At 100: 8 x 1 (0.75 + 0.8125) / 2 = 0.78125, 2 x 4 (0.6875 + 0.75) / 2 = 0.71875, difference 0.0625. At 200:
  # 0.8125 and (0.71875 + 0.7734375) / 2 = 0.74609375, difference 0.06640625: moved 1/256 < 0.005.
  assert check["study_dice"] == {"8×1 random": 0.78125, "2×4 random": 0.71875}
  assert check["dice"] == {"8×1 random": 0.8125, "2×4 random": 0.74609375}
  assert (check["study_difference"], check["difference"], check["moved"]) == (0.0625, 0.06640625, 1 / 256)
  # Per seed: seed 0 (0.78125 - 0.71875) - (0.75 - 0.6875) = 0; seed 1 (0.84375 - 0.7734375) - (0.8125 - 0.75) = 1/128.
  assert check["moved_per_seed"] == {0: 0.0, 1: 1 / 128}
  assert (eight["study_steps"], eight["verdict"], eight["reason"]) == (100, "steps stand", None)
  # Budget 16: 16 x 1 gains 1/64 at 200 steps, 4 x 4 nothing: the difference moves by 0.015625.
  assert sixteen["checks"][0]["moved"] == 1 / 64 and sixteen["verdict"] == "more steps needed"
  assert steps.steps_check(rows, 0.02)[1]["verdict"] == "steps stand"
  # One allocation trained again: nothing to follow.
  (alone,) = steps.steps_check(study + longer[:3], 0.005)
  assert (alone["verdict"], alone["reason"]) == ("not checked", "one allocation at two step counts: no difference to follow")

  lines = render.checks_markdown({"a_a": [], "steps": steps.steps_check(rows, 0.005)}, comparisons_lib.stats_options())
  assert lines[4:] == [
      "| dims | budget | steps | seeds | mean Dice | fewest − most | moved |", "|" + "---|" * 7,
      "| 2D | 8 | 100 (study) | 0, 1 | 8×1 random 0.781; 2×4 random 0.719 | +0.062 | — |",
      "| 2D | 8 | 200 | 0, 1 | 8×1 random 0.812; 2×4 random 0.746 | +0.066 | +0.004 (per seed +0.000, +0.008) |",
      "| 2D | 16 | 100 (study) | 0, 1 | 16×1 random 0.750; 4×4 random 0.750 | +0.000 | — |",
      "| 2D | 16 | 200 | 0, 1 | 16×1 random 0.766; 4×4 random 0.750 | +0.016 | +0.016 (per seed +0.016, +0.016) |",
      "",
      "- 2D, budget 8: **steps stand**: 8×1 random − 2×4 random moved +0.004 from 100 to 200 steps (by less than "
      "0.005).",
      # seed 2 of 8 x 1 at 200 steps: its 2 x 4 was not trained again, so no check reads it
      "  - Rows at another step count than the study's 100 that no check reads, left out of the report: 8×1 random "
      "at 200 steps (1 seed).",
      "- 2D, budget 16: **more steps needed**: 16×1 random − 4×4 random moved +0.016 from 100 to 200 steps (by 0.005 "
      "or more).", ""]


def test_a_movement_next_to_the_tolerance_shows_on_which_side_it_lies():
  assert render.moved_text(0.004962, 0.005) == "+0.00496"  # not "+0.005 (by less than 0.005)"
  assert render.moved_text(-0.00504, 0.005) == "-0.00504"
  assert render.moved_text(0.005, 0.005) == "+0.005"
  assert render.moved_text(0.0039, 0.005) == "+0.004" and render.moved_text(0.0121, 0.005) == "+0.012"


def test_the_steps_check_reads_validation_dice_and_test_dice_only_without_it():
  study, longer = _steps_rows()
  # Budget 16 with validation Dice: 16 x 1 gains 1/64 in test Dice at 200 steps, but nothing in validation Dice, so
  # its steps stand; in test Dice alone they would not (the first test above).
  with_val = [dict(r, val_dice_mean=0.5 if r["slices_per_volume"] == 1 else 0.25) if r["budget"] == 16 else r
              for r in study + longer]
  eight, sixteen = steps.steps_check(with_val, 0.005)
  assert (eight["metric"], sixteen["metric"]) == ("test", "validation")
  (check,) = sixteen["checks"]
  assert check["study_dice"] == check["dice"] == {"16×1 random": 0.5, "4×4 random": 0.25}
  assert (check["moved"], sixteen["verdict"]) == (0.0, "steps stand")
  assert eight["checks"][0]["moved"] == 1 / 256  # budget 8's rows lack it: test Dice, as before
  # One row of budget 16 without validation Dice sends the whole budget back to test Dice.
  del with_val[-1]["val_dice_mean"]
  assert steps.steps_check(with_val, 0.005)[1]["metric"] == "test"
  assert steps.steps_check(with_val, 0.005)[1]["verdict"] == "more steps needed"
  lines = render.checks_markdown({"a_a": [], "steps": steps.steps_check(study + longer, 0.005)},
                                 comparisons_lib.stats_options())
  assert "mean validation Dice (test Dice at 2D budget 8, 2D budget 16, whose rows lack it)" in lines[2]


def test_a_budget_whose_steps_check_fails_leaves_the_findings_and_holds_its_recommendation(tmp_path):
  study, longer = _steps_rows()
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text("{}")
  results.append_rows(run / "results.jsonl", study + longer)
  summary.run([run], tmp_path / "out")
  found = json.loads((tmp_path / "out" / "findings.json").read_text())
  one = found["findings"][0]
  # Budget 16 needs more steps (moved 1/64): its comparisons leave every finding, its cells the descriptive best.
  assert one["left_out"] == [[2, 16]] and list(one["best"]) == ["2D budget 8"]
  assert {e["b"] for e in one["evidence"]} == {"2×4 random", "4×2 random"}
  cases = {r["budget"]: (r["case"], r["case_without_gate"]) for r in found["recommendations"]}
  assert cases[16] == ("inconclusive: more steps needed", "not separated") and cases[8][0] == "not separated"
  # The comparisons themselves stay, with their verdicts.
  assert any(c["a"]["budget"] == 16 for c in found["comparisons"])
  text = (tmp_path / "out" / "summary.md").read_text()
  assert "Left out of the findings: 2D budget 16, where the steps check says more steps are needed" in text
  # The cost view's best cell at 16 s (0.75 beats budget 8's best, 4 x 2 at 0.7) comes from the held budget: it says so.
  cost = text[text.index("## Annotation cost"):text.index("## Compute")]
  assert "| 8 | 2D | 4×2 | random | off | 0.700 ± 0.000 (3) |" in cost
  assert "| 16 | 2D | 16×1 | random | off | 0.750 ± 0.000 (2) (budget 16 held: more steps needed) |" in cost


def test_a_steps_check_with_fewer_seeds_than_it_decides_on_is_pending_and_holds_its_budget(tmp_path):
  study, longer = _steps_rows()
  rows = study + longer
  # Both budgets' checks have seeds 0 and 1. Decided on 3 seeds, both are pending, budget 16's failure too.
  eight, sixteen = steps.steps_check(rows, 0.005, 3)
  assert [(e["verdict"], e["reason"]) for e in (eight, sixteen)] == [("pending", "2 of the 3 seeds it decides on")] * 2
  assert [e["verdict"] for e in steps.steps_check(rows, 0.005, 2)] == ["steps stand", "more steps needed"]
  lines = render.checks_markdown({"a_a": [], "steps": [eight, sixteen]}, comparisons_lib.stats_options())
  assert lines[-4:] == [
      "- 2D, budget 8: **pending** (2 of the 3 seeds it decides on): 8×1 random − 2×4 random moved +0.004 from 100 "
      "to 200 steps (by less than 0.005, so far).",
      "  - Rows at another step count than the study's 100 that no check reads, left out of the report: 8×1 random "
      "at 200 steps (1 seed).",
      "- 2D, budget 16: **pending** (2 of the 3 seeds it decides on): 16×1 random − 4×4 random moved +0.016 from "
      "100 to 200 steps (by 0.005 or more, so far).", ""]
  # Seed 2 at budget 16, where 16 x 1 again gains 1/64 at 200 steps: 3 seeds decide its failure (budget 8's seed 2
  # still lacks 2 x 4 at 200 steps).
  third = [_row(2, 0.75, budget=16, slices=s_) for s_ in (1, 4)]
  third += [_row(2, 0.765625 if s_ == 1 else 0.75, budget=16, slices=s_, steps_=200) for s_ in (1, 4)]
  assert [e["verdict"] for e in steps.steps_check(rows + third, 0.005, 3)] == ["pending", "more steps needed"]

  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(json.dumps({"stats": {"steps_seeds": 3}}))
  results.append_rows(run / "results.jsonl", rows)
  summary.run([run], tmp_path / "out")
  found = json.loads((tmp_path / "out" / "findings.json").read_text())
  assert found["findings"][0]["left_out"] == [[2, 8], [2, 16]]
  assert {r["budget"]: r["case"] for r in found["recommendations"]} == {
      8: "inconclusive: steps check pending", 16: "inconclusive: steps check pending"}
  text = (tmp_path / "out" / "summary.md").read_text()
  assert "Left out of the findings: 2D budget 8, 2D budget 16, whose steps check is pending" in text
  assert ("**1. At a fixed budget, fewer slices per volume over more volumes is better.** Verdict: **not tested**.\n"
          "Fewer against more slices per volume: no comparison.\n") in text
  # The report's flag decides as the config would: 2 seeds decide both checks.
  summary.run([run], tmp_path / "flag", steps_seeds=2)
  found = json.loads((tmp_path / "flag" / "findings.json").read_text())
  assert [e["verdict"] for e in found["steps_check"]] == ["steps stand", "more steps needed"]
  assert "Left out of the findings: 2D budget 16, where the steps check says more steps are needed" in (
      tmp_path / "flag" / "summary.md").read_text()


def test_a_budget_trained_again_in_full_takes_the_longer_steps_and_shows_the_check_that_sent_it(tmp_path):
  study, longer = _steps_rows()
  # Budget 16 failed its check (moved 1/64) and is declared trained again; its 4 x 4 fixed trains again at 200 steps,
  # seed 0 so far: 200 steps lack seed 1 of it, so the study stays at 100, the longest complete step count.
  # Undeclared, the budget stays at its grid's 100 steps too, held.
  part = [_row(0, 0.8, budget=16, slices=4, selection="fixed", steps_=200)]
  for declared in ((), (16,)):
    assert steps.study_steps(study + longer + part, declared) == {(2, 8, False): 100, (2, 16, False): 100}
  assert steps.steps_check(study + longer + part, 0.005)[1]["verdict"] == "more steps needed"
  # With seed 1, every cell of budget 16 has all its seeds at 200 steps, and at 100 steps too: declared, the longer.
  rows = study + longer + part + [_row(1, 0.8, budget=16, slices=4, selection="fixed", steps_=200)]
  assert steps.study_steps(rows) == {(2, 8, False): 100, (2, 16, False): 100}
  assert steps.study_steps(rows, (16,)) == {(2, 8, False): 100, (2, 16, False): 200}
  assert steps.study_rows(rows, (16,)) == study[:9] + longer[5:] + rows[-2:]
  eight, sixteen = steps.steps_check(rows, 0.005, retrained=(16,))
  assert eight["verdict"] == "steps stand"
  (check,) = sixteen["checks"]
  assert (sixteen["study_steps"], sixteen["verdict"], sixteen["reason"]) == (200, "retrained", None)
  assert (check["from_steps"], check["steps"], check["moved"], check["stands"]) == (100, 200, 1 / 64, False)
  lines = render.checks_markdown({"a_a": [], "steps": [eight, sixteen]}, comparisons_lib.stats_options())
  assert lines[8:10] == [
      "| 2D | 16 | 100 | 0, 1 | 16×1 random 0.750; 4×4 random 0.750 | +0.000 | — |",
      "| 2D | 16 | 200 (study) | 0, 1 | 16×1 random 0.766; 4×4 random 0.750 | +0.016 | +0.016 (per seed +0.016, "
      "+0.016) |"]
  # 4 x 4 fixed at 100 steps, the only allocation of its selection, is read by no check: named, not silently dropped.
  assert lines[-3:-1] == [
      "- 2D, budget 16: **retrained**: 16×1 random − 4×4 random moved +0.016 from 100 to 200 steps (by 0.005 or "
      "more); the study's rows are those at 200 steps.",
      "  - Rows at another step count than the study's 200 that no check reads, left out of the report: 4×4 fixed "
      "at 100 steps (2 seeds)."]

  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text("{}")
  results.append_rows(run / "results.jsonl", rows)
  summary.run([run], tmp_path / "out", retrained=[16])
  found = json.loads((tmp_path / "out" / "findings.json").read_text())
  # Not held: budget 16 is in the findings, with its 200-step cells, and has a recommendation of its own.
  assert not found["findings"][0].get("left_out")
  assert {r["budget"]: r["case"] for r in found["recommendations"]}[16] == "not separated"
  with open(tmp_path / "out" / "summary.csv", newline="") as f:
    sixteen_cells = [c for c in csv.DictReader(f) if c["budget"] == "16"]
  assert sorted((c["slices_per_volume"], c["selection"], float(c["dice_mean"])) for c in sixteen_cells) == [
      ("1", "random", 0.765625), ("4", "fixed", 0.8), ("4", "random", 0.75)]


def _run_folder(path, rows, steps_):
  path.mkdir()
  (path / "config.json").write_text(json.dumps({"seed": 0, "data": {"split": {"seed": 0}}, "model": {"features": 8},
                                                "train": {"steps": steps_, "warmup_steps": steps_ // 10}}))
  results.append_rows(path / "results.jsonl", rows)
  return path


def test_a_run_training_points_again_for_more_steps_merges_as_a_steps_check(tmp_path):
  study, longer = _steps_rows()
  grid_run = _run_folder(tmp_path / "grid", study, 100)
  doubling = _run_folder(tmp_path / "doubling", longer, 200)
  out = summary.run([grid_run, doubling], tmp_path / "merged")
  report = json.loads((out / "findings.json").read_text())
  assert [e["verdict"] for e in report["steps_check"]] == ["steps stand", "more steps needed"]
  # The cells and comparisons are the study's: 8 x 1 - 2 x 4 at 100 steps per seed [0.0625, 0.0625, -0.125].
  allocation = [c for c in report["comparisons"] if c["a"]["budget"] == 8 and c["b"]["slices_per_volume"] == 4]
  assert [(c["n_pairs"], c["mean_diff"]) for c in allocation] == [(3, 0.0)]
  text = (out / "summary.md").read_text()
  assert text.index("## Trust gate") < text.index("## Checks") < text.index("## Findings")
  assert "Training length differs" not in text
  # A point the other run does not hold (seed 3) makes it another study, not a check: refused.
  other = _run_folder(tmp_path / "other", [_row(3, 0.7, steps_=200)], 200)
  with pytest.raises(InputError, match="train.steps is 200 here but 100"):
    summary.run([grid_run, other], tmp_path / "refused")


def test_a_later_part_at_the_study_s_steps_merges_beside_a_steps_check(tmp_path):
  study, longer = _steps_rows()
  grid_run = _run_folder(tmp_path / "grid", study, 100)
  doubling = _run_folder(tmp_path / "doubling", longer, 200)
  # Budget 8's 2 x 4 fixed, a cell neither run holds, at the grid's 100 steps: it shares budget 8 with the 200-step
  # check without being a check of it, but the check trains only points of the grid again.
  extra_rows = [_row(s, 0.6, slices=4, selection="fixed") for s in range(3)]
  extra = _run_folder(tmp_path / "extra", extra_rows, 100)
  for order in ([grid_run, doubling, extra], [extra, doubling, grid_run]):
    out = summary.run(order, tmp_path / f"merged_{order[0].name}")
    report = json.loads((out / "findings.json").read_text())
    assert [e["verdict"] for e in report["steps_check"]] == ["steps stand", "more steps needed"]
    # 2 x 4 fixed - 2 x 4 random at 100 steps, the study's, over the 3 seeds: 0.6 - [0.6875, 0.75, 0.625].
    (selection,) = [c for c in report["comparisons"] if c["a"]["budget"] == 8 and c["a"]["selection"] == "fixed"]
    assert (selection["b"]["selection"], selection["n_pairs"]) == ("random", 3)
    assert selection["mean_diff"] == pytest.approx(0.6 - (0.6875 + 0.75 + 0.625) / 3)
  # The same cell at the check's 200 steps is a check of nothing: refused.
  late = _run_folder(tmp_path / "late", [dict(r, steps=200) for r in extra_rows], 200)
  with pytest.raises(InputError, match="train.steps is 200 here but 100"):
    summary.run([grid_run, doubling, late], tmp_path / "refused")


def test_a_later_part_at_the_length_a_budget_was_trained_again_to_merges(tmp_path):
  study, _ = _steps_rows()
  budget_8 = [r for r in study if r["budget"] == 8]  # 8 x 1, 2 x 4 and 4 x 2 random, seeds 0-2, at 100 steps
  grid_run = _run_folder(tmp_path / "grid", budget_8, 100)
  # 8 x 1 gains 1/16 more than the others: its check fails (moved 1/16), so the budget is trained again in full.
  again = [dict(r, steps=200, dice_mean=r["dice_mean"] + (0.125 if r["slices_per_volume"] == 1 else 0.0625))
           for r in budget_8]
  extra_rows = [_row(s, 0.9, slices=4, selection="fixed", steps_=200) for s in range(3)]
  extra = _run_folder(tmp_path / "extra", extra_rows, 200)
  # Every point of budget 8 trained again at 200 steps, in two parts, declared so: 200 is the budget's study step
  # count, so the later cell at 200 steps (2 x 4 fixed, which no run holds at 100) merges, in any order, and is
  # compared with the 200-step rows.
  retrain = [_run_folder(tmp_path / "retrain_a", again[:4], 200), _run_folder(tmp_path / "retrain_b", again[4:], 200)]
  for order in ([grid_run, *retrain, extra], [extra, retrain[1], grid_run, retrain[0]]):
    out = summary.run(order, tmp_path / f"merged_{order[0].name}", retrained=[8])
    report = json.loads((out / "findings.json").read_text())
    assert [e["verdict"] for e in report["steps_check"]] == ["retrained"]
    (selection,) = [c for c in report["comparisons"] if c["a"]["selection"] == "fixed"]
    assert (selection["b"]["selection"], selection["b"]["slices_per_volume"], selection["n_pairs"]) == ("random", 4, 3)
    assert selection["mean_diff"] == pytest.approx(0.9 - (0.6875 + 0.75 + 0.625) / 3 - 0.0625)
  # The later cell at the grid's 100 steps too: one allocation of its selection, so no check reads those rows. They
  # are left out of the cells, and named.
  early = _run_folder(tmp_path / "early", [dict(r, steps=100) for r in extra_rows], 100)
  out = summary.run([grid_run, *retrain, extra, early], tmp_path / "merged_early", retrained=[8])
  report = json.loads((out / "findings.json").read_text())
  assert report["steps_check"][0]["unread"] == [{"cell": "2×4 fixed", "steps": 100, "seeds": 3}]
  (selection,) = [c for c in report["comparisons"] if c["a"]["selection"] == "fixed"]
  assert selection["mean_diff"] == pytest.approx(0.9 - (0.6875 + 0.75 + 0.625) / 3 - 0.0625)  # the 200-step rows
  assert ("  - Rows at another step count than the study's 200 that no check reads, left out of the report: 2×4 "
          "fixed at 100 steps (3 seeds).") in (out / "summary.md").read_text().splitlines()
  # One point not trained again (4 x 2, seed 2): the budget's study steps stay 100, and the later cell is refused.
  partial = _run_folder(tmp_path / "partial", again[:-1], 200)
  with pytest.raises(InputError, match="train.steps is 200 here but 100 .* or at the length every point of a budget "
                                       "was trained again to"):
    summary.run([grid_run, partial, extra], tmp_path / "refused")


def test_a_check_never_moves_a_budget_s_rows_until_it_is_declared_trained_again(tmp_path):
  # A budget whose extremes (8 x 1 and 2 x 4 random, seeds 0-2) are trained first, at the grid's 100 steps and at the
  # check's 200: every cell the rows hold has every seed at both step counts. Whether the check stands, is pending or
  # fails, the study stays at the grid's 100 steps (a failed check holds the budget) until the budget is declared
  # trained again in full (`retrained`); then its rows are the 200-step ones.
  study = [_row(s, d) for s, d in enumerate([0.75, 0.8125, 0.5])]
  study += [_row(s, d, slices=4) for s, d in enumerate([0.6875, 0.75, 0.625])]
  for gain_8x1, min_seeds, verdict in ((0.0, 3, "steps stand"), (0.0, 4, "pending"),
                                       (0.0078125, 3, "more steps needed"), (0.0078125, 4, "pending")):
    # The 200-step rows: every allocation gains 1/32, 8 x 1 `gain_8x1` more (the extremes' difference moves by it).
    longer = [dict(r, steps=200, dice_mean=r["dice_mean"] + 0.03125 + (gain_8x1 if r["slices_per_volume"] == 1
                                                                         else 0)) for r in study]
    rows = study + longer
    assert steps.study_steps(rows) == {(2, 8, False): 100}
    assert steps.study_rows(rows) == study
    (entry,) = steps.steps_check(rows, 0.005, min_seeds)
    assert entry["verdict"] == verdict
    (check,) = entry["checks"]
    assert (check["from_steps"], check["steps"], check["moved"]) == (100, 200, gain_8x1)
    assert steps.study_rows(rows, retrained=(8,)) == longer
    (entry,) = steps.steps_check(rows, 0.005, min_seeds, retrained=(8,))
    assert (entry["study_steps"], entry["verdict"]) == (200, "retrained")
    assert entry["reason"] == (None if verdict == "more steps needed" else "declared trained again although its "
                               "check " + ("stands" if verdict == "steps stand" else "has not decided"))
  # Before the grid has both extremes: 8 x 1 seeds 0-1 at 100 steps, both extremes at 200 (the check first). 200 is
  # then the only complete step count, yet the study stays at the grid's 100 (nothing to compare yet).
  early = study[:2] + [r for r in longer if r["seed"] < 2]
  assert steps.study_steps(early) == {(2, 8, False): 100}
  assert steps.study_rows(early) == study[:2]
  (entry,) = steps.steps_check(early, 0.005, 2)
  assert (entry["study_steps"], entry["verdict"]) == (100, "not checked")
  # Declared, with every cell at 200 steps and none complete at 100, the longest.
  assert steps.study_steps(early, (8,)) == {(2, 8, False): 200}

  # Through the report: the flag (or nothing) decides which rows are the study's, whatever the check's options.
  run = _run_folder(tmp_path / "run", study, 100)
  check_run = _run_folder(tmp_path / "check", longer, 200)  # the last, failed check (8 x 1 gains 1/128 more)
  grid_dice = [(0.75 + 0.8125 + 0.5) / 3, (0.6875 + 0.75 + 0.625) / 3]
  for steps_seeds, retrained, verdict, dice in (
      (3, None, "more steps needed", grid_dice), (4, None, "pending", grid_dice),
      (3, [8], "retrained", [grid_dice[0] + 0.03125 + 0.0078125, grid_dice[1] + 0.03125])):
    out = summary.run([run, check_run], tmp_path / f"out_{steps_seeds}_{retrained}", steps_seeds=steps_seeds,
                      retrained=retrained)
    report = json.loads((out / "findings.json").read_text())
    assert [e["verdict"] for e in report["steps_check"]] == [verdict]
    with open(out / "summary.csv", encoding="utf-8") as f:
      assert [float(c["dice_mean"]) for c in csv.DictReader(f)] == pytest.approx(dice)
  with pytest.raises(InputError, match="--retrained: budget 16 has no sparse point trained at two step counts"):
    summary.run([run, check_run], tmp_path / "typo", retrained=[16])


def _needed(seed_sd, volume_var, num_volumes):
  """`comparisons.seeds_needed` of one family pooled from one 3-seed comparison."""
  comparison = {"family": "allocation", "seed_sd": seed_sd, "n_pairs": 3, "volume_var": volume_var,
                "n_volumes": num_volumes}
  return comparisons_lib.seeds_needed([comparison])["allocation"]


def test_seeds_text_names_the_limit_that_was_hit():
  # The volume term alone: 0.05 / 10 gives a standard error of 0.071 however many seeds, against a margin of 0.02.
  volumes = _needed(0.001, 0.05, 10)
  assert (volumes["unreachable"], volumes["unreachable_by"]) == (True, "volumes")
  assert render.seeds_text(volumes) == ("more than 1000 (the test volumes' own variance is too large for the margin, "
                                        "whatever the seeds)")
  # No volume term, a per-seed SD of 0.5 (1.06 at its 80% upper limit): about (2.8 x 1.06 / 0.02)^2 = 22,000 seeds.
  spread = _needed(0.5, 0.0, 60)
  assert spread["seed_sd_upper"] == pytest.approx(0.5 * math.sqrt(2 / (-2 * math.log(0.8))))
  assert (spread["unreachable"], spread["unreachable_by"]) == (True, "seeds")
  assert render.seeds_text(spread) == ("more than 1000 (the per-seed spread of the differences is too large for the "
                                       "margin at that many seeds)")
  reachable = _needed(0.01, 0.0, 60)
  assert (reachable["unreachable"], reachable["unreachable_by"]) == (False, None)
  assert render.seeds_text(reachable) == str(reachable["seeds_needed"])
  # The power the family's tests have now, at the 3 seeds it shares, on the same basis: below 80%, which the seeds
  # needed are the first to reach.
  power = lambda n: stats.power(n, reachable["seed_sd_upper"], 0.0, 60, 0.02, reachable["alpha"])
  assert (reachable["seeds_now"], reachable["power_now"]) == (3, pytest.approx(power(3)))
  assert power(3) < power(reachable["seeds_needed"] - 1) < 0.8 <= power(reachable["seeds_needed"])
  assert spread["power_now"] < 0.06 and volumes["power_now"] < 0.06  # hopeless at 3 seeds, as said above


def _planned_run_folder(path, rows, seeds):
  """A run folder whose config plans `seeds` for every point (`study.seeds`)."""
  _run_folder(path, rows, 100)
  config = json.loads((path / "config.json").read_text())
  config["study"] = {"budgets": [8], "slices_per_volume": [1, 2, 4], "selections": ["random", "fixed"],
                     "interpolation": [False], "seeds": list(seeds), "reference": False, "reference_seeds": [0],
                     "three_d": {key: [] for key in ("budgets", "slices_per_volume", "selections", "interpolation",
                                                     "seeds", "reference", "reference_seeds")}}
  (path / "config.json").write_text(json.dumps(config))
  return path


def test_a_cell_missing_planned_seeds_is_pending_until_they_are_in(tmp_path):
  # Budget 8, random: 8 x 1 (a) beats 4 x 2 by 1/32 + noise (t = 4 sqrt(2)) and 2 x 4 by 1/64 + noise
  # (t = 2 sqrt(2)); 8 x 1 fixed scores 0.9. The first run has trained 2 x 4 random and 8 x 1 fixed for seeds 0-1
  # of the 5 it plans.
  eight, four = _pair(1 / 32, a={"slices": 1}, b={"slices": 2}), _pair(1 / 64, a={"slices": 1}, b={"slices": 4})
  late = four[1::2] + [_row(seed, 0.9, selection="fixed") for seed in range(5)]
  first = _planned_run_folder(tmp_path / "first", eight + [r for r in late if r["seed"] < 2], range(5))
  p_strong, p_weak = 1 - (2 * math.sqrt(2) / 3) * (1 + 1 / 18), 1 - math.sqrt(2 / 3) * (1 + 1 / 6)

  out = summary.run([first], tmp_path / "interim")
  report = json.loads((out / "findings.json").read_text())
  by_b = {c["b"]["slices_per_volume"]: c for c in report["comparisons"] if c["comparison"] == "allocation"}
  assert (by_b[4]["verdict"], by_b[4]["pending"], by_b[4]["n_pairs"], by_b[4]["planned_seeds"]) == (
      "pending", True, 2, 5)
  assert by_b[4]["p_adjusted"] is None
  # The pending comparison counts in the family as p = 1: m = 2, so 4 x 2's p is doubled (alone it would be p).
  assert (by_b[2]["verdict"], by_b[2]["family_size"]) == ("better", 2)
  assert by_b[2]["p_adjusted"] == pytest.approx(2 * p_strong)
  text = (out / "summary.md").read_text()
  assert "| 2D | 8 | 2 | 4 | — | random | off | 0.727 ± 0.011 (2 of 5 planned) |" in text
  assert ("| allocation | 2D | 8 | 8×1 random | 2×4 random | 2 of 5 | 1 | +0.023 | — | — | — | — | — | pending |"
          in text)
  # 8 x 1 fixed has the highest mean over its 2 seeds, but neither the recommendation nor the cost view takes it.
  (entry,) = report["recommendations"]
  assert entry["recommended"] == "8×1 random"
  # What the complete cells say is shown, but the case waits for the seeds, and so does finding 1's highest mean.
  assert (entry["case"], entry["case_without_gate"]) == ("inconclusive: seeds pending", "best")
  assert entry["agreement"] == "inconclusive"  # finding 1's rule on 1 better and 1 pending, not held as the case is
  assert report["findings"][0]["best"] == {"2D budget 8": {"allocation": "8×1 random", "slices_per_volume": 1,
                                                           "dice_mean": 0.75}}
  assert findings_lib.direction_verdict([by_b[4]]) == "inconclusive: seeds pending"
  assert entry["pending"] == ["8×1 fixed (2 of 5 seeds)", "2×4 random (2 of 5 seeds)"]
  assert "- Still missing planned seeds, left out until they are in: 8×1 fixed (2 of 5 seeds), 2×4 random" in text
  assert text.split("## Annotation cost")[1].count("| 8 | 2D |") == 1
  assert "| 8 | 2D | 8×1 | random | off | 0.750 ± 0.000 (5) |" in text
  with open(out / "summary.csv", newline="") as f:
    seeds = {(c["slices_per_volume"], c["selection"]): (c["n_seeds"], c["n_seeds_planned"]) for c in csv.DictReader(f)}
  assert seeds == {("1", "random"): ("5", "5"), ("2", "random"): ("5", "5"), ("4", "random"): ("2", "5"),
                   ("1", "fixed"): ("2", "5")}

  # Seeds 2-4 arrive from another run: tested now; 4 x 2's adjusted p did not move (Holm: max(2 p_strong, p_weak)).
  second = _planned_run_folder(tmp_path / "second", [r for r in late if r["seed"] >= 2], (2, 3, 4))
  report = json.loads((summary.run([first, second], tmp_path / "final") / "findings.json").read_text())
  by_b = {c["b"]["slices_per_volume"]: c for c in report["comparisons"] if c["comparison"] == "allocation"}
  assert [(by_b[k]["verdict"], by_b[k]["n_pairs"]) for k in (2, 4)] == [("better", 5), ("better", 5)]
  assert [by_b[k]["p_adjusted"] for k in (2, 4)] == pytest.approx([2 * p_strong, p_weak])
  assert report["recommendations"][0]["pending"] == []


def test_a_study_closed_short_of_its_seeds_reads_as_if_it_planned_only_those(tmp_path):
  # The run plans seeds 0-4 and stopped after seeds 0-2 of 2 x 4 random (8 x 1 and 4 x 2 have all 5).
  eight, four = _pair(1 / 32, a={"slices": 1}, b={"slices": 2}), _pair(1 / 64, a={"slices": 1}, b={"slices": 4})
  run = _planned_run_folder(tmp_path / "run", eight + [r for r in four[1::2] if r["seed"] < 3], range(5))
  pending = json.loads((summary.run([run], tmp_path / "pending") / "findings.json").read_text())
  assert [c["verdict"] for c in pending["comparisons"]] == ["better", "pending"]
  closed = summary.run([run], tmp_path / "closed", close=True)
  report = json.loads((closed / "findings.json").read_text())
  # The seeds every cell has, 0-2, computed: the same report as a run that trained and planned only seeds 0-2.
  only = _planned_run_folder(tmp_path / "only", [r for r in eight + four[1::2] if r["seed"] < 3], range(3))
  alone = json.loads((summary.run([only], tmp_path / "alone") / "findings.json").read_text())
  assert [(c["n_pairs"], c["pending"], c["family_size"]) for c in report["comparisons"]] == [(3, False, 2)] * 2
  assert report["comparisons"] == alone["comparisons"] and report["recommendations"][0]["pending"] == []
  assert report["options"]["closed"] == {"seeds": {"2": [0, 1, 2]}, "planned": {"2": [0, 1, 2, 3, 4]},
                                         "rows_left_out": 4}
  text = (closed / "summary.md").read_text()
  assert text.index("**Closed short of its planned seeds** (`--close`): 2D at seeds 0, 1, 2 of the 0, 1, 2, 3, 4 "
                    "planned, as if the runs planned no other; 4 rows of other seeds") < text.index("## How this")
  # Nothing to close in a complete study, or in the one-seed-apart cells of a study that shares no seed.
  with pytest.raises(InputError, match="--close: no cell misses a seed its runs plan: nothing to close"):
    summary.run([only], tmp_path / "bad", close=True)
  apart = _planned_run_folder(tmp_path / "apart", [_row(0, 0.7), _row(1, 0.6, slices=2)], range(2))
  with pytest.raises(InputError, match="--close: the 2D cells share no seed"):
    summary.run([apart], tmp_path / "bad", close=True)


def test_a_declared_budget_without_a_complete_step_count_takes_the_longest_present():
  # 8 x 1: seeds 0-2 at 100 steps, 0-1 at 200; 2 x 4: seed 0 at 100 only, seed 1 at 200 only: no step count has every
  # seed of every cell. Declared trained again, the study is at 200 (the retraining under way; its cells pending);
  # undeclared, at the grid's 100.
  rows = [_row(s, 0.8) for s in range(3)] + [_row(s, 0.8, steps_=200) for s in range(2)]
  rows += [_row(0, 0.7, slices=4), _row(1, 0.7, slices=4, steps_=200)]
  assert steps.complete(steps_lib_seeds(rows)) == []
  assert steps.study_steps(rows, (8,)) == {(2, 8, False): 200}
  assert steps.study_steps(rows) == {(2, 8, False): 100}


def steps_lib_seeds(rows) -> dict:
  """{cell key: {step count: seeds}} of one budget's rows, as `steps.complete` takes them."""
  out = {}
  for row in rows:
    out.setdefault(cells_lib.cell_key(row), {}).setdefault(row["steps"], set()).add(row["seed"])
  return out


@pytest.mark.slow
def test_the_report_command_line_passes_the_declaration(tmp_path):
  study = [_row(s, 0.75 + 0.01 * s, slices=k) for k in (1, 4) for s in range(3)]
  longer = [dict(r, steps=200, dice_mean=r["dice_mean"] + (0.05 if r["slices_per_volume"] == 1 else 0.03))
            for r in study]
  a, b = _run_folder(tmp_path / "a", study, 100), _run_folder(tmp_path / "b", longer, 200)
  command = [sys.executable, "-m", "slicejax.report", f"--workdir={a}", f"--workdir={b}", f"--out={tmp_path / 'out'}",
             "--steps_seeds=3"]
  for extra, expected in (([], (100, "more steps needed")), (["--retrained=8"], (200, "retrained"))):
    subprocess.run(command + extra, check=True, capture_output=True, cwd=pathlib.Path(__file__).parent.parent)
    report = json.loads((tmp_path / "out" / "findings.json").read_text())
    assert [(e["study_steps"], e["verdict"]) for e in report["steps_check"]] == [expected]
  bad = subprocess.run(command + ["--retrained=8,x"], check=False, capture_output=True, text=True)
  assert bad.returncode == 2 and "--retrained: must list budgets (integers)" in bad.stderr


def test_a_check_merges_with_a_grid_share_still_under_way(tmp_path):
  # Budget 144's check (144 x 1 and 9 x 16 random, seeds 0-1, 8,000 steps) beside its grid's extremes share at
  # 4,000 steps that has trained 144 x 1 for seeds 0-3 so far: neither run's trained points hold the other's, but
  # the share's grid plans every point of the check, so the two merge as a steps check (the study's configs).
  spec = importlib.util.spec_from_file_location("hippocampus", pathlib.Path(__file__).parent.parent / "configs"
                                                / "hippocampus.py")
  hippocampus = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(hippocampus)

  def run(name, part, rows):
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(hippocampus.get_config(f"converged={part}").to_json_best_effort())
    results.append_rows(path / "results.jsonl", rows)
    return path

  share = run("share", "grid,budget=144,cells=extremes", [_row(s, 0.8, budget=144, steps_=4000) for s in range(4)])
  check = run("check", "doubling,budget=144", [_row(s, 0.8, budget=144, slices=k, steps_=8000)
                                               for k in (1, 16) for s in range(2)])
  rows, _ = runs.read_runs([share, check])
  assert steps.study_steps(rows) == {(2, 144, False): 4000}
  assert runs.planned_points(json.loads((share / "config.json").read_text())) == {(2, 144, False): {
      (2, 144, 144 // k, k, "random", False, False, s) for k in (1, 16) for s in range(5)}}
  # A run at another length whose points its partner neither trained nor plans is refused, as before.
  other = run("other", "grid,budget=144,cells=others", [_row(s, 0.8, budget=144, selection="fixed", steps_=4000)
                                                        for s in range(2)])
  with pytest.raises(InputError, match="train.steps is 8000 here but 4000"):
    runs.read_runs([other, check])


def test_closing_refuses_to_move_a_retrained_budget_s_rows(tmp_path):
  # Budget 8 at 100 steps has seeds 0-4 but for 2 x 4 (seeds 0-1); it is declared trained again, and seeds 0-1 of
  # every cell have been at 200 steps: 100 is its longest complete step count. Closed at seeds 0-1, 200 would be
  # complete and become the study's: refused. Undeclared, the rows at 200 steps are a check's and never the study's:
  # closing leaves the study at 100.
  grid = [_row(s, 0.75, slices=k) for k in (1, 2) for s in range(5)] + [_row(s, 0.7, slices=4) for s in range(2)]
  check = [dict(r, steps=200, dice_mean=r["dice_mean"] + (0.0625 if r["slices_per_volume"] == 1 else 0))
           for r in grid if r["seed"] < 2]
  run = _planned_run_folder(tmp_path / "grid", grid, range(5))
  longer = _planned_run_folder(tmp_path / "check", check, range(2))
  config = json.loads((longer / "config.json").read_text())
  config["train"] = {"steps": 200, "warmup_steps": 10}
  (longer / "config.json").write_text(json.dumps(config))
  with pytest.raises(InputError, match="--close: closing would move 2D budget 8's study rows from 100 to 200 steps"):
    summary.run([run, longer], tmp_path / "bad", close=True, retrained=[8])
  out = summary.run([run, longer], tmp_path / "closed", close=True)
  report = json.loads((out / "findings.json").read_text())
  assert [(e["study_steps"], e["verdict"]) for e in report["steps_check"]] == [(100, "more steps needed")]


def test_runs_in_rounds_merge_only_with_the_same_round_schedule(tmp_path):
  def run(name, rows, **schedule):
    path = _run_folder(tmp_path / name, rows, 100)
    config = json.loads((path / "config.json").read_text())
    config["rounds"] = {"first_selection": "fixed", "first_share": 0.5, "members": 4, **schedule}
    (path / "config.json").write_text(json.dumps(config))
    return path

  in_rounds = lambda seeds: [_row(s, 0.7, slices=4, selection="entropy", rounds=2) for s in seeds]
  one_shot = [_row(s, 0.6, slices=4) for s in range(3)]
  first = run("first", in_rounds([0, 1]))
  # More seeds of the same schedule merge, and so does a one-shot run whatever its (unused) round options say.
  summary.run([first, run("same", in_rounds([2])), run("one_shot", one_shot, members=8)], tmp_path / "merged")
  with pytest.raises(InputError, match=r"rounds\.members is 8 here but 4 in .*first"):
    summary.run([first, run("other", in_rounds([2]), members=8)], tmp_path / "refused")


def test_a_cell_missing_planned_seeds_at_another_step_count_is_pending():
  # The grid (100 steps) plans seeds 0-4 and has trained 0-2; a run training the budget again at 200 steps (its check
  # failed: 8 x 1 gains 0.1 there; declared trained again) plans and has seeds 0-2. 200 steps is complete for now,
  # but seeds 3-4 at 100 steps would move the study back to 100.
  rows = [dict(_row(s, 0.8 if (steps_, slices) == (200, 1) else 0.7, slices=slices, steps_=steps_),
               planned_seeds=planned)
          for steps_, planned in ((100, [0, 1, 2, 3, 4]), (200, [0, 1, 2])) for slices in (1, 4) for s in range(3)]
  study = steps.study_rows(rows, (8,))
  assert {r["steps"] for r in study} == {200}
  assert [c["missing_seeds"] for c in cells_lib.summarise(study)] == [[3, 4], [3, 4]]
  (comparison,) = comparisons_lib.paired_comparisons(study)
  assert (comparison["verdict"], comparison["n_pairs"], comparison["planned_seeds"]) == ("pending", 3, 5)
  # Once seeds 3-4 are in at 100 steps, the study is at 100 steps again, complete.
  rows += [dict(_row(s, 0.7, slices=slices), planned_seeds=[0, 1, 2, 3, 4]) for slices in (1, 4) for s in (3, 4)]
  study = steps.study_rows(rows, (8,))
  assert {r["steps"] for r in study} == {100}
  assert [c["missing_seeds"] for c in cells_lib.summarise(study)] == [[], []]


def test_the_seeds_each_row_s_run_plans(tmp_path):
  rows = [_row(0, 0.7), _row(0, 0.7, dims=3), dict(_row(0, 0.9), reference=True, slices_per_volume=None),
          dict(_row(0, 0.9, dims=3), reference=True, slices_per_volume=None), _row(0, 0.7, selection="annotated"),
          _row(0, 0.7, dims=3, selection="annotated")]
  path = _planned_run_folder(tmp_path / "run", rows, range(5))
  config = json.loads((path / "config.json").read_text())
  config["study"].update(reference_seeds=[0, 1, 2])
  config["study"]["three_d"].update(seeds=[0, 1], reference_seeds=[7])
  (path / "config.json").write_text(json.dumps(config))
  read, _ = runs.read_runs([path])
  # 2D and 3D points, the 2D and 3D references, and annotated plans (`study.seeds` in every dims).
  assert [r["planned_seeds"] for r in read] == [[0, 1, 2, 3, 4], [0, 1], [0, 1, 2], [7], [0, 1, 2, 3, 4],
                                                [0, 1, 2, 3, 4]]


def test_below_the_seeds_a_verdict_needs_no_p_value_or_interval_is_shown():
  rows = [r for r in _pair(1 / 32, a={"slices": 1}, b={"slices": 2}) if r["seed"] < 2]
  rows += [_row(s, 0.7, selection="fixed") for s in range(2)]  # fixed - random at one slice: an A/A check
  options = comparisons_lib.stats_options()
  (comparison,) = comparisons_lib.paired_comparisons(rows)
  assert comparison["verdict"] == "underpowered" and comparison["ci_low"] is not None  # computed, not shown
  table = render._comparison_table([comparison], options)  # pylint: disable=protected-access
  assert table[2] == ("| allocation | 2D | 8 | 8×1 random | 4×2 random | 2 | 1 | +0.039 | — | — | — | — | — | "
                      "underpowered | — | — |")
  (check,) = comparisons_lib.a_a_checks(rows)
  assert check["excludes_zero"] is None
  assert render.checks_markdown({"a_a": [check], "steps": []}, options)[6] == (
      "| 2D | 8 | 8×1 fixed | 8×1 random | 2 | 1 | -0.050 | — | — | no test: fewer than 3 seeds |")
