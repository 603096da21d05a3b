"""The console: library log filtering, the group progress line, TensorBoard curves written, read back and drawn."""

import logging as std_logging
import os
import pathlib
import subprocess
import sys
import textwrap

from absl import logging
import numpy as np
import pytest

import slicejax
from slicejax import console

REPO = pathlib.Path(__file__).resolve().parent.parent
SLICEJAX_FILE = os.path.join(os.path.dirname(os.path.abspath(slicejax.__file__)), "train.py")
ORBAX_FILE = "/venv/lib/python3.11/site-packages/orbax/checkpoint/checkpoint_manager.py"


# ---------------------------------------------------------------------------------------------------------------------
# Logging.

@pytest.fixture
def absl_handler():
  handler = logging.get_absl_handler()
  yield handler
  for f in [f for f in handler.filters if isinstance(f, console.LibraryFilter)]:
    handler.removeFilter(f)


def record(level, pathname, name="absl"):
  return std_logging.LogRecord(name, level, pathname, 1, "message", (), None)


@pytest.mark.parametrize("verbosity, own_info, library_info", [(0, False, False), (1, True, False), (2, True, True)])
def test_info_records_only_with_verbosity(absl_handler, verbosity, own_info, library_info):
  console.setup_logging(verbosity)
  assert bool(absl_handler.filter(record(std_logging.INFO, ORBAX_FILE))) == library_info
  assert bool(absl_handler.filter(record(std_logging.INFO, ORBAX_FILE, name="jax._src.xla_bridge"))) == library_info
  assert bool(absl_handler.filter(record(std_logging.INFO, SLICEJAX_FILE))) == own_info
  assert absl_handler.filter(record(std_logging.WARNING, SLICEJAX_FILE))
  assert absl_handler.filter(record(std_logging.WARNING, ORBAX_FILE))
  assert absl_handler.filter(record(std_logging.ERROR, ORBAX_FILE))


def test_library_debug_needs_verbosity_3():
  assert not console.LibraryFilter(2, [SLICEJAX_FILE]).filter(record(std_logging.DEBUG, ORBAX_FILE))
  assert console.LibraryFilter(3, [SLICEJAX_FILE]).filter(record(std_logging.DEBUG, ORBAX_FILE))
  assert console.LibraryFilter(1, [SLICEJAX_FILE]).filter(record(std_logging.DEBUG, SLICEJAX_FILE))
  assert not console.LibraryFilter(0, [SLICEJAX_FILE]).filter(record(std_logging.DEBUG, SLICEJAX_FILE))


def test_setup_logging_twice_keeps_one_filter(absl_handler):
  console.setup_logging(1)
  console.setup_logging(0)
  filters = [f for f in absl_handler.filters if isinstance(f, console.LibraryFilter)]
  assert len(filters) == 1
  assert not absl_handler.filter(record(std_logging.INFO, ORBAX_FILE))


@pytest.mark.slow
def test_absl_program_console(tmp_path):
  """A real absl program: the filter works on absl's handler and reads --verbosity / -v."""
  (tmp_path / "fakelib.py").write_text(textwrap.dedent("""\
      import logging as std_logging

      from absl import logging

      def chatter():
        logging.info("absl library info")
        std_logging.getLogger("orbax.checkpoint").info("python library info")
        std_logging.getLogger("orbax.checkpoint").warning("python library warning")
  """))
  program = tmp_path / "program.py"
  program.write_text(textwrap.dedent("""\
      import sys

      from absl import app
      from absl import logging
      import numpy as np

      import fakelib
      from slicejax import console

      def main(argv):
        console.setup_logging(logging.get_verbosity())
        console.set_output(sys.stdout)  # as launch.py does
        fakelib.chatter()
        logging.info("program info")
        console.GroupProgress(0, 2, 4, clock=iter([0.0, 2.0]).__next__, tty=False).update(1, np.array([0.5, 1.0]))

      app.run(main)
  """))
  run = lambda *flags: subprocess.run([sys.executable, str(program), *flags], capture_output=True, text=True,
                                      cwd=REPO, timeout=120, check=True)
  quiet, own, loud = run(), run("-v", "1"), run("-v", "2")
  progress = "group 0: 2 models  step 1/4  loss median 0.75 worst 1  ETA -  first step 2.0s"
  for out in (quiet, own, loud):
    # The progress line is stdout's only line; warnings always reach stderr.
    assert out.stdout.splitlines() == [progress] and "python library warning" in out.stderr
  assert "program info" not in quiet.stderr and "program info" in own.stderr and "program info" in loud.stderr
  for line in ["absl library info", "python library info"]:
    assert line not in quiet.stderr and line not in own.stderr and line in loud.stderr


