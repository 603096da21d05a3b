"""Tests for the report's families by dims, its A/A and steps checks, and the seeds it says a family needs."""

import math

import pytest

from slicejax.report import comparisons as comparisons_lib
from slicejax.report import render


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
