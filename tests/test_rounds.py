"""Selection in rounds (`slicejax.training.rounds`) and the model-based selections: the schedule, hand-computed scores
and picks, and tiny round studies on the phantom: exact budgets, no slice chosen twice, labels of unchosen slices never
read, a resume at a round boundary, and ensemble members trained together equal to members trained alone."""

import collections
import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest

from slicejax import config as config_lib
from slicejax.errors import InputError
from slicejax.report import cells as cells_lib
from slicejax.report import results
from slicejax.report import runs
from slicejax.study import grid as study
from slicejax.study.selection import entropy, hybrid
from slicejax.study import uncertainty
from slicejax.training.inputs import two_d
from slicejax.training import rounds
from slicejax.training import train

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _point(rho=4, r=3, selection="entropy", free=False, volumes=2, seed=0):
  return study.Point(2, volumes * rho, volumes, rho, selection, False, seed, rounds=r, free=free)


def test_quotas_split_rho_over_the_rounds():
  assert rounds.quotas(_point(rho=5, r=3), 0.5) == [3, 1, 1]  # 2.5 rounds half up
  assert rounds.quotas(_point(rho=3, r=2), 0.5) == [2, 1]  # 1.5 too
  assert rounds.quotas(_point(rho=5, r=3), 0.4) == [2, 2, 1]
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
  choose = lambda point, **kw: rounds.choose_next(point, plan, scores, 1, options=config.rounds, **kw)
  assert choose(_point(volumes=2)) == {"a": [3], "b": [1]}
  # Free: s x 1 = 2 slices anywhere; "c" opens.
  assert choose(_point(volumes=2, free=True)) == {"c": [0, 1]}
  # Only the slices a volume offers, narrowed by the region of interest: "a" offers 2-4, its second half 3-4.
  offered = {"a": (2, 5), "b": (0, 4), "c": (0, 3)}
  assert choose(_point(volumes=2), offered=offered, roi=(0.5, 1.0)) == {"a": [3], "b": [3]}
  assert rounds.merge(plan, {"c": [0], "a": [3]}) == {"a": [0, 1, 3], "b": [2], "c": [0]}


@pytest.mark.parametrize("selection", ["fixed", "random"])
def test_round_0_keeps_part_of_the_one_shot_plan_it_is_compared_with(selection):
  config = config_lib.base()
  config.rounds.first_selection = selection
  depths = {f"case{i:02d}": 20 + i for i in range(12)}
  phases = set()
  for seed in range(8):
    point = _point(rho=4, r=2, volumes=6, seed=seed)  # q_0 = 2 of 4
    one_shot = dataclasses.replace(point, selection=selection, rounds=1)
    full = study.make_plan(one_shot, depths)
    first = rounds.first_plan(config, point, depths)
    assert sorted(first) == sorted(full)  # the same volumes
    for case, slices in first.items():
      assert len(slices) == 2 and set(slices) <= set(full[case])
      if selection == "fixed":  # every other slice of the equally spaced plan: a spacing of about depth / 2
        ranks = [full[case].index(i) for i in slices]
        assert ranks in ([0, 2], [1, 3])
        phases.add(ranks[0])
  assert selection == "random" or phases == {0, 1}  # both phases occur
  # With free allocation round 0 is its own one-shot plan at q_0.
  free = dataclasses.replace(_point(rho=4, r=2, volumes=6), free=True)
  assert rounds.first_plan(config, free, depths) == study.make_plan(
      dataclasses.replace(free, budget=12, slices_per_volume=2, selection=selection, rounds=1, free=False), depths)


# ---------------------------------------------------------------------------------------------------------------------
# Tiny round studies on the phantom, sharing compiled programs.
# ---------------------------------------------------------------------------------------------------------------------

