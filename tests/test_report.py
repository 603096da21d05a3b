"""Tests for slicejax.report: cell statistics, paired comparisons, and the summary files."""

import csv
import math
import os

import pytest

from slicejax import report
from slicejax.errors import InputError

# t_{0.975, 2} from a t table (scipy.stats.t.ppf(0.975, 2)).
T_975_2 = 4.302652729749464


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
  return tuple(cell[name] for name in report.CELL_KEY)


def test_summarise_means_std_counts_and_order():
  cells = report.summarise(_grid_rows())
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
  assert (two_interp["n_seeds"], two_interp["dice_std"], two_interp["interp_dice"]) == (1, 0.0, 0.75)
  assert (fixed["dice_mean"], fixed["train_seconds"], fixed["density"]) == (0.25, None, None)
  assert (reference["dice_mean"], reference["train_seconds"], reference["density"]) == (0.875, 40.0, 1.0)
  assert three_d["dice_mean"] == 0.75


def test_summarise_later_row_of_a_seed_replaces_the_earlier_one():
  cells = report.summarise([_row(0, 0.25), _row(1, 0.5), _row(0, 0.75)])
  # Dice [0.75, 0.5]: mean 0.625, std sqrt(2 * 0.125^2 / 1).
  assert (cells[0]["n_seeds"], cells[0]["dice_mean"]) == (2, 0.625)
  assert cells[0]["dice_std"] == pytest.approx(0.125 * math.sqrt(2), rel=1e-15)


def test_summarise_rejects_rows_without_required_fields():
  row = _row(0, 0.5)
  del row["dice_mean"]
  with pytest.raises(InputError, match="results row 1: missing field"):
    report.summarise([_row(0, 0.5), row])
  with pytest.raises(InputError, match="slices_per_volume is required"):
    report.summarise([_row(0, 0.5, slices_per_volume=None)])


def _find(comparisons, kind, **a_fields):
  found = [c for c in comparisons if c["comparison"] == kind and all(c["a"][k] == v for k, v in a_fields.items())]
  assert len(found) == 1, found
  return found[0]


def test_allocation_comparison_mean_and_t_interval():
  rows = [_row(seed, 0.5, slices=1) for seed in range(3)]
  rows += [_row(seed, 0.5 + diff, slices=2) for seed, diff in enumerate([0.01, 0.03, 0.02])]
  (comparison,) = report.paired_comparisons(rows)
  assert comparison["comparison"] == "allocation"
  assert (comparison["a"]["slices_per_volume"], comparison["b"]["slices_per_volume"]) == (2, 1)
  assert (comparison["n_pairs"], comparison["seeds"], comparison["confidence"]) == (3, [0, 1, 2], 0.95)
  # Differences [0.01, 0.03, 0.02]: mean 0.02, sample std 0.01, half-width t_{0.975,2} * 0.01 / sqrt(3).
  half = T_975_2 * 0.01 / math.sqrt(3)
  assert comparison["mean_diff"] == pytest.approx(0.02, abs=1e-12)
  assert comparison["ci_low"] == pytest.approx(0.02 - half, abs=1e-12)
  assert comparison["ci_high"] == pytest.approx(0.02 + half, abs=1e-12)


def test_allocations_are_compared_with_the_fewest_slices_per_volume():
  rows = [_row(0, 0.5, slices=2), _row(0, 0.75, slices=4), _row(0, 0.625, slices=8)]
  comparisons = report.paired_comparisons(rows)
  assert [(c["a"]["slices_per_volume"], c["b"]["slices_per_volume"], c["mean_diff"]) for c in comparisons] == [
      (4, 2, 0.25), (8, 2, 0.125)]


def test_unpaired_seeds_are_excluded_and_a_single_pair_has_no_interval():
  rows = [_row(seed, 0.5, slices=1) for seed in (1, 2, 5)]
  rows += [_row(seed, dice, slices=2) for seed, dice in [(0, 0.0), (1, 0.75), (2, 0.625), (3, 0.0)]]
  (comparison,) = report.paired_comparisons(rows)
  assert (comparison["seeds"], comparison["n_pairs"], comparison["mean_diff"]) == ([1, 2], 2, 0.1875)
  # Differences [0.25, 0.125]: sample std 0.125 / sqrt(2); half-width t_{0.975,1} * std / sqrt(2) = 12.706 * 0.0625.
  assert comparison["ci_high"] - comparison["mean_diff"] == pytest.approx(12.706204736174705 * 0.0625, rel=1e-12)
  (single,) = report.paired_comparisons([_row(1, 0.5, slices=1), _row(1, 0.75, slices=2), _row(2, 0.0, slices=2)])
  assert (single["n_pairs"], single["mean_diff"], single["ci_low"], single["ci_high"]) == (1, 0.25, None, None)
  assert report.paired_comparisons([_row(0, 0.5, slices=1), _row(1, 0.75, slices=2)]) == []


