"""Tests for slicejax.report.statistics: paired differences, the crossed seed x volume interval, TOST, Holm, verdicts and seeds
needed; values by hand, equalities with the textbook tests (scipy), and a calibration by simulation."""

import math
import pathlib

import numpy as np
import pytest

from scipy import stats as scipy_stats

from slicejax.report import statistics as stats


def _row(dice_per_volume, cases=("a", "b", "c"), dice_mean=None):
  """A result row whose volumes have one class each, with the given Dice."""
  return {"test_cases": list(cases), "dice_mean": dice_mean if dice_mean is not None else float(np.mean(
      dice_per_volume)), "per_volume": {"dice": [[d] for d in dice_per_volume],
                                        "nsd": [[d / 2] for d in dice_per_volume],
                                        "hd95": [[10 * d] for d in dice_per_volume]}}


def test_volume_scores_average_defined_classes():
  row = {"test_cases": ["x", "y", "z"], "per_volume": {"dice": [[0.5, 1.0], [None, 0.25], [None, None]]}}
  scores = stats.volume_scores(row)
  assert scores["x"] == 0.75 and scores["y"] == 0.25 and math.isnan(scores["z"])
  assert stats.volume_scores({"dice_mean": 0.5}) == {}


def test_paired_differences_match_seeds_and_volumes():
  a = {0: _row([0.5, 0.75, 1.0]), 1: _row([0.25, 0.5, 0.5]), 2: _row([1, 1, 1])}
  b = {0: _row([0.25, 0.25, 0.5]), 1: _row([0.5, 0.5, 0.5], cases=("b", "a", "c"))}
  seeds, d = stats.paired_differences(a, b)
  assert seeds == [0, 1]
  # Volumes are matched by case id, not position: seed 1's b has a = 0.5, b = 0.5, c = 0.5.
  np.testing.assert_allclose(d, [[0.25, 0.5, 0.5], [-0.25, 0.0, 0.0]])


def test_complete_pairs_keeps_the_larger_complete_table():
  nan = math.nan
  # Seed 1 has no defined volume; then dropping volume 1 keeps 4 pairs, dropping seed 0 keeps 3: the volume goes.
  d = np.array([[0.1, nan, 0.3], [nan, nan, nan], [0.2, 0.4, 0.1]])
  table, seeds = stats.complete_pairs(d)
  np.testing.assert_array_equal(table, [[0.1, 0.3], [0.2, 0.1]])
  np.testing.assert_array_equal(seeds, [0, 2])
  # One undefined volume in each of seeds 0 and 1 of 3 seeds x 4 volumes: dropping volumes keeps 6, dropping those
  # two seeds keeps 4.
  d = np.array([[nan, 1, 2, 3], [4, nan, 6, 7], [8, 9, 10, 11.0]])
  assert stats.complete_pairs(d)[0].shape == (3, 2)
  # A diagonal of undefined entries in 10 x 10: no complete table either way; per-seed means stand in.
  d = np.arange(100.0).reshape(10, 10)
  d[np.arange(10), np.arange(10)] = nan
  table, seeds = stats.complete_pairs(d)
  assert table.shape == (10, 1) and table[0, 0] == pytest.approx(np.mean(np.arange(1, 10)))