def _config():
  config = config_lib.load(str(ROOT / "configs/demo.py") + ":tiny")
  config.study.update(slices_per_volume=(4,), selections=("entropy", "ensemble"), rounds=(3,),
                      round_allocation=("fixed", "free"), round_budgets=(), round_slices_per_volume=(),
                      reference=False)
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
  # Every model trained counts once, a shared one split between its points (the report's "Compute"): by hand,
  # entropy 1/2 + 1 + 1 (round 0's model shared with the ensemble), the ensemble of 2 members 1/2 + 1, 2, 2.
  assert [r["rounds_trained_models"] for r in clean["rows"]] == [2.5, 2.5, 5.5, 5.5]
  assert [[h["trained_models"] for h in r["round_history"]] for r in clean["rows"][2:]] == [[1.5, 2.0, 2.0]] * 2
  assert runs.compute_used(clean["rows"])["models"] == rounds.trainings(setup["config"], setup["points"]) == 16
  # A cell's training seconds count every round's models too, not only its last round's (one seed per cell here).
  assert sorted(c["train_seconds"] for c in cells_lib.summarise(clean["rows"])) == sorted(
      r["rounds_train_seconds"] for r in clean["rows"])
  assert all(r["rounds_train_seconds"] > r["train_seconds"] for r in clean["rows"])


def _every_method(setup):
  """The four methods, fixed and free, uncertainty weighted by predicted foreground, with slice embeddings (image
  pixels) for hybrid: (setup, embeddings)."""
  config = setup["config"].copy_and_resolve_references()
  config.study.selections = ("entropy", "ensemble", "hybrid", "passive")
  config.rounds.foreground = True
  dataset, splits, depths, points, plans = train.read_inputs(config, use_cache=False)
  pixels = {v.case_id: np.asarray(v.image[..., 0], np.float32).reshape(len(v.label), -1)[:, ::3]
            for v in splits["train"]}
  plans.update({p.name: train.plan_of(config, p, depths, pixels) for p in points if p.name not in plans})
  sizes = two_d.data_sizes(config, points, [plans[p.name] for p in points])
  return {**setup, "config": config, "dataset": dataset, "splits": splits, "points": points, "plans": plans,
          "sizes": sizes}, (lambda: pixels)


def _rounds(setup, rundir, embeddings, splits=None, train_group=train.train_group):
  (pathlib.Path(rundir) / "plans").mkdir(parents=True, exist_ok=True)
  return rounds.train_rounds(setup["config"], setup["points"], setup["plans"], splits or setup["splits"],
                             setup["dataset"], 0, rundir, train_group=train_group, sizes=setup["sizes"],
                             programs=setup["programs"], embeddings=embeddings)


def test_a_label_is_read_only_once_its_slice_is_annotated(setup, tmp_path):
  every, embeddings = _every_method(setup)
  clean = _rounds(every, tmp_path / "clean", embeddings)
  assert [r["selection"] for r in clean] == ["entropy", "entropy", "ensemble", "ensemble", "hybrid", "hybrid",
                                             "passive", "passive"]
  for point, row in zip(every["points"], clean):
    added = [(c, s) for h in row["round_history"] for c, slices in h["added"].items() for s in slices]
    assert len(added) == len(set(added)) == point.budget == 8
  # The pool's labels are noise; each round's training gets the true labels of the slices its models' plans hold by
  # then, and nothing else. Any label read before its slice is annotated (a later round's, or one never chosen)
  # would change a selection or a row.
  rng = np.random.default_rng(0)
  truth = {v.case_id: v.label for v in every["splits"]["train"]}
  noise = [dataclasses.replace(v, label=rng.integers(0, every["dataset"].num_classes, v.label.shape).astype(
      v.label.dtype)) for v in every["splits"]["train"]]

  def train_group(config, points, plans, splits, *args, **kwargs):
    annotated = collections.defaultdict(set)
    for plan in plans:
      for case, slices in plan.items():
        annotated[case].update(slices)
    pool = []
    for volume in splits["train"]:
      label, keep = volume.label.copy(), sorted(annotated[volume.case_id])
      label[keep] = truth[volume.case_id][keep]
      pool.append(dataclasses.replace(volume, label=label))
    return train.train_group(config, points, plans, {**splits, "train": pool}, *args, **kwargs)

  rows = _rounds(every, tmp_path / "noise", embeddings, splits={**every["splits"], "train": noise},
                 train_group=train_group)
  assert [results.comparable(r) for r in rows] == [results.comparable(r) for r in clean]


class Killed(Exception):
  pass