def test_selection_and_interpolation_comparisons():
  comparisons = report.paired_comparisons(_grid_rows())
  assert [c["comparison"] for c in comparisons] == ["allocation", "selection", "interpolation"]
  allocation = _find(comparisons, "allocation", interpolation=False, selection="random")
  # Random, 2 vs 1 slices per volume, seeds 0-2: [0.5 - 0.5, 0.5 - 0.625, 0.875 - 0.75] = [0, -0.125, 0.125].
  assert (allocation["n_pairs"], allocation["mean_diff"]) == (3, 0.0)
  selection = _find(comparisons, "selection", selection="fixed")
  assert selection["b"] == {"dims": 2, "budget": 8, "volumes": 4, "slices_per_volume": 2, "selection": "random",
                            "interpolation": False, "reference": False}
  assert (selection["n_pairs"], selection["mean_diff"]) == (1, -0.25)
  interpolation = _find(comparisons, "interpolation", selection="random")
  assert (interpolation["a"]["interpolation"], interpolation["b"]["interpolation"]) == (True, False)
  assert interpolation["mean_diff"] == 0.0
  # The fixed-interval and interpolated cells have one allocation each, so no allocation comparison of their own;
  # the reference is never compared.
  assert all(not c["a"]["reference"] and not c["b"]["reference"] for c in comparisons)


def test_paired_comparisons_rejects_a_bad_confidence():
  with pytest.raises(InputError, match="confidence"):
    report.paired_comparisons([_row(0, 0.5)], confidence=1.0)


def test_write_summary_writes_the_three_files(tmp_path):
  rows = _grid_rows()
  report.write_summary(tmp_path, rows)
  assert sorted(os.listdir(tmp_path)) == ["dice_vs_allocation.png", "summary.csv", "summary.md"]

  assert (tmp_path / "dice_vs_allocation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  with open(tmp_path / "summary.csv", newline="") as f:
    table = list(csv.DictReader(f))
  cells = report.summarise(rows)
  assert len(table) == len(cells)
  for line, cell in zip(table, cells):
    assert int(line["dims"]) == cell["dims"] and int(line["budget"]) == cell["budget"]
    assert line["selection"] == cell["selection"] and int(line["interpolation"]) == cell["interpolation"]
    assert int(line["n_seeds"]) == cell["n_seeds"] and int(line["n_diverged"]) == cell["n_diverged"]
    assert float(line["dice_mean"]) == cell["dice_mean"] and float(line["dice_std"]) == cell["dice_std"]
    for name in ("density", "train_seconds", "interp_dice", "slices_per_volume"):
      assert (None if line[name] == "" else float(line[name])) == cell[name]
    for name in ("anterior", "posterior"):
      assert (None if line[f"dice_{name}"] == "" else float(line[f"dice_{name}"])) == cell["dice_per_class"].get(name)

  markdown = (tmp_path / "summary.md").read_text()
  assert ("| dims | budget | volumes | slices/volume | density | selection | interpolation | Dice mean ± std (n) "
          "| Dice anterior | Dice posterior | interp Dice | train s | diverged |") in markdown
  assert "| 2D | 8 | 8 | 1 | 0.031 | random | off | 0.625 ± 0.125 (3) | 0.500 | 0.750 | — | 20.000 | 0 |" in markdown
  assert "## Reference (every slice annotated)" in markdown
  reference_line = "| 2D | 320 | 10 | all | 1.000 | all | off | 0.875 ± 0.000 (1) | 0.875 | 0.875 | — | 40.000 | 0 |"
  assert reference_line in markdown.split("## Reference (every slice annotated)")[1]
  assert "| comparison | dims | budget | a | b | pairs | Δ Dice | 95% CI |" in markdown
  assert "| selection | 2D | 8 | 4×2 fixed | 4×2 random | 1 | -0.250 | — |" in markdown
  assert ("- 2D, budget 8: the best allocation is 8 volumes × 1 slice per volume, random selection, "
          "interpolation off (Dice 0.625 ± 0.125, 3 seeds).") in markdown
  assert "- 3D, budget 8:" in markdown


def test_write_summary_with_no_rows(tmp_path):
  report.write_summary(tmp_path, [])
  assert "No results yet." in (tmp_path / "summary.md").read_text()
  assert (tmp_path / "summary.csv").read_text().splitlines() == [
      ",".join(report.CELL_KEY) + ",n_seeds,density,dice_mean,dice_std,interp_dice,train_seconds,n_diverged"]
  assert (tmp_path / "dice_vs_allocation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
