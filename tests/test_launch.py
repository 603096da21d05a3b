"""End-to-end runs of tiny configs: the phantom demo, a generated two-channel prostate-like set, real hippocampus."""

import collections
import csv
import os
import json
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from slicejax.config import load
from slicejax.data import phantom
from slicejax.modes import check
from slicejax.report import results
from slicejax.training import parallel
from slicejax.training import train

pytestmark = pytest.mark.slow  # every test here launches a study

REPO = pathlib.Path(__file__).resolve().parent.parent
ROW_KEYS = {"dims", "budget", "volumes", "slices_per_volume", "selection", "interpolation", "seed", "steps",
            "dice_mean", "dice_per_class", "train_seconds"}

TINY_DEMO_DICE = [0.017270914, 0.018202802, 0.011542768, 0.019116077, 0.015753093]
TINY_DEMO_VAL_DICE = [0.037415228, 0.035190648, 0.062424585, 0.050344297, 0.059028885]


def load_config(spec):
  return load(str(REPO / spec))


def loop_demo():
  """The tiny demo with the loop strategy's default chunk (4 models per program) instead of the tiny configs' one
  model per program, so that the grid's rows go through a program of several models; and a margin of its own, which
  the launch's report must use."""
  config = load_config("configs/demo.py:tiny")
  with config.unlocked():
    config.model_axis.chunk = parallel.DEFAULT_CHUNK
    config.stats.margin = 0.03
  return config


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("demo")
  rows = train.train_and_evaluate(loop_demo(), workdir)
  return workdir, rows


def test_demo_rows(demo_run):
  workdir, rows = demo_run
  # budget 8 x rho {1, 2} x {random, fixed} x seed 0, plus the reference.
  assert len(rows) == 5
  assert [r["name"] for r in rows] == [
      "2d_b8_s8_rho1_random_seed0", "2d_b8_s8_rho1_fixed_seed0", "2d_b8_s4_rho2_random_seed0",
      "2d_b8_s4_rho2_fixed_seed0", "2d_reference_seed0"]
  for row in rows:
    assert ROW_KEYS <= set(row)
    assert row["dims"] == 2 and row["steps"] == 6 and row["interpolation"] is False
    assert (row["test_volumes"], row["val_volumes"]) == (3, 1)
    np.testing.assert_allclose(row["dice_mean"], np.mean(list(row["dice_per_class"].values())), rtol=1e-9)
    assert set(row["dice_per_class"]) == {"core", "rim"}
  # Pinned on this CPU (jax 0.10.2): six steps of tiny models give poor but exactly reproducible Dice.
  np.testing.assert_allclose([r["dice_mean"] for r in rows], TINY_DEMO_DICE, atol=1e-6)
  np.testing.assert_allclose([r["val_dice_mean"] for r in rows], TINY_DEMO_VAL_DICE, atol=1e-6)
  assert rows[-1]["reference"] and rows[-1]["selection"] == "all" and rows[-1]["volumes"] == 8
  # Every row's plan is on disk with exactly its budget.
  for row in rows[:-1]:
    plan = json.loads((workdir / "plans" / f"{row['name']}.json").read_text())
    assert len(plan) == row["volumes"] and sum(map(len, plan.values())) == row["budget"]


def test_a_points_row_is_the_same_alone_in_a_grid_and_one_model_per_group(demo_run, tmp_path):
  _, grid_rows = demo_run
  name = "2d_b8_s4_rho2_fixed_seed0"
  in_grid = next(r for r in grid_rows if r["name"] == name)
  alone = load_config("configs/demo.py:tiny")  # one model per program, as the one-model groups below
  with alone.unlocked():
    alone.study.update(budgets=(8,), slices_per_volume=(2,), selections=("fixed",), reference=False)
  alone_rows = train.train_and_evaluate(alone, tmp_path / "alone")
  one_per_group = load_config("configs/demo.py:tiny")
  with one_per_group.unlocked():
    one_per_group.model_axis.max_models = 1
  single_rows = train.train_and_evaluate(one_per_group, tmp_path / "single")
  assert [r["name"] for r in alone_rows] == [name]
  assert (alone_rows[0]["group"], alone_rows[0]["model_index"], in_grid["model_index"]) == (0, 0, 3)
  assert results.comparable(alone_rows[0]) == results.comparable(in_grid)
  assert [results.comparable(r) for r in single_rows] == [results.comparable(r) for r in grid_rows]
  assert [r["group"] for r in single_rows] == [0, 1, 2, 3, 4]