# ---------------------------------------------------------------------------------------------------------------------
# Progress.

class FakeTerminal:
  def __init__(self):
    self.text = ""

  def write(self, text):
    self.text += text

  def flush(self):
    pass

  def isatty(self):
    return True


LINE_1 = "group 3: 3 models  step 1/101  loss median 0.6 worst 0.7 (1 diverged)  ETA -  first step 12s"
LINE_51 = ("group 3: 3 models  step 51/101  loss median 0.5 worst 0.6 (1 diverged)  ETA 45s incl. 40s eval  "
           "0.1 s/step, first step 12s")


def test_progress_line_in_place(monkeypatch):
  monkeypatch.setenv("COLUMNS", "200")
  terminal = FakeTerminal()
  progress = console.GroupProgress(3, 3, 101, eval_seconds=40.0, clock=iter([100.0, 112.0, 117.0]).__next__,
                                   stream=terminal)
  assert progress.update(1, np.array([0.5, 0.7, np.nan])) == LINE_1
  # The third model diverged earlier; its loss looks finite again but it is frozen.
  assert progress.update(51, np.array([0.4, 0.6, 0.2]), diverged=np.array([False, False, True])) == LINE_51
  progress.finish()
  # Each redraw returns to the start of the line; the last one is kept with a newline.
  assert terminal.text == "\r" + LINE_1 + "\r" + LINE_51 + "\r" + LINE_51 + "\n"


def test_progress_line_cut_to_terminal_and_cleared_by_log_records(monkeypatch):
  monkeypatch.setenv("COLUMNS", "30")
  terminal = FakeTerminal()
  progress = console.GroupProgress(0, 2, 10, first_step=4, clock=iter([0.0, 30.0, 33.0]).__next__, stream=terminal)
  long = progress.update(6, np.array([np.inf, np.nan]))
  assert long == "group 0: 2 models  step 6/10  loss - (2 diverged)  ETA -  first 2 steps 30s"
  assert terminal.text == "\r" + long[:29]
  # A record that passes the filter wipes the line before it is printed.
  assert console.LibraryFilter(0, [SLICEJAX_FILE]).filter(record(std_logging.WARNING, SLICEJAX_FILE))
  assert terminal.text == "\r" + long[:29] + "\r" + " " * 29 + "\r"
  short = progress.update(10, np.array([1.5, 2.5]))
  assert short == ("group 0: 2 models  step 10/10  loss median 2 worst 2.5  ETA 0.0s + eval  0.75 s/step, "
                   "first 2 steps 30s")


def test_progress_prints_a_line_per_update_off_a_terminal():
  stream = FakeTerminal()
  progress = console.GroupProgress(1, 1, 3000, clock=iter([0.0, 5.0, 8.0]).__next__, stream=stream, tty=False)
  progress.update(1, np.array([0.25]))
  progress.update(2, np.array([0.125]))
  progress.finish()
  assert stream.text.splitlines() == [
      "group 1: 1 model  step 1/3000  loss median 0.25 worst 0.25  ETA -  first step 5.0s",
      "group 1: 1 model  step 2/3000  loss median 0.125 worst 0.125  ETA 2h29m + eval  3 s/step, first step 5.0s"]


@pytest.mark.parametrize("seconds, text", [(3.26, "3.3s"), (9.96, "10s"), (59.6, "1m00s"), (65, "1m05s"),
                                           (3725, "1h02m")])
def test_duration(seconds, text):
  assert console.duration(seconds) == text


# ---------------------------------------------------------------------------------------------------------------------
# Curves.

def test_curve_scalars_tags():
  assert console.curve_scalars(2, ["a_seed0", "b_seed0"], np.array([0.5, 0.25]), lr=0.01) == {
      "loss/group_2/a_seed0": 0.5, "loss/group_2/b_seed0": 0.25, "lr/group_2": 0.01}
  frozen = console.curve_scalars(0, ["a", "b"], np.array([0.5, 0.25]), diverged=np.array([False, True]))
  assert frozen["loss/group_0/a"] == 0.5 and np.isnan(frozen["loss/group_0/b"])


