"""Tests for slicejax.stats: paired differences, the hierarchical bootstrap, Wilcoxon, verdicts and seeds needed."""

import math

import numpy as np
import pytest

from slicejax import stats


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


def test_bootstrap_two_seeds_one_volume_by_hand():
  # Means over two resampled seeds of d = (0, 1): 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4: variance 1/8, and the
  # 2.5% and 97.5% quantiles are 0 and 1.
  out = stats.hierarchical_bootstrap(np.array([[0.0], [1.0]]), resamples=20_000, seed=3)
  assert out["mean"] == 0.5
  assert (out["low"], out["high"]) == (0.0, 1.0)
  assert out["variance"] == pytest.approx(1 / 8, rel=0.03)


def test_bootstrap_constant_differences_have_a_point_interval():
  out = stats.hierarchical_bootstrap(np.full((4, 6), 0.125), resamples=500)
  assert (out["mean"], out["low"], out["high"], out["variance"]) == (0.125, 0.125, 0.125, 0.0)


def test_bootstrap_one_seed_gives_no_interval():
  out = stats.hierarchical_bootstrap(np.array([[0.1, 0.3]]))
  assert out["mean"] == pytest.approx(0.2)
  assert out["low"] is None and out["high"] is None and out["variance"] is None


def test_bootstrap_resamples_volumes_within_seeds():
  # Seeds agree (d has no seed effect) but volumes differ: the interval must still have width, from volumes.
  d = np.tile([[-1.0, 1.0]], (5, 1))
  out = stats.hierarchical_bootstrap(d, resamples=4000)
  assert out["mean"] == 0.0
  assert out["low"] < -0.2 and out["high"] > 0.2
  # Var of the mean of 10 draws from {-1, 1}: 1 / 10.
  assert out["variance"] == pytest.approx(0.1, rel=0.08)


def test_bootstrap_is_reproducible_and_skips_nan():
  d = np.array([[0.1, np.nan, 0.3], [0.2, 0.4, np.nan]])
  assert stats.hierarchical_bootstrap(d, resamples=300) == stats.hierarchical_bootstrap(d, resamples=300)
  assert stats.hierarchical_bootstrap(d)["mean"] == pytest.approx(0.25)


def test_wilcoxon_by_hand():
  # All five differences positive: exact two-sided p = 2 / 2^5.
  assert stats.wilcoxon([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)
  # Ranks 1..4 with signs (+, -, +, +): W- = 2. Of the 16 equally likely sign patterns, 3 have a negative rank sum
  # <= 2 ({}, {1}, {2}): two-sided p = 2 * 3/16.
  assert stats.wilcoxon([0.1, -0.2, 0.3, 0.4]) == pytest.approx(2 * 3 / 16)
  assert stats.wilcoxon([0.5]) is None
  assert stats.wilcoxon([0.0, 0.0]) is None


def test_verdict_words():
  assert stats.verdict(0.01, 0.03) == "better"
  assert stats.verdict(-0.03, -0.01) == "worse"
  assert stats.verdict(-0.01, 0.03) == "no detectable difference"
  assert stats.verdict(None, None) == stats.ONE_SEED


def test_seeds_needed_by_hand():
  # One seed's variance 5 * 0.0004 = 0.002; (1.959964 + 0.841621)^2 * 0.002 / 0.01^2 = 156.97 -> 157.
  assert stats.seeds_needed(0.01, 0.0004, 5) == 157
  assert stats.seeds_needed(-0.01, 0.0004, 5) == 157
  assert stats.seeds_needed(0.5, 1e-6, 5) == 2
  assert stats.seeds_needed(0.0, 0.001, 5) is None
  assert stats.seeds_needed(0.01, None, 1) is None


def test_compare_clear_difference_is_better_and_reports_surface_metrics():
  a = {s: _row([0.8 + 0.01 * s, 0.9, 0.85]) for s in range(5)}
  b = {s: _row([0.6 + 0.01 * s, 0.7, 0.65]) for s in range(5)}
  out = stats.compare(a, b, resamples=2000)
  assert out["seeds"] == [0, 1, 2, 3, 4] and out["n_volumes"] == 3
  assert out["mean_diff"] == pytest.approx(0.2)
  assert out["ci_low"] == pytest.approx(0.2) and out["ci_high"] == pytest.approx(0.2)
  assert out["verdict"] == "better"
  assert out["nsd_diff"] == pytest.approx(0.1) and out["hd95_diff"] == pytest.approx(2.0)
  assert out["p_wilcoxon"] == pytest.approx(2 / 32)


def test_compare_one_seed_says_so():
  out = stats.compare({0: _row([0.5, 0.5, 0.5])}, {0: _row([0.4, 0.4, 0.4])})
  assert out["verdict"] == stats.ONE_SEED and out["ci_low"] is None and out["seeds_needed"] is None
  assert out["mean_diff"] == pytest.approx(0.1)


def test_compare_without_per_volume_results_uses_dice_mean():
  a = {0: {"dice_mean": 0.5}, 1: {"dice_mean": 0.75}}
  b = {0: {"dice_mean": 0.25}, 1: {"dice_mean": 0.5}}
  out = stats.compare(a, b, resamples=200)
  assert out["n_volumes"] == 1 and out["mean_diff"] == 0.25 and out["verdict"] == "better"
  assert out["nsd_diff"] is None
