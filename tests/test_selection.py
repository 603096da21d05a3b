"""Selection strategies, allocations, nesting and plans."""

import pkgutil

import numpy as np
import pytest

from slicejax.config import base
from slicejax.config import defaults
from slicejax.errors import InputError
from slicejax.study import grid as study
from slicejax.study import selection


def test_the_configs_names_are_the_strategy_modules():
  # The config's checks read the names without importing the strategies (`slicejax.config.defaults`).
  modules = sorted(m.name for m in pkgutil.iter_modules(selection.__path__))
  assert defaults.SELECTIONS == tuple(modules)
  assert defaults.MODEL_BASED_SELECTIONS == tuple(m for m in modules if getattr(selection.get(m), "MODEL_BASED", False))
  # The one that chooses without a model, which the config's check of a worklist names.
  assert [m for m in defaults.MODEL_BASED_SELECTIONS if not selection.get(m).NEEDS_MODEL] == ["passive"]


@pytest.mark.parametrize("name", ["random", "fixed"])
@pytest.mark.parametrize("depth,rho", [(10, 1), (10, 3), (36, 8), (7, 7)])
def test_exact_count_sorted_distinct_and_seeded(name, depth, rho):
  strategy = selection.get(name)
  picked = strategy.select(depth, rho, np.random.default_rng(4))
  assert picked.dtype == np.int64 and len(picked) == rho
  assert np.all(np.diff(picked) > 0) and picked[0] >= 0 and picked[-1] < depth
  np.testing.assert_array_equal(picked, strategy.select(depth, rho, np.random.default_rng(4)))


def test_fixed_is_equally_spaced():
  picked = selection.get("fixed").select(36, 4, np.random.default_rng(0))
  np.testing.assert_array_equal(np.diff(picked), [9, 9, 9])
  # Offsets cover the first interval over seeds.
  starts = {int(selection.get("fixed").select(36, 4, np.random.default_rng(s))[0]) for s in range(100)}
  assert starts == set(range(9))
  # Non-integer interval: spacing differs by at most one.
  picked = selection.get("fixed").select(10, 3, np.random.default_rng(1))
  assert set(np.diff(picked)) <= {3, 4}


def test_rho_too_large_and_unknown_strategy():
  with pytest.raises(InputError, match="rho"):
    selection.get("random").select(5, 6, np.random.default_rng(0))
  with pytest.raises(InputError, match="unknown selection strategy 'nope'"):
    selection.get("nope")


def _study(**kw):
  cfg = base().study
  cfg.update(**kw)
  return cfg


def test_expand_allocations_and_exact_budget():
  depths = {f"c{i:02d}": 10 for i in range(20)}
  points = study.expand(_study(budgets=(8, 40), slices_per_volume=(1, 2, 4, 8), selections=("random",), seeds=(0,),
                               reference=True, reference_seeds=(0, 1)), depths)
  allocations = [(p.budget, p.volumes, p.slices_per_volume) for p in points if not p.reference]
  # 40 / 1 = 40 volumes exceed the pool of 20 and is left out.
  assert allocations == [(8, 8, 1), (8, 4, 2), (8, 2, 4), (8, 1, 8), (40, 20, 2), (40, 10, 4), (40, 5, 8)]
  assert [p.name for p in points if p.reference] == ["2d_reference_seed0", "2d_reference_seed1"]
  for p in points:
    if not p.reference:
      plan = study.make_plan(p, depths)
      assert sum(len(v) for v in plan.values()) == p.budget and len(plan) == p.volumes
  assert sum(len(v) for v in study.make_plan(points[-1], depths).values()) == 200


def test_interpolation_at_one_slice_per_volume_is_left_out():
  depths = {f"c{i:02d}": 10 for i in range(20)}
  left_out = []
  points = study.expand(_study(budgets=(8,), slices_per_volume=(1, 2), selections=("random", "fixed"), seeds=(0, 1),
                               interpolation=(False, True), reference=False), depths, left_out)
  assert sorted({(p.slices_per_volume, p.interpolation) for p in points}) == [(1, False), (2, False), (2, True)]
  assert len(points) == 12
  assert left_out == ["2D budget 8 at 1 slice per volume with interpolation: no slice lies between two annotated ones"]


