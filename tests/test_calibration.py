"""The report's comparisons are calibrated: simulated studies with a known truth (seed effects, volume effects shared
by every seed, cell effects; `slicejax.report.calibration`) run through `comparisons.paired_comparisons`, at 3, 5 and 10
seeds.

2,000 studies per case: a true rate of 0.05 has a standard error of 0.005 there, so the bounds (false verdicts at
most 0.07 under the null, coverage of a true +0.02 at least 0.93) sit 4 standard errors from the nominal 0.05 and
0.95. The studies are seeded, so the test is deterministic; bench/calibration.py gives the full table.
"""

import pytest

from slicejax.report import calibration

REPLICATES = 2000


@pytest.mark.parametrize("num_seeds", [3, 5, 10])
@pytest.mark.slow
def test_false_verdicts_under_the_null(num_seeds):
  out = calibration.calibrate(num_seeds, 0.0, REPLICATES, seed=100 + num_seeds)
  assert out["false_rate"] <= 0.07
  assert out["coverage"] >= 0.93


@pytest.mark.parametrize("num_seeds", [3, 5, 10])
@pytest.mark.slow
def test_coverage_of_a_true_difference(num_seeds):
  out = calibration.calibrate(num_seeds, 0.02, REPLICATES, seed=200 + num_seeds)
  assert out["coverage"] >= 0.93
  assert out["false_rate"] <= 0.01  # "worse" for a true +0.02
  # Equivalence within a margin of 0.02 is false at a true +0.02: TOST says so at most alpha of the time.
  assert out["equivalent"] <= 0.07


def test_a_shared_volume_effect_is_not_counted_as_independent_seeds():
  # Only volume-cell effects and tiny noise: every seed sees the same difference per volume. An analysis that
  # resampled volumes within each seed independently would be far too narrow here; the crossed model is not.
  components = calibration.Components(seed=0.0, seed_cell=0.0, volume=0.05, volume_cell=0.05, noise=0.005)
  out = calibration.calibrate(3, 0.0, 1000, num_volumes=20, components=components, seed=7)
  assert out["false_rate"] <= 0.07 and out["coverage"] >= 0.93
