"""Tests for slicejax.workdir: the workdir lock and the one-config-per-run check."""

import json
import logging
import os
import socket
import subprocess

import pytest

from slicejax.errors import InputError
from slicejax import workdir as workdir_lib

CONFIG = {"data": {"root": "/data/a", "split": {"train": 6, "val": 1}}, "train": {"steps": 4, "batch_size": 4},
          "study": {"budgets": [6], "selections": ["fixed"]}, "seed": 0}
ROW = json.dumps({"name": "2d_b6_s6_rho1_fixed_seed0", "dice_mean": 0.5}) + "\n"


def _write_lock(workdir, pid, host=None):
  workdir.mkdir(parents=True, exist_ok=True)
  lock = workdir / workdir_lib.LOCK_NAME
  lock.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "token": "theirs"}))
  return lock


def _finished(folder, config=CONFIG):
  """Makes `folder` hold a run of `config` with one result row."""
  workdir_lib.check_config(folder, config)
  (folder / "results.jsonl").write_text(ROW)
  return folder


def _snapshot(folder) -> dict:
  return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _changed(**changes):
  """CONFIG with dotted keys set, e.g. _changed(**{"data.root": "/x"})."""
  config = json.loads(json.dumps(CONFIG))
  for dotted, value in changes.items():
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
      node = node[key]
    node[leaf] = value
  return config


# ---------------------------------------------------------------------------------------------------------------------
# WorkdirLock.
# ---------------------------------------------------------------------------------------------------------------------


def test_lock_is_created_with_our_pid_and_released(tmp_path):
  wd = tmp_path / "wd"
  with workdir_lib.WorkdirLock(wd) as lock:
    holder = json.loads(lock.path.read_text())
    assert holder["pid"] == os.getpid()
    assert holder["host"] == socket.gethostname()
  assert not (wd / ".lock").exists()
  # Released locks can be taken again.
  with workdir_lib.WorkdirLock(wd):
    assert (wd / ".lock").exists()
  assert not (wd / ".lock").exists()


def test_lock_held_by_a_live_process_is_refused_and_left_alone(tmp_path):
  wd = tmp_path / "wd"
  sleeper = subprocess.Popen(["sleep", "60"])
  try:
    lock = _write_lock(wd, sleeper.pid)
    before = lock.read_bytes()
    with pytest.raises(InputError) as err:
      with workdir_lib.WorkdirLock(wd):
        pytest.fail("entered a workdir held by a running process")
    message = str(err.value)
    assert message.startswith(f"{wd}: in use by a running launch (pid {sleeper.pid});")
    assert "\n" not in message
    assert lock.read_bytes() == before
  finally:
    sleeper.kill()
    sleeper.wait()


def test_stale_lock_of_a_finished_process_is_taken_over(tmp_path):
  wd = tmp_path / "wd"
  finished = subprocess.Popen(["true"])
  finished.wait()
  _write_lock(wd, finished.pid)
  with workdir_lib.WorkdirLock(wd) as lock:
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
  assert not (wd / ".lock").exists()


@pytest.mark.parametrize("content", ["", "{not json", json.dumps({"pid": 0, "host": "h"}), json.dumps([1, 2])])
def test_lock_without_a_valid_holder_is_taken_over(tmp_path, content):
  wd = tmp_path / "wd"
  wd.mkdir()
  (wd / ".lock").write_text(content)
  with workdir_lib.WorkdirLock(wd) as lock:
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
  assert not (wd / ".lock").exists()


def test_stale_lock_with_our_own_pid_is_taken_over(tmp_path):
  # A container restarts a launch with the pid its killed predecessor had.
  wd = tmp_path / "wd"
  _write_lock(wd, os.getpid())
  with workdir_lib.WorkdirLock(wd) as lock:
    assert json.loads(lock.path.read_text())["token"] != "theirs"
  assert not (wd / ".lock").exists()


def test_lock_is_not_reentrant_within_one_process(tmp_path):
  wd = tmp_path / "wd"
  with workdir_lib.WorkdirLock(wd):
    with pytest.raises(InputError, match=rf"already locked by this process \(pid {os.getpid()}\)"):
      with workdir_lib.WorkdirLock(wd):
        pytest.fail("entered a workdir this process holds")
    assert (wd / ".lock").exists()
  assert not (wd / ".lock").exists()


def test_lock_of_another_host_is_refused(tmp_path):
  wd = tmp_path / "wd"
  _write_lock(wd, 12345, host="some-other-host")
  with pytest.raises(InputError, match=r"in use by a launch on host some-other-host \(pid 12345\)"):
    with workdir_lib.WorkdirLock(wd):
      pytest.fail("entered a workdir locked from another host")


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
  wd = tmp_path / "wd"
  with workdir_lib.WorkdirLock(wd):
    replacement = _write_lock(wd, 4242)
  assert json.loads(replacement.read_text())["pid"] == 4242


