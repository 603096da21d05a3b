"""Tests for slicejax.report.results: the row schema and results.jsonl I/O."""

import json
import os

import numpy as np
import pytest

from slicejax.errors import InputError
from slicejax.report import results
from slicejax.study import grid as study


def _row(seed, dice, **extra):
  row = {"dims": 2, "budget": 8, "volumes": 8, "slices_per_volume": 1, "selection": "random", "interpolation": False,
         "reference": False, "seed": seed, "steps": 100, "dice_mean": dice}
  row.update(extra)
  return row


def test_read_rows_ignores_a_torn_last_line(tmp_path):
  path = tmp_path / "results.jsonl"
  path.write_text(json.dumps(_row(0, 0.5)) + "\n" + json.dumps(_row(1, 0.25)) + "\n" + '{"dims": 2, "bud')
  assert results.read_rows(path) == [_row(0, 0.5), _row(1, 0.25)]
  # A complete last object whose newline was not yet written is kept.
  path.write_text(json.dumps(_row(0, 0.5)) + "\n" + json.dumps(_row(1, 0.25)))
  assert results.read_rows(path) == [_row(0, 0.5), _row(1, 0.25)]
  assert results.read_rows(tmp_path / "missing.jsonl") == []


def test_read_rows_rejects_a_corrupt_middle_line_with_its_number(tmp_path):
  path = tmp_path / "results.jsonl"
  path.write_text(json.dumps(_row(0, 0.5)) + "\n" + '{"dims": 2, "bud\n' + json.dumps(_row(1, 0.25)) + "\n")
  with pytest.raises(InputError, match=rf"^{path}:2: not valid JSON"):
    results.read_rows(path)
  path.write_text(json.dumps(_row(0, 0.5)) + "\n\n[1, 2]\n")
  with pytest.raises(InputError, match=rf"^{path}:3: not a JSON object"):
    results.read_rows(path)
  # A newline-terminated last line was written whole, so it is corrupt, not torn.
  path.write_text(json.dumps(_row(0, 0.5)) + "\n" + '{"dims": 2, "bud\n')
  with pytest.raises(InputError, match=rf"^{path}:2:"):
    results.read_rows(path)


def test_append_rows_keeps_earlier_rows(tmp_path):
  path = tmp_path / "results.jsonl"
  results.append_rows(path, [_row(0, 0.5)])
  results.append_rows(path, [_row(1, np.float32(0.25), dice_per_class={"anterior": np.float64(0.125)})])
  assert results.read_rows(path) == [_row(0, 0.5), _row(1, 0.25, dice_per_class={"anterior": 0.125})]
  # A torn line left by a killed writer is dropped, not buried under the new rows.
  with open(path, "a") as f:
    f.write('{"dims": 3, "bu')
  results.append_rows(path, [_row(2, 0.75)])
  assert results.read_rows(path) == [_row(0, 0.5), _row(1, 0.25, dice_per_class={"anterior": 0.125}),
                                    _row(2, 0.75)]
  assert path.read_text().endswith("\n")
  assert sorted(os.listdir(tmp_path)) == ["results.jsonl", "results.jsonl.lock"]


def test_append_rows_rejects_unstorable_rows_and_writes_nothing(tmp_path):
  path = tmp_path / "results.jsonl"
  results.append_rows(path, [_row(0, 0.5)])
  with pytest.raises(InputError, match="new row 1: set is not JSON serialisable"):
    results.append_rows(path, [_row(1, 0.5), _row(2, {0.5})])
  assert results.read_rows(path) == [_row(0, 0.5)]


def test_make_row_stores_undefined_dice_as_null_and_comparable_drops_placement_and_timing():
  point = study.Point(2, 8, 4, 2, "fixed", True, 3)
  nan = float("nan")
  row = results.make_row(
      point, group=1, model_index=5, steps=10, density=0.25, class_names=["a", "b"],
      test={"dice_mean": 0.5, "dice_per_class": np.array([0.5, nan]), "volumes": 4},
      val={"dice_mean": nan, "dice_per_class": np.array([nan, nan]), "volumes": 1}, diverged=False, diverged_step=-1,
      interpolation={"dice_mean": 0.75, "dice_per_class": [0.75, nan], "num_slices": 6},
      seconds={"train_seconds": 1.5})
  assert row == {
      "name": "2d_b8_s4_rho2_fixed_interp_seed3", "dims": 2, "budget": 8, "volumes": 4, "slices_per_volume": 2,
      "selection": "fixed", "interpolation": True, "seed": 3, "reference": False, "group": 1, "model_index": 5,
      "density": 0.25, "steps": 10, "dice_mean": 0.5, "dice_per_class": {"a": 0.5, "b": None}, "test_volumes": 4,
      "val_dice_mean": None, "val_dice_per_class": {"a": None, "b": None}, "val_volumes": 1, "diverged": False,
      "interp_dice": 0.75, "interp_slices": 6, "train_seconds": 1.5}
  assert set(row) - set(results.comparable(row)) == {"group", "model_index", "train_seconds"}
  json.dumps(row, allow_nan=False)