def test_crossed_mean_by_hand():
  # d = [[1, 3], [5, 11]]: seed means 2, 8; volume means 3, 7; grand mean 5; residuals +-1.
  # MS_seed = 2 x 18 = 36, MS_volume = 2 x 8 = 16, MS_residual = 4 / 1 = 4.
  # The volume component is above 0: variance (36 + 16 - 4) / 4 = 12; the seed term 36 > 48 / 2, so df = min(
  # Satterthwaite 48^2 / (36^2 + 16^2 + 4^2) = 1.5, 1) = 1.
  out = stats.crossed_mean(np.array([[1.0, 3.0], [5.0, 11.0]]))
  assert out["mean"] == 5.0 and out["se"] == pytest.approx(math.sqrt(12.0)) and out["df"] == pytest.approx(1.0)
  assert out["seed_sd"] == pytest.approx(math.sqrt(18.0)) and out["volume_var"] == pytest.approx(6.0)
  # d = [[0, 10], [1, 9]]: seed means 5, 5 (MS_seed 0); volume means 0.5, 9.5 (MS_volume 2 x 40.5 = 81); residuals
  # +-0.5 (MS_residual 1); variance (0 + 81 - 1) / 4 = 20; Satterthwaite 80^2 / (0 + 81^2 / 1 + 1 / 1) = 0.975 is
  # below the seed term's 1 degree of freedom, the floor.
  out = stats.crossed_mean(np.array([[0.0, 10.0], [1.0, 9.0]]))
  assert out["se"] == pytest.approx(math.sqrt(20.0)) and out["df"] == 1.0
  # Volume-dominated, 3 seeds x 4 volumes: d = volume effects [0, 4, 8, 12] + seed shifts [0, 0, 1], no residual.
  # Seed means 6, 6, 7 (MS_seed 4 x 1/3 = 4/3); volume means 1/3 + [0, 4, 8, 12] (MS_volume 3 x 80/3 = 80);
  # variance (4/3 + 80) / 12 = 61/9; Satterthwaite (244/3)^2 / ((4/3)^2 / 2 + 80^2 / 3 + 0) = 3.10 stands.
  out = stats.crossed_mean(np.array([[0.0, 4, 8, 12], [0, 4, 8, 12], [1, 5, 9, 13]]))
  assert out["se"] == pytest.approx(math.sqrt(61 / 9))
  assert out["df"] == pytest.approx((244 / 3) ** 2 / ((4 / 3) ** 2 / 2 + 80 ** 2 / 3))


def test_without_a_volume_component_the_interval_is_the_paired_t_on_seed_means():
  rng = np.random.default_rng(0)
  # Equal rows up to a seed shift: no volume component, no residual.
  d = 0.01 + rng.normal(0, 0.02, (4, 1)) + np.zeros((4, 7))
  out = stats.crossed_mean(d)
  t = scipy_stats.ttest_1samp(d.mean(axis=1), 0.0)
  test = stats.t_test(out["mean"], out["se"], out["df"], 0.05, 0.02)
  assert out["df"] == 3 and test["p_value"] == pytest.approx(t.pvalue)
  low, high = t.confidence_interval(0.95)
  assert (test["ci_low"], test["ci_high"]) == pytest.approx((low, high))


def test_one_value_per_seed_is_the_paired_t_test():
  per_seed = np.array([[0.03], [0.01], [0.05]])
  out = stats.crossed_mean(per_seed)
  test = stats.t_test(out["mean"], out["se"], out["df"], 0.05, 0.02)
  assert test["p_value"] == pytest.approx(scipy_stats.ttest_1samp(per_seed[:, 0], 0.0).pvalue)


def test_a_volume_effect_shared_by_every_seed_widens_the_interval():
  rng = np.random.default_rng(1)
  volume = rng.normal(0, 0.05, (1, 30))
  d = volume + rng.normal(0, 0.002, (5, 30))  # every seed sees the same volume effects
  out = stats.crossed_mean(d)
  # The mean's standard error is about sd(volume) / sqrt(30), not the tiny spread between seeds.
  assert out["se"] == pytest.approx(np.std(volume, ddof=1) / math.sqrt(30), rel=0.05)
  assert out["df"] == pytest.approx(29, rel=0.05)


def test_t_test_tost_by_hand():
  # mean 0.01, se 0.004, df 10: TOST p = max(P(T > (0.01 + 0.02) / 0.004), P(T > (0.02 - 0.01) / 0.004)).
  out = stats.t_test(0.01, 0.004, 10.0, 0.05, 0.02)
  assert out["p_equivalence"] == pytest.approx(scipy_stats.t.sf(2.5, 10))
  assert out["p_value"] == pytest.approx(2 * scipy_stats.t.sf(2.5, 10))
  half90 = scipy_stats.t.ppf(0.95, 10) * 0.004
  assert (out["ci90_low"], out["ci90_high"]) == pytest.approx((0.01 - half90, 0.01 + half90))
  # TOST rejects exactly when the 90% interval lies inside the margin.
  assert (out["p_equivalence"] < 0.05) == (-0.02 < out["ci90_low"] and out["ci90_high"] < 0.02)
  assert stats.t_test(0.01, None, None, 0.05, 0.02)["p_value"] is None
  constant = stats.t_test(0.125, 0.0, 3.0, 0.05, 0.02)
  assert (constant["p_value"], constant["ci_low"], constant["p_equivalence"]) == (0.0, 0.125, 1.0)