def test_lock_is_released_when_the_body_raises(tmp_path):
  wd = tmp_path / "wd"
  with pytest.raises(RuntimeError, match="boom"):
    with workdir_lib.WorkdirLock(wd):
      raise RuntimeError("boom")
  assert not (wd / ".lock").exists()


def test_lock_that_cannot_be_written_is_removed(tmp_path, monkeypatch):
  wd = tmp_path / "wd"
  wd.mkdir()

  def full_disk(fd):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "fsync", full_disk)
  with pytest.raises(OSError, match="No space left"):
    with workdir_lib.WorkdirLock(wd):
      pytest.fail("entered without a lock")
  assert list(wd.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------------
# check_config.
# ---------------------------------------------------------------------------------------------------------------------


def test_first_run_writes_config_and_same_config_resumes(tmp_path):
  wd = tmp_path / "wd"
  assert workdir_lib.check_config(wd, CONFIG) == wd
  assert json.loads((wd / "config.json").read_text()) == CONFIG
  written = (wd / "config.json").read_bytes()
  # Tuples read back as lists, so a config holding tuples resumes too.
  with_tuples = _changed(**{"study.budgets": (6,), "study.selections": ("fixed",)})
  assert workdir_lib.check_config(wd, with_tuples) == wd
  assert workdir_lib.check_config(wd, CONFIG, fresh=True) == wd
  assert (wd / "config.json").read_bytes() == written
  assert sorted(p.name for p in wd.iterdir()) == ["config.json"]


def test_different_config_names_exactly_the_differing_keys(tmp_path):
  wd = _finished(tmp_path / "wd")
  before = _snapshot(wd)
  changed = _changed(**{"data.root": "/data/b", "train.steps": 3})
  changed["study"]["extra"] = 1          # only in the new config
  del changed["data"]["split"]["val"]    # only in the stored one
  with pytest.raises(InputError) as err:
    workdir_lib.check_config(wd, changed)
  assert str(err.value) == (
      f"{wd}/config.json: holds a different config (keys differ: data.root, data.split.val, study.extra, "
      "train.steps); rerun with --fresh to start a new run in a subfolder")
  assert _snapshot(wd) == before
  assert sorted(p.name for p in wd.iterdir()) == ["config.json", "results.jsonl"]


def test_keys_added_later_at_their_defaults_resume_the_run(tmp_path):
  """A run started before a key existed resumes when the new config holds that key's default, and only then."""
  wd = _finished(tmp_path / "wd")
  before = _snapshot(wd)
  defaults = _changed(**{"train.steps": 1000})
  defaults["rounds"] = {"members": 4, "warm_start": False}
  newer = json.loads(json.dumps(CONFIG))
  newer["rounds"] = {"members": 4, "warm_start": False}
  assert workdir_lib.check_config(wd, newer, defaults=defaults) == wd
  assert _snapshot(wd) == before  # config.json as the run wrote it
  with pytest.raises(InputError, match=r"keys differ: rounds\.members\)"):
    workdir_lib.check_config(wd, newer, defaults=dict(defaults, rounds={"members": 2, "warm_start": False}))
  with pytest.raises(InputError, match=r"keys differ: rounds\.members, rounds\.warm_start\)"):
    workdir_lib.check_config(wd, newer)  # without the defaults nothing counts as added
  # A key the run's config holds is compared as ever, whatever its default.
  with pytest.raises(InputError, match=r"keys differ: train\.steps\)"):
    workdir_lib.check_config(wd, dict(newer, train=dict(CONFIG["train"], steps=1000)), defaults=defaults)


def test_many_differing_keys_are_named_up_to_eight(tmp_path):
  wd = tmp_path / "wd"
  base = {f"k{i:02d}": i for i in range(11)}
  _finished(wd, base)
  with pytest.raises(InputError) as err:
    workdir_lib.check_config(wd, {k: v + 1 for k, v in base.items()})
  assert "(keys differ: k00, k01, k02, k03, k04, k05, k06, k07 and 3 more);" in str(err.value)


@pytest.mark.parametrize("results", [None, "", "\n \n"])
@pytest.mark.parametrize("checkpoints", [None, []])
def test_run_that_trained_nothing_takes_the_different_config(tmp_path, caplog, results, checkpoints):
  # E.g. a launch that failed after writing config.json: no result row, no checkpoint; its rerun goes ahead there.
  wd = tmp_path / "wd"
  workdir_lib.check_config(wd, CONFIG)
  if results is not None:
    (wd / "results.jsonl").write_text(results)
  if checkpoints is not None:
    (wd / "checkpoints").mkdir()
  (wd / "groups.json").write_text("[]")
  corrected = _changed(**{"train.steps": 40})
  with caplog.at_level(logging.WARNING):
    assert workdir_lib.check_config(wd, corrected) == wd
  assert json.loads((wd / "config.json").read_text()) == corrected
  assert f"Replaced {wd}/config.json: it held a different config (keys differ: train.steps)" in caplog.text
  # Nothing else is touched, and the replaced config now resumes.
  assert (wd / "groups.json").read_text() == "[]"
  assert workdir_lib.check_config(wd, corrected) == wd
  assert not any(p.name.startswith(".") for p in wd.iterdir())


@pytest.mark.parametrize("trained", ["row", "checkpoint", "results_folder"])
def test_run_with_a_row_or_a_checkpoint_keeps_its_config(tmp_path, trained):
  wd = tmp_path / "wd"
  workdir_lib.check_config(wd, CONFIG)
  if trained == "row":
    (wd / "results.jsonl").write_text(ROW)
  elif trained == "checkpoint":
    (wd / "checkpoints" / "group_0" / "2").mkdir(parents=True)
  else:
    (wd / "results.jsonl").mkdir()
  before = _snapshot(wd)
  with pytest.raises(InputError, match=r"holds a different config \(keys differ: train\.steps\); rerun with --fresh"):
    workdir_lib.check_config(wd, _changed(**{"train.steps": 40}))
  assert _snapshot(wd) == before


def test_refused_launch_leaves_the_workdir_unchanged(tmp_path):
  wd = _finished(tmp_path / "wd")
  (wd / "checkpoints" / "group_0").mkdir(parents=True)
  (wd / "checkpoints" / "group_0" / "state").write_bytes(b"\x00\x01")
  before = _snapshot(wd)
  names = sorted(p.name for p in wd.rglob("*"))
  with pytest.raises(InputError, match="holds a different config"):
    with workdir_lib.WorkdirLock(wd):
      workdir_lib.check_config(wd, _changed(**{"seed": 1}))
  assert _snapshot(wd) == before
  assert sorted(p.name for p in wd.rglob("*")) == names


def test_differing_keys_flattens_nested_dicts():
  assert workdir_lib.differing_keys(CONFIG, CONFIG) == []
  assert workdir_lib.differing_keys({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 1, "c": [1, 3]}}) == ["a.c"]
  assert workdir_lib.differing_keys({"a": {"b": 1}}, {"a": 1}) == ["a", "a.b"]


