"""Selection in rounds (`slicejax.rounds`) and the model-based selections: the schedule, hand-computed scores and
picks, and tiny round studies on the phantom: exact budgets, no slice chosen twice, labels of unchosen slices never
read, a resume at a round boundary, and ensemble members trained together equal to members trained alone."""

import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest

from slicejax import config_lib
from slicejax import results
from slicejax import rounds
from slicejax import study
from slicejax import train
from slicejax import two_d
from slicejax import uncertainty
from slicejax.errors import InputError
from slicejax.selection import entropy, hybrid

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _point(rho=4, r=3, selection="entropy", free=False, volumes=2, seed=0):
  return study.Point(2, volumes * rho, volumes, rho, selection, False, seed, rounds=r, free=free)


def test_quotas_split_rho_over_the_rounds():
  assert rounds.quotas(_point(rho=5, r=3), 0.5) == [2, 2, 1]
  assert rounds.quotas(_point(rho=4, r=3), 0.5) == [2, 1, 1]
  assert rounds.quotas(_point(rho=2, r=2), 0.5) == [1, 1]
  assert rounds.quotas(_point(rho=4, r=4), 0.9) == [1, 1, 1, 1]  # every round adds at least one slice
  assert rounds.quotas(_point(rho=8, r=3), 0.25) == [2, 3, 3]


def test_names_and_rows_of_round_points():
  assert _point().name == "2d_b8_s2_rho4_entropy_r3_seed0"
  assert _point(free=True).name == "2d_b8_s2_rho4_entropy_r3_free_seed0"
  assert "rounds" in _point().fields() and "rounds" not in dataclasses.replace(_point(), rounds=1).fields()


def test_scores_by_hand():
  valid = np.ones((2, 1, 2), bool)
  sure = np.array([[[1.0, 0.0], [1.0, 0.0]], [[0.5, 0.5], [1.0, 0.0]]])[:, None]  # [D=2, H=1, W=2, K=2]
  np.testing.assert_allclose(uncertainty.entropy(sure[None], valid), [0.0, np.log(2) / 2])
  # Foreground weighting: the uncertain pixel has p(foreground) 0.5.
  np.testing.assert_allclose(uncertainty.entropy(sure[None], valid, foreground=True), [0.0, np.log(2) / 4])
  # Padding never scores: the second pixel is padding, the mean is over the one valid pixel.
  np.testing.assert_allclose(uncertainty.entropy(sure[None], valid & [[[True, False]]]), [0.0, np.log(2)])
  opposite = np.stack([np.array([[[[1.0, 0.0]]]]), np.array([[[[0.0, 1.0]]]])])  # two members, one pixel
  np.testing.assert_allclose(uncertainty.disagreement(opposite, np.ones((1, 1, 1), bool)), [np.log(2)])
  agree = np.stack([np.array([[[[0.5, 0.5]]]])] * 2)  # uncertain but agreeing members: no disagreement
  np.testing.assert_allclose(uncertainty.disagreement(agree, np.ones((1, 1, 1), bool)), [0.0], atol=1e-12)
  assert uncertainty.foreground_pixels(sure[None], valid).tolist() == [0, 0]


def test_picks_by_hand():
  scores = np.array([0.1, 0.9, 0.5, 0.9, 0.7])
  assert uncertainty.top(scores, [0, 2, 3, 4], 2).tolist() == [3, 4]  # 1 is not a candidate
  assert uncertainty.top(scores, [0, 1, 2, 3, 4], 1).tolist() == [1]  # tie 1 = 3: the lower index
  features = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
  # Farthest from annotated slice 0 first (4), then from {0, 4}: 2 (distance 2 from 0, 9 from 4).
  assert uncertainty.farthest_first(features, [1, 2, 3, 4], [0], 2).tolist() == [2, 4]
  options = config_lib.base().rounds
  # hybrid: k-center among the hybrid_candidates x n most uncertain; with 4 x 1 it is plain k-center.
  assert hybrid.choose(scores, np.arange(1, 5), 1, embeddings=features, annotated=np.array([0]),
                       options=options).tolist() == [4]
  with options.unlocked():
    options.hybrid_candidates = 1
  assert hybrid.choose(scores, np.arange(1, 5), 1, embeddings=features, annotated=np.array([0]),
                       options=options).tolist() == [1]
  with pytest.raises(InputError, match="rounds"):
    entropy.select(5, 2, None)


def test_choose_next_keeps_the_allocation_or_frees_it():
  config = config_lib.base()
  plan = {"a": [0, 1], "b": [2]}
  scores = {"a": np.array([9.0, 9.0, 1.0, 3.0, 2.0]), "b": np.array([0.0, 5.0, 9.0, 4.0]),
            "c": np.array([8.0, 7.0, 0.0])}
  # Fixed: one more slice in each annotated volume, never an annotated one.
  assert rounds.choose_next(config, _point(volumes=2), plan, scores, 1) == {"a": [3], "b": [1]}
  # Free: s x 1 = 2 slices anywhere; "c" opens.
  assert rounds.choose_next(config, _point(volumes=2, free=True), plan, scores, 1) == {"c": [0, 1]}
  assert rounds.merge(plan, {"c": [0], "a": [3]}) == {"a": [0, 1, 3], "b": [2], "c": [0]}


# ---------------------------------------------------------------------------------------------------------------------
# Tiny round studies on the phantom, sharing compiled programs.
# ---------------------------------------------------------------------------------------------------------------------

def _config():
  config = config_lib.load(str(ROOT / "configs/demo.py") + ":tiny")
  config.study.update(slices_per_volume=(4,), selections=("entropy", "ensemble"), rounds=(3,),
                      round_allocation=("fixed", "free"), reference=False)
  config.rounds.members = 2
  config.eval.update(surface_metrics=False, curve_points=0)
  return config