@pytest.mark.parametrize("kill", ["once round 1's slices are recorded", "once round 1 trained, before round 2's slices"])
def test_a_kill_at_a_round_boundary_resumes_with_identical_rows(setup, clean, tmp_path, monkeypatch, kill):
  if kill.startswith("once round 1's"):
    write = rounds._write_record

    def write_then_kill(rundir, group_index, names, entries):
      write(rundir, group_index, names, entries)
      if len(entries) == 2 and "val_dice" not in entries[1]:  # round 1's slices chosen, its training not started
        raise Killed()

    monkeypatch.setattr(rounds, "_write_record", write_then_kill)
  else:
    choose = rounds.next_round

    def kill_in_round_2(*args, **kwargs):
      if args[5] == 2:  # round 1 trained and recorded, round 2's slices not yet chosen
        raise Killed()
      return choose(*args, **kwargs)

    monkeypatch.setattr(rounds, "next_round", kill_in_round_2)
  with pytest.raises(Killed):
    _run(setup, tmp_path)
  monkeypatch.undo()
  calls = []
  rows = _run(setup, tmp_path, calls=calls)
  # Round 0 is not trained again; a round 1 that had trained restores its finished checkpoint and chooses the same
  # slices.
  assert calls == ["group_0_round_1", "group_0"]
  assert [results.comparable(r) for r in rows] == [results.comparable(r) for r in clean["rows"]]


def test_a_last_round_short_of_the_budget_is_refused(setup, tmp_path, monkeypatch):
  choose = rounds.next_round

  def one_slice_short(*args, **kwargs):
    added = choose(*args, **kwargs)
    name = next(iter(added))
    case = next(iter(added[name]))
    return {**added, name: {**added[name], case: added[name][case][1:]}}

  monkeypatch.setattr(rounds, "next_round", one_slice_short)
  with pytest.raises(InputError, match=r"^study.round_budgets: the last round would train "
                                       r"2d_b8_s2_rho4_entropy_r3_seed0 \(6\) on fewer slices than the budget"):
    _run(setup, tmp_path)


def _with(setup, **rounds_options):
  config = setup["config"].copy_and_resolve_references()
  config.rounds.update(rounds_options)
  return {**setup, "config": config}


@pytest.fixture(scope="module")
def warm_rows(setup, tmp_path_factory):
  return _run(_with(setup, warm_start=True), tmp_path_factory.mktemp("warm"))


def test_warm_start_resumes_from_the_last_round_s_parameters(setup, clean, warm_rows, tmp_path, monkeypatch):
  warm = _with(setup, warm_start=True)
  uninterrupted = warm_rows
  # Round 1 is chosen by round 0's model, the same cold or warm; later rounds start from the previous parameters.
  assert [r["round_history"][1]["added"] for r in uninterrupted] == [
      r["round_history"][1]["added"] for r in clean["rows"]]
  assert [r["round_history"][2]["val_dice"] for r in uninterrupted] != [
      r["round_history"][2]["val_dice"] for r in clean["rows"]]
  write = rounds._write_record

  def write_then_kill(rundir, group_index, names, entries):
    write(rundir, group_index, names, entries)
    if len(entries) == 2 and "val_dice" not in entries[1]:
      raise Killed()

  monkeypatch.setattr(rounds, "_write_record", write_then_kill)
  with pytest.raises(Killed):
    _run(warm, tmp_path / "killed")
  monkeypatch.undo()
  calls = []
  rows = _run(warm, tmp_path / "killed", calls=calls)
  # Round 1 has no checkpoint yet: round 0's parameters are restored (its training is complete) to start it.
  assert calls == ["group_0_round_0", "group_0_round_1", "group_0"]
  assert [results.comparable(r) for r in rows] == [results.comparable(r) for r in uninterrupted]


