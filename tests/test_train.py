"""Pieces of the trainer: the dims modules' training data, the static shape, keys owned by points, divergence
containment, resume."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slicejax.config import base
from slicejax.data import load as data_lib
from slicejax.report import results
from slicejax.report import runs
from slicejax.study import grid as study
from slicejax.study import interpolation
from slicejax.training.inputs import sampler
from slicejax.training.inputs import three_d
from slicejax.training.inputs import two_d
from slicejax.training import train


def _volume(case_id, label):
  image = label[..., None].astype(np.float32)
  return data_lib.Volume(case_id, image, label, (2.0, 1.0, 1.0), np.eye(4), 2)


def _growing_label():
  label = np.zeros((6, 8, 8), np.int32)
  for d in range(6):
    label[d, 2:2 + d // 2 + 2, 2:6] = 1
  return label


def test_slice_data_holds_referenced_slices_and_appends_interpolated_ones():
  label = _growing_label()
  pool = [_volume("a", np.zeros_like(label)), _volume("b", label)]
  config = base()
  config.interpolation.weight = 0.5
  points = [study.Point(2, 2, 1, 2, "fixed", False, 0), study.Point(2, 2, 1, 2, "fixed", True, 0)]
  plans = [{"b": [1, 4]}, {"b": [1, 4]}]
  assert two_d.data_sizes(config, points, plans) == {"images": 4, "labels": 6, "entries": 4}
  bank, entries, quality = two_d.training_data(config, points, plans, pool, 2, (8, 8))
  # Only volume b's slices 1-4 are in the bank (rows 0-3); its slices 2 and 3 lie between the annotated 1 and 4 and
  # get label rows 4, 5.
  np.testing.assert_array_equal(entries["count"], [2, 4])
  np.testing.assert_array_equal(entries["image_row"][1], [0, 3, 1, 2])
  np.testing.assert_array_equal(entries["label_row"][1], [0, 3, 4, 5])
  np.testing.assert_allclose(entries["weight"][1], [1.0, 1.0, 0.5, 0.5])
  filled, _ = interpolation.interpolate(label, [1, 4], 2)
  np.testing.assert_array_equal(bank["labels"][:4], label[1:5])
  np.testing.assert_array_equal(bank["labels"][4:6], filled[2:4])
  assert bank["labels"].dtype == np.uint8 and bank["images"].shape == (4, 8, 8, 1)
  np.testing.assert_array_equal(bank["extents"], [[8, 8]] * 4)
  assert list(quality) == [1] and quality[1]["num_slices"] == 2
  # Padded to a grid's larger sizes: zero rows, and entries padded past `count`.
  bank, entries, _ = two_d.training_data(config, points, plans, pool, 2, (8, 8),
                                         {"images": 7, "labels": 9, "entries": 5})
  assert (bank["images"].shape[0], bank["labels"].shape[0], entries["image_row"].shape) == (7, 9, (2, 5))
  np.testing.assert_array_equal(bank["extents"][4:], 0)


def test_volume_data_holds_annotated_volumes_planes_and_interpolated_label_rows():
  label = _growing_label()
  pool = [_volume("a", np.zeros((4, 8, 8), np.int32)), _volume("b", label), _volume("c", np.zeros_like(label))]
  config = base()
  config.three_d.patch = (4, 8, 8)
  config.interpolation.weight = 0.25
  points = [study.Point(3, 2, 1, 2, "fixed", False, 0), study.Point(3, 2, 1, 2, "fixed", True, 0)]
  plans = [{"b": [1, 4]}, {"b": [1, 4]}]
  assert three_d.data_sizes(config, points, plans) == {"volumes": 1, "interpolated": 1}
  bank, per_model, _ = three_d.training_data(config, points, plans, pool, 2, (4, 8, 8),
                                             {"volumes": 2, "interpolated": 1})
  assert bank["images"].shape == (2, 6, 8, 8, 1) and bank["labels"].shape == (3, 6, 8, 8)
  np.testing.assert_array_equal(bank["extents"], [[6, 8, 8], [0, 0, 0]])
  np.testing.assert_allclose(per_model["planes"][0], [[0, 1, 0, 0, 1, 0], [0] * 6])
  np.testing.assert_allclose(per_model["planes"][1], [[0, 1, 0.25, 0.25, 1, 0], [0] * 6])
  np.testing.assert_array_equal(per_model["label_rows"], [[0, 1], [2, 1]])
  filled, _ = interpolation.interpolate(label, [1, 4], 2)
  np.testing.assert_array_equal(bank["labels"][0], label)
  np.testing.assert_array_equal(bank["labels"][2], filled)
  # A grid whose largest group annotates more volumes (a reference) than this group, which interpolates: the grid's
  # sizes still hold this group's interpolated rows.
  reference = study.Point(3, 12, 2, None, "all", False, 0, reference=True)
  groups = [(points, plans), ([reference], [{"b": list(range(6)), "c": list(range(6))}])]
  grid = {k: max(three_d.data_sizes(config, *g)[k] for g in groups) for k in ("volumes", "interpolated")}
  assert grid == {"volumes": 2, "interpolated": 1}
  bank, per_model, _ = three_d.training_data(config, points, plans, pool, 2, (4, 8, 8), grid)
  assert bank["labels"].shape[0] == 3 and per_model["label_rows"][1, 0] == 2


def test_static_shape_rounds_up_to_the_downsampling():
  config = base()
  config.model.num_stages = 4
  volumes = [_volume("a", np.zeros((3, 35, 50), np.int32)), _volume("b", np.zeros((3, 41, 44), np.int32))]
  assert two_d.example_shape(config, volumes) == (48, 56)
  config.data.shape = (32, 32)
  assert two_d.example_shape(config, volumes) == (32, 32)


@pytest.mark.slow
def test_keys_come_from_the_study_seed_not_the_slot():
  config = base()
  config.model.update(features=4, num_stages=2)
  model = train.make_model(config, 3, 2)
  tx = train.make_optimizer(config.train)
  state = train.init_state(model, tx, [5, 7, 5], (8, 8, 1), base_seed=3)
  alone = train.init_state(model, tx, [7], (8, 8, 1), base_seed=3)
  other_base = train.init_state(model, tx, [7], (8, 8, 1), base_seed=4)
  for stacked, single, moved in zip(jax.tree.leaves(state), jax.tree.leaves(alone), jax.tree.leaves(other_base)):
    np.testing.assert_array_equal(stacked[0], stacked[2])  # same study seed, same keys
    np.testing.assert_array_equal(stacked[1], single[0])  # the slot in the group does not matter
  assert not np.array_equal(state["rng"][0], state["rng"][1])
  assert not np.array_equal(alone["rng"][0], other_base["rng"][0])


def test_interpolated_slices_with_weight_zero_are_never_drawn():
  label = _growing_label()
  pool = [_volume("b", label)]
  config = base()
  config.interpolation.weight = 0.0
  points = [study.Point(2, 2, 1, 2, "fixed", True, 0)]
  bank, entries, quality = two_d.training_data(config, points, [{"b": [1, 4]}], pool, 2, (8, 8))
  np.testing.assert_array_equal(entries["count"], [2])
  np.testing.assert_array_equal(entries["image_row"][0], [0, 1])
  assert bank["labels"].shape == (2, 8, 8) and quality[0]["num_slices"] == 2
  config.three_d.patch = (4, 8, 8)
  _, per_model, _ = three_d.training_data(config, [study.Point(3, 2, 1, 2, "fixed", True, 0)], [{"b": [1, 4]}], pool,
                                          2, (4, 8, 8))
  np.testing.assert_allclose(per_model["planes"][0], [[0, 1, 0, 0, 1, 0]])


@pytest.mark.slow
def test_batches_are_uniform_over_labelled_slices():
  # Annotated rows 0 and 3 (weight 1) and interpolated rows 1, 2 (weight 0.5): each entry drawn 1/4 of the time.
  plans = [{"a": [0, 3]}]
  entries = jax.tree.map(jnp.asarray, sampler.model_entries(plans, {"a": np.arange(4)}, [[(1, 4, 0.5), (2, 5, 0.5)]]))
  bank = {"images": jnp.arange(6, dtype=jnp.float32)[:, None, None, None] * jnp.ones((6, 2, 2, 1)),
          "labels": jnp.zeros((6, 2, 2), jnp.uint8), "extents": jnp.full((6, 2), 2, jnp.int32)}
  draw = jax.jit(lambda key: sampler.sample(key, bank, jax.tree.map(lambda e: e[0], entries), 64))
  rows = np.concatenate([np.asarray(draw(jax.random.key(k))[0][:, 0, 0, 0]) for k in range(50)])
  share = np.bincount(rows.astype(int), minlength=4)[:4] / len(rows)
  # 3200 draws: the binomial standard deviation of each share is 0.0077.
  np.testing.assert_allclose(share, [0.25] * 4, atol=0.03)


@pytest.mark.slow
def test_diverged_model_is_frozen_and_others_unaffected():
  config = base()
  config.model.update(features=4, num_stages=2)
  config.train.update(batch_size=2, steps=4, warmup_steps=1)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(6, 8, 8, 1)).astype(np.float32)
  bad = images.copy()
  bad[3:] = np.nan  # model 1 trains only on rows 3-5
  plans = [{"a": [0, 1, 2]}, {"a": [3, 4, 5]}]
  entries = jax.tree.map(jnp.asarray, sampler.model_entries(plans, {"a": np.arange(6)}))
  model = train.make_model(config, 3, 2)
  tx = train.make_optimizer(config.train)
  step = jax.jit(jax.vmap(train.make_train_step(model, tx, config, two_d.batch_sampler(config)),
                               in_axes=(0, None, 0)))

  def run(bank_images):
    bank = {"images": jnp.asarray(bank_images), "labels": jnp.asarray(rng.integers(0, 3, (6, 8, 8)), jnp.uint8),
            "extents": jnp.full((6, 2), 8, jnp.int32)}
    state = train.init_state(model, tx, [1, 2], (8, 8, 1))
    initial = state["params"]
    for _ in range(3):
      state, _ = step(state, bank, entries)
    return initial, state

  rng = np.random.default_rng(1)
  _, clean = run(images)
  rng = np.random.default_rng(1)
  initial, broken = run(bad)
  assert np.asarray(broken["diverged"]).tolist() == [False, True]
  assert np.asarray(broken["diverged_step"]).tolist() == [-1, 0]
  for a, b, c in zip(jax.tree.leaves(broken["params"]), jax.tree.leaves(clean["params"]),
                     jax.tree.leaves(initial)):
    np.testing.assert_array_equal(a[0], b[0])  # the healthy model is exactly as without the NaNs
    np.testing.assert_array_equal(a[1], c[1])  # the diverged model never moved


class Crash(Exception):
  pass


@pytest.mark.slow
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch):
  from slicejax.training import checkpoint
  from slicejax.config import load
  config = load("configs/demo.py:tiny")
  with config.unlocked():
    config.train.checkpoint_every = 2
  timeless = lambda rows: [results.comparable(r) for r in rows]
  clean = train.train_and_evaluate(config, tmp_path / "clean")

  save = checkpoint.GroupCheckpoints.save

  def save_then_crash(self, step, state, **kwargs):
    save(self, step, state, **kwargs)
    if step == 4:
      self.close()  # The crash comes once step 4's checkpoint is complete (saves finish in the background).
      raise Crash()

  monkeypatch.setattr(checkpoint.GroupCheckpoints, "save", save_then_crash)
  try:
    train.train_and_evaluate(config, tmp_path / "resumed")
  except Crash:
    pass
  else:
    raise AssertionError("the run should have crashed at step 4")
  monkeypatch.undo()
  assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints" / "group_0").iterdir()) == ["2", "4"]
  assert not (tmp_path / "resumed" / "results.jsonl").exists()
  # The training seconds up to each checkpoint are kept beside them; the resumed rows count the first launch's.
  seconds_path = tmp_path / "resumed" / "checkpoints" / "group_0_seconds.json"
  seconds = json.loads(seconds_path.read_text())
  assert sorted(seconds, key=int) == ["2", "4"] and 0 < seconds["2"] <= seconds["4"]
  seconds_path.write_text(json.dumps({**seconds, "4": 1000.0}))
  resumed = train.train_and_evaluate(config, tmp_path / "resumed")
  assert timeless(resumed) == timeless(clean)
  assert all(1000.0 < row["group_train_seconds"] < 1000.0 + 600 for row in resumed)
  # Each launch recorded its versions and machine; a row names the launch that trained it.
  launches = [json.loads(line) for line in (tmp_path / "resumed" / "launches.jsonl").read_text().splitlines()]
  assert [entry["launch"] for entry in launches] == [0, 1]
  assert all(entry["versions"]["jax"] == jax.__version__ and entry["backend"] == "cpu" for entry in launches)
  assert {row["launch"] for row in resumed} == {1} and {row["launch"] for row in clean} == {0}
  summary = (tmp_path / "resumed" / "summary.md").read_text()
  assert f"- {runs.environment_label(launches[0])}: 2 launches" in summary and "did not record" not in summary
  # A launch that finds every group done trains nothing and records nothing.
  assert timeless(train.train_and_evaluate(config, tmp_path / "resumed")) == timeless(clean)
  assert len((tmp_path / "resumed" / "launches.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_reference_with_steps_of_its_own_equals_the_reference_trained_alone(tmp_path):
  from slicejax.config import load
  config = load("configs/demo.py:tiny")
  with config.unlocked():
    config.study.reference_steps = 10
  rows = train.train_and_evaluate(config, tmp_path / "grid")
  steps = {r["name"]: (r["steps"], r["group"]) for r in rows}
  assert steps.pop("2d_reference_seed0") == (10, 1)
  assert set(steps.values()) == {(6, 0)}
  alone = load("configs/demo.py:tiny")
  with alone.unlocked():
    alone.train.steps = 10
    alone.study.budgets = ()
  [reference] = train.train_and_evaluate(alone, tmp_path / "alone")
  placed = lambda row: {k: v for k, v in results.comparable(row).items() if k != "name"}
  assert placed(reference) == placed(next(r for r in rows if r["reference"]))


@pytest.mark.slow
def test_auto_group_size_follows_memory(monkeypatch):
  from slicejax.config import load
  config = load("configs/demo.py:tiny")
  with config.unlocked():
    config.model_axis.max_models = 0
  _, _, groups, _, _ = train.prepare(config)
  assert [len(g) for g in groups] == [5]  # a few MB per model: the whole grid fits
  # With 64 KB of memory (the CPU reports no device limit), one model per group is all that fits.
  monkeypatch.setattr(train.os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 16}[name])
  _, _, groups, _, _ = train.prepare(config)
  assert [len(g) for g in groups] == [1] * 5


@pytest.mark.slow
def test_several_steps_in_one_program_equal_steps_one_by_one():
  config = base()
  config.model.update(features=4, num_stages=2)
  config.train.update(batch_size=2, steps=4, warmup_steps=1)
  rng = np.random.default_rng(0)
  bank = {"images": jnp.asarray(rng.normal(size=(6, 8, 8, 1)), jnp.float32),
          "labels": jnp.asarray(rng.integers(0, 3, (6, 8, 8)), jnp.uint8), "extents": jnp.full((6, 2), 8, jnp.int32)}
  entries = jax.tree.map(lambda e: jnp.asarray(e[0]), sampler.model_entries([{"a": [0, 2, 5]}], {"a": np.arange(6)}))
  model = train.make_model(config, 3, 2)
  tx = train.make_optimizer(config.train)
  state = jax.tree.map(lambda leaf: leaf[0], train.init_state(model, tx, [0], (8, 8, 1)))
  step = train.make_train_step(model, tx, config, two_d.batch_sampler(config))
  one = jax.jit(step)
  expected = state
  for _ in range(3):
    expected, expected_out = one(expected, bank, entries)
  looped, out = jax.jit(train.make_multi_step(step))(state, {"bank": bank, "steps": jnp.int32(3)}, entries)
  assert int(looped["step"]) == 3
  for a, b in zip(jax.tree.leaves(looped), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(out["loss"], expected_out["loss"], rtol=1e-5)