def test_holm_by_hand():
  # Sorted 0.01, 0.02, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.02 = 0.04, 1 x 0.04 = 0.04; None stays outside the family.
  assert stats.holm([0.04, None, 0.01, 0.02]) == pytest.approx([0.04, None, 0.03, 0.04])
  assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # 2 x 0.5 = 1, capped at 1
  assert stats.holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])  # monotone: the step-down never decreases
  assert stats.holm([]) == []


def test_holm_over_a_planned_family_counts_the_missing_hypotheses_as_p_1():
  # 2 of 5 planned: 5 x 0.01 = 0.05, then max(0.05, 4 x 0.02 = 0.08); the 3 missing would be ranked after them.
  assert stats.holm([0.02, 0.01], size=5) == pytest.approx([0.08, 0.05])
  assert stats.holm([0.02, 0.01], size=5) == pytest.approx(stats.holm([0.02, 0.01, 1.0, 1.0, 1.0])[:2])
  assert stats.holm([0.02, 0.01], size=2) == stats.holm([0.02, 0.01])
  with pytest.raises(ValueError, match="2 planned hypotheses has 3"):
    stats.holm([0.1, 0.2, 0.3], size=2)


def test_an_interim_rejection_over_the_planned_family_stays_when_the_family_completes():
  # By simulation: 2,000 families of 8 hypotheses, half of them false (p-values from a shifted normal), tested when
  # 3 of 8 have arrived (the other 5 counted as p = 1) and again when all have: the interim rejections are always a
  # subset of the final ones, and the family-wise error of the interim tests stays below alpha under the global null.
  rng = np.random.default_rng(0)
  z = rng.normal(size=(2000, 8)) + np.where(np.arange(8) < 4, 3.0, 0.0)
  p = 2 * scipy_stats.norm.sf(np.abs(z))
  kept = 0
  for row in p:
    interim = stats.holm(list(row[:3]), size=8)
    final = stats.holm(list(row))
    assert all(f <= i + 1e-12 for i, f in zip(interim, final[:3]))  # adjusted p only falls as the rest arrive
    kept += sum(i < 0.05 for i in interim)
  assert kept > 0
  null = 2 * scipy_stats.norm.sf(np.abs(rng.normal(size=(4000, 3))))
  errors = np.mean([min(stats.holm(list(row), size=8)) < 0.05 for row in null])
  assert errors < 0.05 * 3 / 8 + 0.01  # Bonferroni-like: at most alpha x 3 / 8 for 3 true nulls of 8 planned


def test_verdict_words():
  assert stats.verdict(0.03, 0.001, 0.9, 5, 0.05, 3) == "better"
  assert stats.verdict(-0.03, 0.001, 0.9, 5, 0.05, 3) == "worse"
  assert stats.verdict(0.001, 0.6, 0.01, 5, 0.05, 3) == "equivalent"
  assert stats.verdict(0.001, 0.6, 0.2, 5, 0.05, 3) == "inconclusive"
  assert stats.verdict(0.3, 0.001, 0.9, 2, 0.05, 3) == "underpowered"


def test_power_and_seeds_needed_against_the_noncentral_t():
  # 10 seeds, sd 0.02, no volume term, margin 0.02, alpha 0.05: nc = 0.02 / (0.02 / sqrt(10)) = sqrt(10).
  crit = scipy_stats.t.ppf(0.975, 9)
  want = scipy_stats.nct.sf(crit, 9, math.sqrt(10)) + scipy_stats.nct.cdf(-crit, 9, math.sqrt(10))
  assert stats.power(10, 0.02, 0.0, 60, 0.02, 0.05) == pytest.approx(want)
  n = stats.seeds_needed(0.02, 0.0, 60, 0.02, 0.05)
  assert stats.power(n, 0.02, 0.0, 60, 0.02, 0.05) >= 0.8 > stats.power(n - 1, 0.02, 0.0, 60, 0.02, 0.05)
  assert n == 10  # the textbook paired-t sample size for an effect of one standard deviation
  # A volume component larger than the margin allows is never overcome by seeds.
  assert stats.seeds_needed(0.02, 0.05, 10, 0.02, 0.05) == math.inf
  assert stats.seeds_needed(None, None, 60, 0.02, 0.05) is None