@pytest.mark.parametrize("warm_start", [False, True])
def test_a_last_round_without_members_gives_the_same_rows(setup, clean, warm_rows, tmp_path, warm_start):
  models = []

  def train_group(config, points, *args, **kwargs):
    models.append([p.seed for p in points])
    return train.train_group(config, points, *args, **kwargs)

  lean = _with(setup, final_members=False, warm_start=warm_start)
  (tmp_path / "plans").mkdir()
  rows = rounds.train_rounds(lean["config"], lean["points"], lean["plans"], lean["splits"], lean["dataset"], 0,
                             tmp_path, train_group=train_group, sizes=lean["sizes"], programs=lean["programs"])
  member = rounds.MEMBER_SEED_STRIDE
  # Round 0: entropy and ensemble share their round-0 plan and seed (a family), so one model serves both, beside the
  # ensemble's member; the same for the free pair. Round 1: entropy, entropy free, ensemble and its member, ensemble
  # free and its member. The last round without members.
  assert models == [[0, 0, member, member], [0, 0, 0, member, 0, member], [0, 0, 0, 0]]
  assert [rounds.trainings(lean["config"], [p]) for p in lean["points"]] == [3, 3, 5, 5]
  assert rounds.trainings(lean["config"], lean["points"]) == 14  # 16 alone, less the 2 shared in round 0
  assert [rounds.trainings(setup["config"], [p]) for p in setup["points"]] == [3, 3, 6, 6]
  same = warm_rows if warm_start else clean["rows"]
  assert [results.comparable(r) for r in rows] == [results.comparable(r) for r in same]
  assert [results.comparable(r)["round_history"] for r in rows] == [
      results.comparable(r)["round_history"] for r in same]


def test_passive_draws_at_random_without_a_model_beside_a_point_that_uses_one(setup, clean, tmp_path):
  config = _config()
  config.study.selections = ("entropy", "passive")
  dataset, splits, _, points, plans = train.read_inputs(config, use_cache=False)
  assert [p.name for p in points][2:] == ["2d_b8_s2_rho4_passive_r3_seed0", "2d_b8_s2_rho4_passive_r3_free_seed0"]
  assert [rounds.trainings(config, [p]) for p in points] == [3, 3, 1, 1]
  sizes = two_d.data_sizes(config, points, [plans[p.name] for p in points])
  trained = []

  def train_group(config_, models, *args, **kwargs):
    trained.append([m.name for m in models])
    return train.train_group(config_, models, *args, **kwargs)

  def run(folder):
    (folder / "plans").mkdir(parents=True)
    return rounds.train_rounds(config, points, plans, splits, dataset, 0, folder, train_group=train_group,
                               sizes=sizes, programs=setup["programs"])

  rows = run(tmp_path / "a")
  # Rounds 0 and 1 train only the entropy points' models; the passive points train once, in the last round.
  assert trained == [[p.name for p in points[:2]]] * 2 + [[p.name for p in points]]
  for row in rows[2:]:
    history = row["round_history"]
    assert [h["slices"] for h in history] == [4, 6, 8] and [h["val_dice"] is None for h in history] == [
        True, True, False]
    chosen = [(c, s) for h in history for c, slices in h["added"].items() for s in slices]
    assert len(chosen) == len(set(chosen)) == 8
  assert rows[2]["annotated_volumes"] == 2 and rows[2]["annotated_slices_per_volume"] == 4.0
  # Each entropy point chooses as it does beside the ensemble points (where round 0 shares its model with the
  # ensemble's first member: the same rows); the draws repeat exactly.
  assert [results.comparable(r) for r in rows[:2]] == [results.comparable(r) for r in clean["rows"][:2]]
  assert [results.comparable(r) for r in run(tmp_path / "b")] == [results.comparable(r) for r in rows]
  # Different seeds, different draws: the round's generator follows the point's seed.
  first = rounds.round_rng(points[2], 1).permutation(16)
  assert not np.array_equal(first, rounds.round_rng(dataclasses.replace(points[2], seed=1), 1).permutation(16))
  assert np.array_equal(first, rounds.round_rng(points[2], 1).permutation(16))


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


# ---------------------------------------------------------------------------------------------------------------------
# The next round's worklist: plan -> annotate -> train -> next plan, on a phantom whose labels stand in for people.
# ---------------------------------------------------------------------------------------------------------------------