def test_budget_errors():
  depths = {f"c{i}": 4 for i in range(3)}
  with pytest.raises(InputError, match="exceeds the 12 slices"):
    study.expand(_study(budgets=(13,), slices_per_volume=(1,)), depths)
  with pytest.raises(InputError, match="no allocation"):
    study.expand(_study(budgets=(6,), slices_per_volume=(1,)), depths)
  point = study.Point(2, 10, 2, 5, "random", False, 0)
  with pytest.raises(InputError, match="rho = 5 exceeds the 4 candidate slices"):
    study.make_plan(point, depths)


def test_volumes_nested_across_s_and_seeded():
  pool = [f"case_{i:03d}" for i in range(50)]
  for seed in range(3):
    previous = []
    for s in (1, 3, 9, 27, 50):
      chosen = study.choose_volumes(pool, s, seed)
      assert len(chosen) == s and set(previous) <= set(chosen)
      previous = chosen
  assert study.choose_volumes(pool, 9, 0) != study.choose_volumes(pool, 9, 1)
  assert study.choose_volumes(pool, 9, 0) == study.choose_volumes(list(reversed(pool)), 9, 0)


def test_plan_reproducible_and_roi():
  depths = {f"c{i}": 20 for i in range(6)}
  point = study.Point(2, 12, 6, 2, "random", False, 3)
  assert study.make_plan(point, depths) == study.make_plan(point, depths)
  plan = study.make_plan(point, depths, roi=(0.25, 0.5))
  assert all(5 <= i < 10 for v in plan.values() for i in v)


def test_a_recorded_plan_is_read_back_and_one_that_does_not_fit_its_point_is_refused(tmp_path):
  depths = {"c0": 20, "c1": 20, "c2": 5}
  point = study.Point(2, 4, 2, 2, "ual", False, 0)
  path = tmp_path / "p.json"
  path.write_text('{"c1": [7, 3], "c0": [0, 19]}')
  assert study.read_plan(path, point, depths) == {"c0": [0, 19], "c1": [3, 7]}
  for text, problem in [("{", "unreadable plan"), ('{"c0": [1.0, 2]}', "not a plan"),
                        ('{"c0": [1, 2], "c9": [1, 2]}', r"plans case\(s\) \['c9'\] that the training pool"),
                        ('{"c0": [1, 2]}', "plans 1 volumes where 2d_b4_s2_rho2_ual_seed0 has 2"),
                        ('{"c0": [1, 2], "c1": [3, 3]}', r"c1: slices \[3, 3\] are not 2 distinct slices of its 20"),
                        ('{"c0": [1, 2], "c1": [3, 4, 5]}', "c1: slices"),
                        ('{"c0": [1, 2], "c2": [4, 5]}', r"c2: slices \[4, 5\] are not 2 distinct slices of its 5")]:
    path.write_text(text)
    with pytest.raises(InputError, match=rf"^{path}: {problem}"):
      study.read_plan(path, point, depths)


def test_groups_split_by_dims_and_size():
  points = [study.Point(d, 4, 4, 1, "random", False, s) for d in (3, 2) for s in range(5)]
  groups = study.group(points, 2)
  assert [[(p.dims, p.seed) for p in g] for g in groups] == [
      [(2, 0), (2, 1)], [(2, 2), (2, 3)], [(2, 4)], [(3, 0), (3, 1)], [(3, 2), (3, 3)], [(3, 4)]]


def test_groups_split_by_training_steps():
  # Points that train different numbers of steps (a reference with steps of its own) never share a group.
  points = [study.Point(2, 4, 4, 1, "random", False, s) for s in range(3)]
  points.insert(1, study.Point(2, 80, 4, None, "all", False, 0, reference=True))
  groups = study.group(points, 8, steps_of=lambda p: 900 if p.reference else 300)
  assert [[p.name for p in g] for g in groups] == [
      ["2d_b4_s4_rho1_random_seed0", "2d_b4_s4_rho1_random_seed1", "2d_b4_s4_rho1_random_seed2"],
      ["2d_reference_seed0"]]
  assert len(study.group(points, 8)) == 1