@pytest.fixture(scope="module")
def setup():
  config = _config()
  dataset, splits, depths, points, plans = train.read_inputs(config, use_cache=False)
  sizes = two_d.data_sizes(config, points, [plans[p.name] for p in points])
  return {"config": config, "dataset": dataset, "splits": splits, "points": points, "plans": plans,
          "sizes": sizes, "programs": {}}


def _run(setup, rundir, splits=None, calls=None):
  def train_group(*args, **kwargs):
    if calls is not None:
      calls.append(args[6].name)
    return train.train_group(*args, **kwargs)
  (pathlib.Path(rundir) / "plans").mkdir(parents=True, exist_ok=True)
  return rounds.train_rounds(setup["config"], setup["points"], setup["plans"], splits or setup["splits"],
                             setup["dataset"], 0, rundir, train_group=train_group, sizes=setup["sizes"],
                             programs=setup["programs"])


@pytest.fixture(scope="module")
def clean(setup, tmp_path_factory):
  rundir = tmp_path_factory.mktemp("clean")
  calls = []
  rows = _run(setup, rundir, calls=calls)
  return {"rows": rows, "rundir": rundir, "calls": calls}


def test_rounds_reach_exactly_the_budget_and_never_repeat_a_slice(setup, clean):
  assert [p.name for p in setup["points"]] == [
      "2d_b8_s2_rho4_entropy_r3_seed0", "2d_b8_s2_rho4_entropy_r3_free_seed0",
      "2d_b8_s2_rho4_ensemble_r3_seed0", "2d_b8_s2_rho4_ensemble_r3_free_seed0"]
  assert clean["calls"] == ["group_0_round_0", "group_0_round_1", "group_0"]
  for point, row in zip(setup["points"], clean["rows"]):
    history = row["round_history"]
    assert [h["round"] for h in history] == [0, 1, 2] and [h["slices"] for h in history] == [4, 6, 8]
    assert all(isinstance(h["val_dice"], float) for h in history)
    seen = set()
    for h in history:
      added = {(case, s) for case, slices in h["added"].items() for s in slices}
      assert not added & seen
      seen |= added
    plan = json.loads((clean["rundir"] / "plans" / f"{point.name}.json").read_text())
    assert {(c, s) for c, slices in plan.items() for s in slices} == seen and len(seen) == point.budget == 8
    assert history[0]["added"] == setup["plans"][point.name]  # round 0: fixed interval, 2 of the 4 per volume
    if not point.free:
      assert sorted(plan) == sorted(history[0]["added"]) and all(len(s) == 4 for s in plan.values())
      assert (row["annotated_volumes"], row["annotated_slices_per_volume"]) == (2, 4.0)
    assert row["name"] == point.name and row["rounds"] == 3 and row["free"] == point.free
  # Both rules start alike; the entropy and ensemble points pick differently from the same round 0.
  assert clean["rows"][0]["round_history"][1]["added"] != clean["rows"][2]["round_history"][1]["added"]


def test_labels_of_unchosen_slices_are_never_read(setup, clean, tmp_path):
  chosen = {}
  for row in clean["rows"]:
    for h in row["round_history"]:
      for case, slices in h["added"].items():
        chosen.setdefault(case, set()).update(slices)
  rng = np.random.default_rng(0)
  garbled = []
  for volume in setup["splits"]["train"]:
    label = rng.integers(0, setup["dataset"].num_classes, volume.label.shape).astype(volume.label.dtype)
    keep = sorted(chosen.get(volume.case_id, ()))
    label[keep] = volume.label[keep]
    garbled.append(dataclasses.replace(volume, label=label))
  rows = _run(setup, tmp_path, splits={**setup["splits"], "train": garbled})
  assert [r["round_history"] for r in rows] == [r["round_history"] for r in clean["rows"]]
  assert [results.comparable(r) for r in rows] == [results.comparable(r) for r in clean["rows"]]


class Killed(Exception):
  pass


def test_a_kill_at_a_round_boundary_resumes_with_identical_rows(setup, clean, tmp_path, monkeypatch):
  write = rounds._write_record

  def write_then_kill(rundir, group_index, names, entries):
    write(rundir, group_index, names, entries)
    if len(entries) == 2 and "val_dice" not in entries[1]:  # round 1's slices chosen, its training not started
      raise Killed()

  monkeypatch.setattr(rounds, "_write_record", write_then_kill)
  with pytest.raises(Killed):
    _run(setup, tmp_path)
  monkeypatch.undo()
  calls = []
  rows = _run(setup, tmp_path, calls=calls)
  assert calls == ["group_0_round_1", "group_0"]  # round 0 is not trained again
  assert [results.comparable(r) for r in rows] == [results.comparable(r) for r in clean["rows"]]


def test_ensemble_members_together_equal_members_alone(setup, tmp_path):
  config = setup["config"]
  point = setup["points"][2]
  members = rounds.models(config, [point])
  assert [m.seed for m in members] == [0, rounds.MEMBER_SEED_STRIDE]
  plan = setup["plans"][point.name]

  def params(models, folder):
    keep = {}
    train.train_group(config, models, [plan] * len(models), setup["splits"], setup["dataset"], 0, tmp_path / folder,
                      sizes=setup["sizes"], programs=setup["programs"], keep=keep)
    return jax.tree.map(np.asarray, keep["stacked"]["params"])

  together = params(members, "together")
  for m, member in enumerate(members):
    alone = params([member], f"alone_{m}")
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[m], b[0]), together, alone)
  first = jax.tree.leaves(together)[0]
  assert not np.array_equal(first[0], first[1])  # different seeds, different models