def test_next_worklist_from_a_model_trained_on_ignore_label_files(tmp_path):
  import nibabel as nib
  from slicejax.modes import export
  from slicejax.data import nifti
  from slicejax.data import phantom
  from slicejax.modes import plan as plan_lib
  root = phantom.write_phantom(tmp_path / "msd", num_cases=6, shape=(16, 16, 8))
  first = config_lib.load(str(ROOT / "configs/plan.py"))
  first.data.root = str(root)
  first.plan.update(budget=4, volumes=2, selection="fixed", seed=3)
  plan_lib.run(first, tmp_path / "plan0")
  # "Annotate": the true labels on the planned slices of each template.
  filled = tmp_path / "filled"
  for template in sorted((tmp_path / "plan0" / "templates").glob("*.nii.gz")):
    label = np.asarray(nib.load(template).dataobj)
    truth = nifti.read_array(root / "labelsTr" / template.name).astype(label.dtype)
    nifti.save_like(filled / template.name, np.where(label == 3, 3, truth), nib.load(root / "imagesTr" / template.name))
  source = export.from_plan(tmp_path / "plan0", filled)
  held_out = [c for c in ("phantom_000", "phantom_001", "phantom_002", "phantom_003", "phantom_004", "phantom_005")
              if c not in json.loads((tmp_path / "plan0" / "plan.json").read_text())["cases"]][:1]
  source["cases"] += [(c, [root / "imagesTr" / f"{c}.nii.gz"],
                       nifti.read_array(root / "labelsTr" / f"{c}.nii.gz").astype(np.uint8)) for c in held_out]
  dataset = export.write(tmp_path / "Dataset501_Phantom", source)
  # Train on the ignore-label files (configs/sparse.py, tiny).
  sparse = config_lib.load(str(ROOT / "configs/sparse.py"))
  sparse.data.root = str(dataset)
  sparse.model.update(features=4, num_stages=2)
  sparse.train.update(steps=4, batch_size=4, warmup_steps=1, log_every=2)
  sparse.eval.update(surface_metrics=False, curve_points=0)
  train.train_and_evaluate(sparse, tmp_path / "run")
  # The next worklist: 1 more slice in each of the 2 annotated volumes, chosen by entropy.
  nxt = config_lib.load(str(ROOT / "configs/plan.py"))
  nxt.data.root = str(root)
  nxt.plan.update(budget=2, selection="entropy", model=str(tmp_path / "run"), annotated=str(filled))
  nxt.cost.seconds_per_kilopixel = 1000.0  # one second per foreground pixel
  built = plan_lib.run(nxt, tmp_path / "plan1")
  so_far = built["meta"]["annotated"]
  planned = json.loads((tmp_path / "plan0" / "plan.json").read_text())["cases"]
  assert so_far == {case: entry["slices"] for case, entry in planned.items()}
  assert sorted(built["plan"]) == sorted(so_far) and all(len(s) == 1 for s in built["plan"].values())
  for case, slices in built["plan"].items():
    assert not set(slices) & set(so_far[case])
    lo, hi = built["meta"]["offered"][case]
    assert all(lo <= s < hi for s in slices)
    template = nib.load(tmp_path / "plan1" / "templates" / f"{case}.nii.gz")
    image = nib.load(root / "imagesTr" / f"{case}.nii.gz")
    np.testing.assert_array_equal(template.affine, image.affine)
    assert template.shape == image.shape[:3]
    label = np.asarray(template.dataobj)
    before = np.asarray(nib.load(filled / f"{case}.nii.gz").dataobj)
    for s in range(label.shape[2]):  # slicing axis 2: old slices kept, the new one 0, the rest ignore
      expected = before[..., s] if s in so_far[case] else 0 if s in slices else 3
      np.testing.assert_array_equal(label[..., s], expected)
  rows = built["rows"]
  assert [r["estimated_seconds"] for r in rows] == [1.0 + r["predicted_foreground"] for r in rows]
  header = (tmp_path / "plan1" / "plan.csv").read_text().splitlines()[0]
  assert header == "order,case_id,axis,slice,image,template,predicted_foreground,estimated_seconds"
  # A budget a volume cannot hold: the error names its image, and nothing is written.
  room = {case: hi - lo - len(so_far[case]) for case, (lo, hi) in built["meta"]["offered"].items() if case in so_far}
  tight = min(room, key=lambda case: (room[case], case))
  nxt.plan.budget = 2 * (room[tight] + 1)
  with pytest.raises(InputError, match=rf"{tight}\.nii\.gz: {room[tight]} slices of it are left to annotate, fewer "
                                       rf"than the {room[tight] + 1} per volume"):
    plan_lib.run(nxt, tmp_path / "plan2")
  assert not (tmp_path / "plan2").exists()
  # Free allocation: 3 slices anywhere, never an annotated one.
  nxt.plan.update(budget=3, free=True)
  free = plan_lib.build(nxt)
  assert sum(map(len, free["plan"].values())) == 3
  assert all(not set(s) & set(so_far.get(c, ())) for c, s in free["plan"].items())