def test_compare_clear_difference_with_surface_metrics():
  a = {s: _row([0.75, 0.5, 1.0]) for s in range(3)}
  b = {s: _row([0.5, 0.25, 0.75]) for s in range(3)}
  out = stats.compare(a, b)
  assert out["mean_diff"] == pytest.approx(0.25) and out["n_pairs"] == 3 and out["n_volumes"] == 3
  assert out["ci_low"] == pytest.approx(0.25) and out["p_value"] == 0.0
  assert out["nsd_diff"] == pytest.approx(0.125) and out["hd95_diff"] == pytest.approx(2.5)


def test_compare_one_seed_has_no_interval():
  out = stats.compare({0: _row([0.5, 0.5, 0.5])}, {0: _row([0.25, 0.25, 0.25])})
  assert out["ci_low"] is None and out["p_value"] is None and out["n_pairs"] == 1


def test_compare_leaves_out_a_seed_without_dice():
  a = {0: _row([0.5, 0.5, 0.5]), 1: {"test_cases": ["a", "b", "c"], "dice_mean": None, "per_volume": {}},
       2: _row([0.75, 0.5, 0.5])}
  b = {s: _row([0.25, 0.25, 0.25]) for s in range(3)}
  out = stats.compare(a, b)
  assert out["seeds"] == [0, 2] and out["n_pairs"] == 2 and out["mean_diff"] == pytest.approx(
      np.mean([0.25, 0.25, 0.25, 0.5, 0.25, 0.25]))


def test_compare_without_per_volume_results_uses_dice_mean():
  a = {s: {"dice_mean": d} for s, d in enumerate([0.5, 0.75, 0.625])}
  b = {s: {"dice_mean": 0.25} for s in range(3)}
  out = stats.compare(a, b)
  assert out["n_volumes"] == 1 and out["mean_diff"] == pytest.approx(0.375)
  assert out["p_value"] == pytest.approx(scipy_stats.ttest_1samp([0.25, 0.5, 0.375], 0.0).pvalue)


def test_adjust_family_and_flip():
  comparisons = [dict(n_pairs=5, mean_diff=0.05, p_value=0.01, p_equivalence=0.9),
                 dict(n_pairs=5, mean_diff=0.001, p_value=0.8, p_equivalence=0.02),
                 dict(n_pairs=2, mean_diff=0.3, p_value=0.001, p_equivalence=0.9)]
  stats.adjust_family(comparisons, alpha=0.05, min_seeds=3)
  # The 2-seed comparison is not in the family: m = 2.
  assert comparisons[0]["p_adjusted"] == pytest.approx(0.02) and comparisons[2]["p_adjusted"] is None
  assert comparisons[1]["p_equivalence_adjusted"] == pytest.approx(0.04)
  assert [c["verdict"] for c in comparisons] == ["better", "equivalent", "underpowered"]
  flipped = stats.flip(dict(comparisons[0], a="x", b="y", ci_low=0.01, ci_high=0.09, ci90_low=0.02, ci90_high=0.08,
                            nsd_diff=None, hd95_diff=1.0))
  assert (flipped["a"], flipped["verdict"], flipped["mean_diff"], flipped["ci_low"], flipped["hd95_diff"]) == (
      "y", "worse", -0.05, -0.09, -1.0)


def test_the_rules_are_the_documented_ones():
  docs = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "statistics.md").read_text()
  assert stats.rules_markdown({}) in docs


def test_rows_without_per_volume_results_and_a_null_dice_compare_without_error():
  a = {0: {"dice_mean": 0.5}, 1: {"dice_mean": None}, 2: {"dice_mean": 0.75}, 3: {"dice_mean": 0.625}}
  b = {s: {"dice_mean": 0.25} for s in range(4)}
  out = stats.compare(a, b)
  assert out["seeds"] == [0, 2, 3] and out["n_pairs"] == 3 and out["mean_diff"] == pytest.approx(0.375)
