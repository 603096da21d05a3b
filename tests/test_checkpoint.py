"""Tests for slicejax.training.checkpoint: background saves, exact restores, pruning, donation safety, unfinished saves."""

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from slicejax.training import checkpoint


def _state(step: int) -> dict:
  """A two-model stacked state whose every leaf says which step it belongs to."""
  return {"params": {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3) * step},
          "rng": jax.random.key_data(jax.random.split(jax.random.key(step), 2)),
          "step": jnp.full((2,), step, jnp.int32),
          "diverged": jnp.array([False, step == 4])}


def _assert_same(restored, expected):
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_restore_latest_is_the_last_save_and_keep_prunes_older(tmp_path):
  checkpoints = checkpoint.GroupCheckpoints(tmp_path, keep=2)
  assert checkpoints.restore_latest(_state(0)) is None
  checkpoints.save(2, _state(2))
  checkpoints.save(4, _state(4))
  # Step 4 may still be writing: restore_latest waits for it rather than reading a partial one.
  restored = checkpoints.restore_latest(_state(0))
  _assert_same(restored, _state(4))
  np.testing.assert_array_equal(restored["params"]["w"], [[0, 4, 8], [12, 16, 20]])
  np.testing.assert_array_equal(restored["diverged"], [False, True])
  checkpoints.save(6, _state(6))
  checkpoints.close()
  # close() waited for step 6: it is final (no temporary folder left) and step 2 is pruned.
  assert sorted(p.name for p in tmp_path.iterdir()) == ["4", "6"]
  _assert_same(checkpoint.GroupCheckpoints(tmp_path).restore_latest(_state(0)), _state(6))


def test_the_saved_state_may_be_donated_or_mutated_right_after_save(tmp_path):
  state = {"w": jnp.arange(1 << 20, dtype=jnp.float32), "rng": jax.random.key_data(jax.random.key(7)),
           "flag": jnp.array([True, False]), "count": np.array([1, 2], np.int32)}
  expected = jax.tree.map(np.array, state)
  step = jax.jit(lambda s: jax.tree.map(lambda x: ~x if x.dtype == bool else x + 1, s), donate_argnums=0)
  checkpoints = checkpoint.GroupCheckpoints(tmp_path)
  checkpoints.save(1, state)
  donated = {k: v for k, v in state.items() if k != "count"}
  # Whether the step reuses the donated buffers depends on the backend and on timing; the checkpoint must not.
  later = step(donated)
  state["count"] += 10
  for _ in range(3):
    later = step(later)
  checkpoints.close()
  _assert_same(checkpoint.GroupCheckpoints(tmp_path).restore_latest(expected), expected)


def test_an_unfinished_checkpoint_is_never_restored_and_is_cleared(tmp_path):
  checkpoints = checkpoint.GroupCheckpoints(tmp_path)
  checkpoints.save(4, _state(4))
  checkpoints.close()
  # What a process killed before the final rename leaves behind.
  (tmp_path / "4").rename(tmp_path / ("4" + ocp.path.atomicity.TMP_DIR_SUFFIX))
  checkpoints = checkpoint.GroupCheckpoints(tmp_path)
  assert checkpoints.restore_latest(_state(0)) is None
  checkpoints.save(2, _state(2))
  checkpoints.close()
  assert [p.name for p in tmp_path.iterdir()] == ["2"]


def test_local_paths_are_made_absolute_and_cloud_paths_kept(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert checkpoint._directory("group_0") == epath.Path(tmp_path / "group_0")
  assert str(checkpoint._directory("gs://bucket/run/checkpoints/group_0")) == "gs://bucket/run/checkpoints/group_0"