def test_the_report_compares_round_cells_with_one_shot_cells_at_equal_budget():
  from slicejax.report import cells as cells_lib
  from slicejax.report import comparisons as comparisons_lib

  def row(selection, seed, dice, **extra):
    return {"dims": 2, "budget": 8, "volumes": 2, "slices_per_volume": 4, "selection": selection, "seed": seed,
            "interpolation": False, "reference": False, "dice_mean": dice, "test_cases": ["a", "b"],
            "per_volume": {"dice": [[dice], [dice - 0.1]]}, **extra}

  history = [{"round": 0, "slices": 4, "added": {}, "val_dice": 0.5}, {"round": 1, "slices": 8, "added": {},
                                                                        "val_dice": 0.7}]
  rows = [row("fixed", s, 0.6 + 0.01 * s, annotated_foreground=1000) for s in range(3)]
  rows += [row("entropy", s, 0.7 + 0.01 * s, rounds=2, free=False, round_history=history,
               annotated_foreground=3000, annotated_volumes=2) for s in range(3)]
  rows += [row("entropy", s, 0.65, rounds=2, free=True, round_history=history, annotated_foreground=2000,
               annotated_volumes=3) for s in range(3)]
  cost = {"seconds_per_volume": 10.0, "seconds_per_slice": 1.0, "seconds_per_kilopixel": 2.0}
  cells = {c["selection"]: c for c in cells_lib.summarise(rows, cost)}
  assert list(cells) == ["fixed", "entropy r2", "entropy r2 free"]
  # 2 volumes x 10 s + 8 slices x 1 s + 1,000 / 3,000 / 2,000 foreground pixels x 2 s per 1,000; free opened 3.
  assert [cells[k]["cost"] for k in cells] == [30.0, 34.0, 42.0]
  assert cells["entropy r2"]["round_val_dice"] == pytest.approx([0.5, 0.7]) and cells["entropy r2"]["round_slices"] == [4, 8]
  comparisons = comparisons_lib.paired_comparisons(rows)
  pairs = {(c["a"]["selection"], c["b"]["selection"]): c for c in comparisons}
  assert set(pairs) == {("entropy r2", "fixed"), ("entropy r2 free", "fixed"), ("entropy r2 free", "entropy r2")}
  assert {(c["a"]["selection"], c["b"]["selection"]): c["family"] for c in comparisons} == {
      ("entropy r2", "fixed"): "selection, rounds, one-shot", ("entropy r2 free", "fixed"): "selection, rounds, one-shot",
      ("entropy r2 free", "entropy r2"): "selection, rounds"}
  assert pairs[("entropy r2", "fixed")]["mean_diff"] == pytest.approx(0.1)


def _report_row(selection, seed, dice, **extra):
  """A budget-8, 2 x 4 result row of `selection` for the report, Dice `dice` and `dice - 0.1` on two test volumes."""
  return {"dims": 2, "budget": 8, "volumes": 2, "slices_per_volume": 4, "selection": selection, "seed": seed,
          "interpolation": False, "reference": False, "dice_mean": dice, "test_cases": ["a", "b"],
          "per_volume": {"dice": [[dice], [dice - 0.1]]}, **extra}


def _history(first):
  """A two-round history whose round 0 scored validation Dice `first` (None: it trained nothing)."""
  return [{"round": 0, "slices": 4, "added": {}, "val_dice": first},
          {"round": 1, "slices": 8, "added": {}, "val_dice": 0.7}]