def test_unreadable_config_is_refused(tmp_path):
  wd = tmp_path / "wd"
  wd.mkdir()
  (wd / "config.json").write_text("{torn")
  with pytest.raises(InputError, match=r"config\.json: cannot be read as a JSON config object; rerun with --fresh"):
    workdir_lib.check_config(wd, CONFIG)
  assert (wd / "config.json").read_text() == "{torn"


def test_fresh_runs_get_numbered_subfolders_and_resume_there(tmp_path):
  wd = _finished(tmp_path / "wd")
  second = _changed(**{"train.steps": 100})
  third = _changed(**{"train.steps": 200})
  assert workdir_lib.check_config(wd, second, fresh=True) == wd / "run_1"
  (wd / "run_1" / "results.jsonl").write_text(ROW)
  assert workdir_lib.check_config(wd, third, fresh=True) == wd / "run_2"
  (wd / "run_2" / "results.jsonl").write_text(ROW)
  assert json.loads((wd / "run_1" / "config.json").read_text()) == second
  assert json.loads((wd / "run_2" / "config.json").read_text()) == third
  assert json.loads((wd / "config.json").read_text()) == CONFIG
  # Rerunning a fresh launch resumes its subfolder instead of starting yet another.
  assert workdir_lib.check_config(wd, second, fresh=True) == wd / "run_1"
  # A folder without a config, or whose name only looks like a run, is skipped.
  (wd / "run_3").mkdir()
  (wd / "run_04").mkdir()
  assert workdir_lib.check_config(wd, _changed(**{"seed": 7}), fresh=True) == wd / "run_4"
  assert sorted(p.name for p in wd.iterdir()) == ["config.json", "results.jsonl", "run_04", "run_1", "run_2",
                                                  "run_3", "run_4"]


def test_fresh_run_takes_over_a_run_folder_that_trained_nothing(tmp_path):
  wd = _finished(tmp_path / "wd")
  failed = _changed(**{"train.steps": 100})
  assert workdir_lib.check_config(wd, failed, fresh=True) == wd / "run_1"
  corrected = _changed(**{"train.steps": 50})
  assert workdir_lib.check_config(wd, corrected, fresh=True) == wd / "run_1"
  assert json.loads((wd / "run_1" / "config.json").read_text()) == corrected
  # A run folder is a workdir of its own too.
  assert workdir_lib.check_config(wd / "run_1", failed) == wd / "run_1"
  assert sorted(p.name for p in wd.iterdir()) == ["config.json", "results.jsonl", "run_1"]


def test_fresh_run_of_an_untrained_workdir_stays_there(tmp_path):
  wd = tmp_path / "wd"
  workdir_lib.check_config(wd, CONFIG)
  assert workdir_lib.check_config(wd, _changed(**{"seed": 7}), fresh=True) == wd
  assert sorted(p.name for p in wd.iterdir()) == ["config.json"]