def test_curves_written_and_read_back(tmp_path):
  with console.CurveWriter(tmp_path) as writer:
    for step, (a, b) in [(10, (1.5, 2.0)), (20, (0.75, np.nan)), (30, (0.5, np.nan))]:
      writer.write_scalars(step, console.curve_scalars(0, ["a", "b"], np.array([a, b]), lr=1e-3))
  curves = console.read_curves(tmp_path)
  assert sorted(curves) == ["loss/group_0/a", "loss/group_0/b", "lr/group_0"]
  steps, values = curves["loss/group_0/a"]
  np.testing.assert_array_equal(steps, [10, 20, 30])
  np.testing.assert_array_equal(values, [1.5, 0.75, 0.5])
  np.testing.assert_array_equal(curves["loss/group_0/b"][1], [2.0, np.nan, np.nan])
  # Stored as float32.
  np.testing.assert_array_equal(curves["lr/group_0"][1], [np.float32(1e-3)] * 3)


def test_resumed_writer_overrides_a_step_written_twice(tmp_path):
  with console.CurveWriter(tmp_path) as first:
    for step in (1, 2, 3):
      first.write_scalars(step, {"loss/group_0/a": step})
  with console.CurveWriter(tmp_path) as resumed:  # Resumed from a checkpoint at step 2.
    for step in (3, 4):
      resumed.write_scalars(step, {"loss/group_0/a": 10 * step})
  assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
  steps, values = console.read_curves(tmp_path)["loss/group_0/a"]
  np.testing.assert_array_equal(steps, [1, 2, 3, 4])
  np.testing.assert_array_equal(values, [1, 2, 30, 40])


def test_file_cut_short_reads_its_complete_events(tmp_path):
  with console.CurveWriter(tmp_path) as writer:
    for step in (1, 2, 3):
      writer.write_scalars(step, {"loss/group_0/a": step / 4})
  (path,) = tmp_path.glob("events.out.tfevents.*")
  path.write_bytes(path.read_bytes()[:-3])
  steps, values = console.read_curves(tmp_path)["loss/group_0/a"]
  np.testing.assert_array_equal(steps, [1, 2])
  np.testing.assert_array_equal(values, [0.25, 0.5])


def test_plot_curves_png(tmp_path):
  logdir = tmp_path / "curves"
  with console.CurveWriter(logdir) as writer:
    for step in range(1, 21):
      writer.write_scalars(step, console.curve_scalars(0, ["a", "b"], np.array([1 / step, 2 / step])))
      # A model that diverges at step 12.
      writer.write_scalars(step, console.curve_scalars(1, ["c"], np.array([np.nan if step > 11 else 1 / step])))
  console.plot_curves(logdir, tmp_path / "curves.png")
  png = (tmp_path / "curves.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  assert len(png) > 20_000
  # Nothing else left beside it (the temporary file of the atomic write is gone).
  assert sorted(p.name for p in tmp_path.iterdir()) == ["curves", "curves.png"]


def test_plot_curves_without_curves(tmp_path):
  console.plot_curves(tmp_path, tmp_path / "curves.png")
  assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_imports_without_tensorflow(tmp_path):
  script = textwrap.dedent(f"""\
      import importlib.abc
      import sys

      attempts = []

      class Recorder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
          if name.partition(".")[0] == "tensorflow":
            attempts.append(name)
          return None

      sys.meta_path.insert(0, Recorder())
      from slicejax import console
      assert not attempts, attempts
      with console.CurveWriter({str(tmp_path)!r}) as writer:
        writer.write_scalars(1, {{"loss/group_0/a": 0.5}})
      assert console.read_curves({str(tmp_path)!r})["loss/group_0/a"][1].tolist() == [0.5]
      assert "tensorflow" not in sys.modules
  """)
  subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=120, check=True)


def test_progress_is_due_every_heartbeat_and_shows_phases():
  times = iter([0.0, 10.0, 31.0, 31.0, 40.0, 62.0, 70.0, 93.0])
  progress = console.GroupProgress(2, 1, 100, clock=times.__next__, tty=False)
  assert not progress.due()  # 10 s after the start
  assert progress.due()  # 31 s
  progress.update(5, np.array([0.5]))  # a line at 31 s
  assert not progress.due()  # 40 s
  assert progress.phase("validation curve at step 50 (8 volumes)") == (
      "group 2: validation curve at step 50 (8 volumes)")  # at 62 s: the phase is a line too
  assert not progress.due()  # 70 s: 8 s after the phase line
  assert progress.due()  # 93 s