def test_round_methods_against_their_passive_control_are_a_family_of_their_own():
  from slicejax.report import cells as cells_lib
  from slicejax.report import comparisons as comparisons_lib

  row, history = _report_row, _history
  rows = [row("fixed", s, 0.6, annotated_volumes=2) for s in range(3)]
  for selection, dice in (("entropy", 0.70), ("hybrid", 0.66), ("passive", 0.64)):
    rows += [row(selection, s, dice + 0.01 * s, rounds=2, free=False, annotated_volumes=2,
                 round_history=history(None if selection == "passive" else 0.5)) for s in range(3)]
  rows += [row("passive", s, 0.62, rounds=2, free=True, annotated_volumes=3, round_history=history(None))
           for s in range(3)]
  cells = {c["selection"]: c for c in cells_lib.summarise(rows)}
  assert cells["passive r2"]["round_val_dice"][0] is None and cells["entropy r2"]["round_val_dice"][0] == 0.5
  families = {(c["a"]["selection"], c["b"]["selection"]): c["family"]
              for c in comparisons_lib.paired_comparisons(rows)}
  # Method - passive on the same schedule; the free control is another schedule.
  control = {pair for pair, family in families.items() if family == "selection, rounds, control"}
  assert control == {("entropy r2", "passive r2"), ("hybrid r2", "passive r2")}
  one_shot = {pair for pair, family in families.items() if family == "selection, rounds, one-shot"}
  assert one_shot == {("entropy r2", "fixed"), ("hybrid r2", "fixed")}  # the control passive is not a method
  assert len(families) == 10 and collections.Counter(families.values()) == {
      "selection, rounds": 6, "selection, rounds, control": 2, "selection, rounds, one-shot": 2}
  assert comparisons_lib.is_control("entropy r2 free", "passive r2 free")
  assert not comparisons_lib.is_control("entropy r2", "passive r2 free")
  assert not comparisons_lib.is_control("entropy r2", "hybrid r2") and not comparisons_lib.is_control("passive r2",
                                                                                                      "fixed")
  comparisons = comparisons_lib.paired_comparisons(rows)
  entropy = next(c for c in comparisons if (c["a"]["selection"], c["b"]["selection"]) == ("entropy r2", "passive r2"))
  assert entropy["mean_diff"] == pytest.approx(0.06) and entropy["family_size"] == 2


def test_a_cell_in_rounds_is_recommended_only_once_shown_better_than_its_control():
  from slicejax.report import cells as cells_lib
  from slicejax.report import comparisons as comparisons_lib
  from slicejax.report import findings as findings_lib
  from slicejax.report import recommendations
  from slicejax.report import render

  row, history = _report_row, _history
  base, wobble = [0.0, 0.02, -0.01, 0.015, -0.02], [0.03, -0.03, 0.04, -0.02, 0.0]

  def recommend(passive_gap):
    rows = [row("random", s, 0.64 + base[s]) for s in range(5)]
    rows += [row("passive", s, 0.64 + passive_gap + base[s] + 0.001 * s, rounds=2, free=False,
                 round_history=history(None)) for s in range(5)]
    # entropy has the highest mean, 0.010 over passive with a per-seed spread of 0.03: not shown better than it.
    rows += [row("entropy", s, 0.65 + base[s] + wobble[s], rounds=2, free=False, round_history=history(0.5))
             for s in range(5)]
    cells = cells_lib.summarise(rows)
    comparisons = comparisons_lib.paired_comparisons(rows)
    verdicts = {(c["a"]["selection"], c["b"]["selection"]): c["verdict"] for c in comparisons}
    (entry,) = recommendations.recommendations(comparisons, cells, findings_lib.trust_gate(cells),
                                               needed=comparisons_lib.seeds_needed(comparisons))
    return verdicts, entry, render.recommendations_markdown([entry], cells, cells_lib.DEFAULT_COST)

  # passive 0.030 below random: entropy beats its control, so it is a candidate beside random, and the highest.
  verdicts, entry, lines = recommend(-0.03)
  assert verdicts[("entropy r2", "passive r2")] == "better"
  assert [c["cell"] for c in entry["candidates"]] == ["2×4 entropy r2", "2×4 random"]
  assert entry["held_back"] == ["2×4 passive r2"] and entry["shown_worse"] == {}  # the control takes no part
  # Recommended, it is set against the one-shot selection it would replace: entropy − random = 0.010 + mean(wobble).
  ((a, b, delta, verdict),) = [(e["a"], e["b"], e["mean_diff"], e["verdict"]) for e in entry["against_one_shot"]]
  assert (a, b, verdict) == ("2×4 entropy r2", "2×4 random", "inconclusive") and delta == pytest.approx(0.014)
  assert any(line.startswith("  - Selection in rounds against one-shot selection of the same slices per volume")
             and line.endswith("2×4 entropy r2 − 2×4 random: Δ +0.014 "
                               f"[{entry['against_one_shot'][0]['ci_low']:+.3f}, "
                               f"{entry['against_one_shot'][0]['ci_high']:+.3f}], inconclusive.") for line in lines)
  # passive just above random: entropy is not shown better than passive, so neither takes part; passive's win over
  # random rules nothing out, and random is the only candidate, with no comparison of its own left.
  verdicts, entry, lines = recommend(0.002)
  assert (verdicts[("entropy r2", "passive r2")], verdicts[("passive r2", "random")]) == ("inconclusive", "better")
  assert [c["cell"] for c in entry["candidates"]] == ["2×4 random"] and entry["shown_worse"] == {}
  assert (entry["case"], entry["counts"], entry["held_back"]) == ("not separated", {}, ["2×4 entropy r2",
                                                                                       "2×4 passive r2"])
  assert entry["against_one_shot"] == []  # a one-shot cell is recommended
  assert lines[5] == ("  - Selection in rounds, left out until shown better than its control `passive` (the control "
                      "itself always): 2×4 entropy r2, 2×4 passive r2.")