def test_demo_summary_files(demo_run):
  workdir, rows = demo_run
  text = (workdir / "summary.md").read_text()
  assert "reference" in text.lower()
  with open(workdir / "summary.csv") as f:
    cells = list(csv.DictReader(f))
  assert len(cells) == 5
  assert (workdir / "dice_vs_allocation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert json.loads((workdir / "groups.json").read_text())[0]["0"] == rows[0]["name"]
  found = json.loads((workdir / "findings.json").read_text())
  assert found["options"]["margin"] == 0.03
  # The plan the launch wrote when it started holds exactly the comparisons the finished run made.
  made = collections.Counter(c["family"] for c in found["comparisons"])
  assert json.loads((workdir / "families.json").read_text()) == dict(made) and sum(made.values()) >= 2


def test_rerun_skips_and_keeps_rows(demo_run):
  workdir, rows = demo_run
  again = train.train_and_evaluate(loop_demo(), workdir)
  assert again == rows
  assert len(results.read_rows(workdir / "results.jsonl")) == 5


def test_prostate_as_typed_without_data_then_with_it(tmp_path):
  """`python launch.py --config=configs/prostate.py` in a folder without data: one line naming the download
  command, nothing written; once the data are where that command puts them, the same command runs (here its tiny
  variant, on a generated two-channel dataset), into the default workdir it announces first."""
  launch, configs = str(REPO / "launch.py"), REPO / "configs"
  result = subprocess.run([sys.executable, launch, f"--config={configs / 'prostate.py'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and result.stdout == ""
  assert result.stderr.strip().splitlines() == [
      "error: data/Task05_Prostate: no dataset here: run `python -m slicejax.download --task=Task05_Prostate "
      "--dest=data` to fetch it, or pass --config.data.root=PATH to your copy"]
  assert list(tmp_path.iterdir()) == []
  phantom.write_phantom(tmp_path / "data" / "Task05_Prostate", num_cases=10, shape=(16, 16, 8), num_channels=2)
  result = subprocess.run([sys.executable, launch, f"--config={configs / 'prostate.py'}:tiny"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines()[0] == ("workdir: runs/prostate_tiny (the default for this config; "
                                           "--workdir=DIR chooses another)")
  workdir = tmp_path / "runs" / "prostate_tiny"
  rows = results.read_rows(workdir / "results.jsonl")
  assert [r["name"] for r in rows] == ["2d_b6_s6_rho1_random_seed0", "2d_b6_s3_rho2_random_seed0",
                                       "2d_reference_seed0"]
  assert json.loads((workdir / "config.json").read_text())["data"]["root"] == "data/Task05_Prostate"


def test_prostate_missing_root_is_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/prostate.py", "--config.data.root=",
       f"--workdir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: config.data.root:") and "slicejax.download --task=Task05_Prostate" in last
  assert not (tmp_path / "run").exists()


def test_hippocampus_real_data(hippocampus_root, tmp_path):
  config = load_config("configs/hippocampus.py:tiny")
  with config.unlocked():
    config.data.root = str(hippocampus_root)
  rows = train.train_and_evaluate(config, tmp_path)
  assert [r["name"] for r in rows] == ["2d_b6_s6_rho1_fixed_seed0", "2d_b6_s3_rho2_fixed_seed0",
                                       "2d_reference_seed0"]
  assert all(set(r["dice_per_class"]) == {"Anterior", "Posterior"} for r in rows)
  assert rows[-1]["budget"] == sum(json.loads((tmp_path / "plans" / "2d_reference_seed0.json").read_text()).values(),
                                   []).__len__()


def test_ual_and_interpolation_points(tmp_path):
  config = load_config("configs/demo.py:tiny")
  with config.unlocked():
    config.study.update(selections=("fixed", "ual"), interpolation=(False, True), reference=False)
    config.ual.encoder.update(steps=3, batch_size=8, features=(4, 8), embedding_dim=8, projection_dim=8)
  rows = train.train_and_evaluate(config, tmp_path)
  # rho = 1 leaves nothing between annotated slices: its interpolation points are left out.
  assert len(rows) == 6 and not any(r["interpolation"] and r["slices_per_volume"] == 1 for r in rows)
  by_name = {r["name"]: r for r in rows}
  for row in rows:
    assert ("encoder_seconds" in row) == (row["selection"] == "ual")
    assert ("interp_dice" in row) == row["interpolation"]
  # Interpolation changes the training labels, never the plan.
  for name in ("2d_b8_s4_rho2_fixed", "2d_b8_s4_rho2_ual"):
    plain = json.loads((tmp_path / "plans" / f"{name}_seed0.json").read_text())
    assert plain == json.loads((tmp_path / "plans" / f"{name}_interp_seed0.json").read_text())
  # rho = 2 on volumes of 4-8 slices fills some.
  assert by_name["2d_b8_s4_rho2_fixed_interp_seed0"]["interp_slices"] > 0
  assert 0.0 <= by_name["2d_b8_s4_rho2_fixed_interp_seed0"]["interp_dice"] <= 1.0


def test_a_rerun_keeps_the_recorded_ual_plans_and_rows_carry_their_plan(tmp_path):
  import shutil
  from slicejax.errors import InputError
  config = load_config("configs/demo.py:tiny")
  with config.unlocked():
    config.study.update(selections=("fixed", "ual"), reference=False)
    config.ual.encoder.update(steps=3, batch_size=8, features=(4, 8), embedding_dim=8, projection_dim=8)
  first = train.train_and_evaluate(config, tmp_path / "first")
  read = lambda folder, name: json.loads((tmp_path / folder / "plans" / f"{name}.json").read_text())
  for row in first:  # each row names the slices it trained on, as plans/ records them
    assert row["plan"] == read("first", row["name"])
  ual, fixed = "2d_b8_s4_rho2_ual_seed0", "2d_b8_s4_rho2_fixed_seed0"
  assert read("first", ual) != read("first", fixed)
  # A run seeded on another machine with the committed config and plans, whose encoder chose other slices: here the
  # recorded ual plan is the fixed one.
  second = tmp_path / "second"
  shutil.copytree(tmp_path / "first" / "plans", second / "plans")
  shutil.copy(tmp_path / "first" / "config.json", second)
  (second / "plans" / f"{ual}.json").write_text(json.dumps(read("first", fixed)))
  rows = {row["name"]: row for row in train.train_and_evaluate(config, second)}
  assert rows[ual]["plan"] == read("second", ual) == read("first", fixed)
  # Same seed, same slices: the ual point trains exactly as the fixed one; every other point as in the first run.
  assert rows[ual]["dice_mean"] == rows[fixed]["dice_mean"]
  assert rows[ual]["annotated_foreground"] == rows[fixed]["annotated_foreground"]
  timeless = lambda row: {k: v for k, v in results.comparable(row).items() if "seconds" not in k}
  assert [timeless(rows[r["name"]]) for r in first if r["name"] != ual] == [timeless(r) for r in first
                                                                          if r["name"] != ual]
  # A recorded plan that does not fit its point stops the run with one line naming the file.
  third = tmp_path / "third"
  shutil.copytree(second, third, ignore=shutil.ignore_patterns("results.jsonl", "checkpoints"))
  three_volumes = dict(list(read("first", fixed).items())[:3])
  (third / "plans" / f"{ual}.json").write_text(json.dumps(three_volumes))
  with pytest.raises(InputError, match=rf"{ual}\.json: plans 3 volumes where {ual} has 4"):
    train.train_and_evaluate(config, third)


def test_3d_points_train_and_evaluate(tmp_path):
  config = load_config("configs/demo.py:tiny")
  with config.unlocked():
    config.study.update(dims=(2, 3), reference=False, selections=("fixed",))
    config.study.three_d.update(slices_per_volume=(2,), interpolation=(False, True))
  rows = train.train_and_evaluate(config, tmp_path)
  assert [(r["dims"], r["name"]) for r in rows] == [
      (2, "2d_b8_s8_rho1_fixed_seed0"), (2, "2d_b8_s4_rho2_fixed_seed0"),
      (3, "3d_b8_s4_rho2_fixed_seed0"), (3, "3d_b8_s4_rho2_fixed_interp_seed0")]
  assert [r["group"] for r in rows] == [0, 0, 1, 1]
  assert all(row["steps"] == 6 for row in rows)
  # Pinned on this CPU (jax 0.10.2); the 2D rows equal those of the 2D-only grid (keys owned by points).
  np.testing.assert_allclose([r["dice_mean"] for r in rows], [0.018202802, 0.019116077, 0.024938247, 0.020134307],
                             atol=1e-6)
  assert rows[3]["interp_slices"] == 7 and rows[3]["interp_dice"] == 0.25
  # 3D and 2D points of one seed and allocation share the plan.
  plans = tmp_path / "plans"
  assert (json.loads((plans / "2d_b8_s4_rho2_fixed_seed0.json").read_text()) ==
          json.loads((plans / "3d_b8_s4_rho2_fixed_seed0.json").read_text()))


def test_check_describes_the_run_and_writes_nothing(tmp_path):
  cache = tmp_path / "cache"
  result = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/demo.py:tiny", "--check", f"--workdir={tmp_path / 'run'}"],
      cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "SLICEJAX_CACHE": str(cache)})
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[1] == "classes (test volumes containing each): 1 core (3/3), 2 rim (1/3)"
  assert lines[4] == "split (seed 0): 8 train / 1 val / 3 test"
  assert lines[5].startswith("2D in-plane shape 16 x 16 (derived): 0 volumes padded, 0 centre-cropped")
  assert lines[6] == "grid: 5 points in 1 groups of at most 24 models; 2D 5 (1 reference)"
  assert lines[7].startswith("2D: ") and "5 models x 6 steps in 1 groups" in lines[7]
  assert lines[-1].endswith("nothing was trained or written")
  assert not (tmp_path / "run").exists()
  # Only the generated phantom: no preprocessed volumes.
  assert [p.name for p in cache.iterdir()] == ["phantoms"]


@pytest.mark.slow
def test_check_counts_the_reference_steps_of_its_own(tmp_path, monkeypatch):
  monkeypatch.setenv("SLICEJAX_CACHE", str(tmp_path / "cache"))
  config = load("configs/demo.py:tiny")
  with config.unlocked():
    config.study.reference_steps = 20
  lines = check.dry_run(config)
  assert lines[6] == "grid: 5 points in 2 groups of at most 24 models; 2D 5 (1 reference)"
  assert "5 models x 6 steps (the reference 20) in 2 groups" in lines[7]


@pytest.mark.slow
def test_check_counts_the_trainings_of_rounds_and_members(tmp_path, monkeypatch):
  monkeypatch.setenv("SLICEJAX_CACHE", str(tmp_path / "cache"))
  config = load("configs/demo.py:tiny")
  with config.unlocked():
    config.study.update(slices_per_volume=(2,), selections=("ensemble",), rounds=(2,), round_allocation=("fixed",),
                        round_budgets=(), round_slices_per_volume=(), reference=False)
    config.rounds.update(members=2, final_members=False)
  # Round 0 trains the point and its member, the last round the point alone: 3 trainings.
  assert "1 models (3 trainings: ensemble members, rounds) x 6 steps in 1 groups" in check.dry_run(config)[7]


def test_the_estimate_counts_each_distinct_program_once():
  """One initialisation per grid, then per distinct number of models in a program: "loop" unrolls (chunks of 4 and
  the groups' remainders; evaluation always a full chunk), "vmap" maps (one model's cost per distinct group size)."""
  config = ml_collections.ConfigDict({"model_axis": {"strategy": "loop", "chunk": 4}})
  # Groups of 37 and 5: programs of 4 and 1 models (37 = 9 x 4 + 1, 5 = 4 + 1).
  assert check.compile_seconds(config, [37, 5], 10.0, 1.0, 0.5) == 10.0 + 1.0 * (4 + 1) + 0.5 * 4
  assert check.compile_seconds(config, [3, 3], 10.0, 1.0, 0.5) == 10.0 + 1.0 * 3 + 0.5 * 4
  config.model_axis.strategy = "vmap"
  assert check.compile_seconds(config, [37, 5, 37], 10.0, 1.0, 0.5) == 10.0 + 2 * (1.0 + 0.5)
  config.model_axis.strategy = "sequential"
  assert check.compile_seconds(config, [37, 5], 10.0, 1.0, 0.5) == 10.0 + 1.0 + 0.5