def test_a_family_trains_in_one_group_and_shares_its_round_0_models():
  config = config_lib.load(str(ROOT / "configs/hippocampus.py") + ":converged=rounds,budget=36")
  points = study.expand(config.study, {f"case_{i:03d}": 30 for i in range(180)})
  groups = rounds.group(config, points, 2, lambda p: 0)
  # One group per seed (its family), though an ensemble alone exceeds 2 models: a family is never split.
  assert [[p.selection for p in g] for g in groups] == [["entropy", "ensemble", "hybrid", "passive"]] * 5
  assert [{p.seed for p in g} for g in groups] == [{seed} for seed in range(5)]
  # Round 0: one model for entropy, hybrid and the ensemble's first member, and the ensemble's 3 other members
  # (passive trains none); round 1: each point's own model. 8 trainings, against 10 for the points alone.
  assert [[(m.seed, owners) for m, owners in rounds.round_models(config, groups[1], r)] for r in (0, 1)] == [
      [(1, tuple(p.name for p in groups[1][:3]))] + [(1 + k * rounds.MEMBER_SEED_STRIDE, (groups[1][1].name,))
                                                     for k in (1, 2, 3)],
      [(1, (p.name,)) for p in groups[1]]]
  assert rounds.trainings(config, groups[1]) == 8 and sum(rounds.trainings(config, [p]) for p in groups[1]) == 10
  # One-shot points group as before: consecutive, at most 2 models.
  one_shot = study.expand(config_lib.load(str(ROOT / "configs/hippocampus.py") + ":converged=grid,budget=36").study,
                          {f"case_{i:03d}": 30 for i in range(180)})
  assert rounds.group(config, one_shot, 2, lambda p: 0) == [one_shot[i:i + 2] for i in range(0, len(one_shot), 2)]


def test_rounds_without_validation_volumes_choose_and_score_as_with_them(setup, clean, tmp_path):
  rows = _run(setup, tmp_path, splits={**setup["splits"], "val": []})
  assert all(h["val_dice"] is None for r in rows for h in r["round_history"])
  # Validation volumes only measure: the same slices chosen, the same test scores.
  assert [[h["added"] for h in r["round_history"]] for r in rows] == [
      [h["added"] for h in r["round_history"]] for r in clean["rows"]]
  assert [r["per_volume"] for r in rows] == [r["per_volume"] for r in clean["rows"]]


def test_a_round_checkpoint_without_its_record_is_never_restored(setup, tmp_path):
  stale = tmp_path / "checkpoints" / "group_0_round_0" / "250"
  stale.mkdir(parents=True)
  with pytest.raises(InputError, match=r"group_0_round_0: holds models of other points than group 0's "):
    _run(setup, tmp_path)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["group_0_round_0"]  # nothing else written
  assert not (tmp_path / "rounds").exists()
