"""What a run shows while it trains: lines for people on stdout, a quiet log on stderr, loss curves in the workdir.

Lines for people. `say` prints a line (where a run is, what it found, what it wrote) to stdout in launch.py
(`set_output`; stderr inside other programs, whose stdout may carry data), and `GroupProgress`
draws one line per group: models, step, median and worst loss of the models still training, seconds per step and an
ETA, and the phase a group is in (a validation curve, its evaluation). On a terminal the progress line is redrawn in
place; elsewhere (a file, CI) each update is a line of its own.

Logging. `setup_logging(verbosity)` puts a filter on absl's handler (the one `app.run` installs on the root logger)
so that stderr carries warnings and errors only, slicejax's own and the libraries' (orbax, jax, ...). absl's
`--verbosity` (`-v`) brings the rest back: 1 slicejax's own INFO records (what was indexed, cached, compiled), 2 the
libraries' INFO too, 3 and more their DEBUG. A record's origin is the file that logged it (`record.pathname`): orbax
logs through `absl.logging`, so every such record has the logger name "absl" whoever wrote it, while absl's logger
does record the calling file. Own files are the modules of the slicejax package and the program that was run
(`__main__`, e.g. launch.py). A record that passes clears a progress line drawn in place first, so that the two
never share a line.

Curves. `CurveWriter` writes scalars as TensorBoard event files with tensorboard's own TensorFlow-free writer, so
`tensorboard --logdir WORKDIR` shows them; `read_curves` reads them back and `plot_curves` draws them. Tags follow
`<metric>/<panel>/<series>`, built by `curve_scalars`: `loss/group_<g>/<point name>` per model and `lr/group_<g>` per
group. `plot_curves` draws the `loss/` tags, one panel per group and one line per model.
"""

import glob
import io
import logging as std_logging
import math
import os
import re
import shutil
import sys
import threading
import time
from typing import Callable, Mapping, Optional, Sequence

from absl import logging
from matplotlib import figure as mpl_figure
from matplotlib import ticker
from matplotlib.backends import backend_agg
import numpy as np
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer import event_file_writer

from slicejax import files

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_PNG_DPI = 110


# ---------------------------------------------------------------------------------------------------------------------
# Logging.

class LibraryFilter(std_logging.Filter):
  """Passes WARNING and above, and lower records by absl's verbosity: own files' from 1, libraries' INFO from 2 and
  everything from 3.

  Args:
    verbosity: absl's `--verbosity`.
    own_files: paths of own modules; a path ending in the path separator stands for every file under that folder.
  """

  def __init__(self, verbosity: int, own_files: Sequence[str]):
    super().__init__()
    self._own_threshold = std_logging.WARNING if verbosity <= 0 else std_logging.NOTSET
    self._threshold = (std_logging.WARNING if verbosity <= 1 else std_logging.INFO if verbosity == 2
                       else std_logging.NOTSET)
    self._own_files = tuple(os.path.normcase(os.path.realpath(f)) + (os.sep if f.endswith(os.sep) else "")
                            for f in own_files)
    self._own_cache = {}

  def _own(self, pathname: str) -> bool:
    own = self._own_cache.get(pathname)
    if own is None:
      path = os.path.normcase(os.path.realpath(pathname))
      own = any(path.startswith(f) if f.endswith(os.sep) else path == f for f in self._own_files)
      self._own_cache[pathname] = own
    return own

  def filter(self, record) -> bool:
    keep = record.levelno >= (self._own_threshold if self._own(record.pathname) else self._threshold)
    if keep:
      _LIVE.clear()
    return keep


def setup_logging(verbosity: int) -> None:
  """Keeps INFO records off the console unless `verbosity` (absl's `--verbosity`) asks for them (`LibraryFilter`).

  Call at the start of an absl program's main(); calling it again replaces the earlier filter.
  """
  own = [_PACKAGE_DIR + os.sep]
  main_file = getattr(sys.modules.get("__main__"), "__file__", None)
  if main_file:
    own.append(main_file)
  handler = logging.get_absl_handler()
  for old in [f for f in handler.filters if isinstance(f, LibraryFilter)]:
    handler.removeFilter(old)
  handler.addFilter(LibraryFilter(verbosity, own))


# ---------------------------------------------------------------------------------------------------------------------
# Progress.

# Where lines for people go: a program for people (launch.py) sends them to stdout with `set_output`; inside other
# programs (benchmarks that print JSON on stdout, workers) they stay on stderr.
_OUTPUT = None


def set_output(stream) -> None:
  """Sends `say` lines and progress lines to `stream` (e.g. sys.stdout); None: sys.stderr."""
  global _OUTPUT
  _OUTPUT = stream


def output():
  return sys.stderr if _OUTPUT is None else _OUTPUT


def say(text: str, stream=None) -> None:
  """Prints a line for people to the output stream (`set_output`) or `stream`, below any progress line drawn in
  place."""
  _LIVE.keep()
  print(text, file=output() if stream is None else stream, flush=True)


def _columns(stream) -> int:
  try:
    return os.get_terminal_size(stream.fileno()).columns
  except (AttributeError, OSError, ValueError):
    return shutil.get_terminal_size().columns


class _LiveLine:
  """The one line redrawn in place on a terminal. Log records may arrive from other threads (orbax), hence the lock."""

  def __init__(self):
    self._lock = threading.Lock()
    self._stream = None
    self._width = 0

  def draw(self, stream, text: str) -> None:
    with self._lock:
      # A line longer than the terminal wraps, and '\r' then returns to its last row only.
      text = text[:max(_columns(stream) - 1, 1)]
      stream.write("\r" + text + " " * (self._width - len(text) if stream is self._stream else 0))
      stream.flush()
      self._stream, self._width = stream, len(text)

  def clear(self) -> None:
    with self._lock:
      if self._stream is not None:
        self._stream.write("\r" + " " * self._width + "\r")
        self._stream.flush()
      self._stream, self._width = None, 0

  def keep(self) -> None:
    """Ends the line where it is, so the next output starts below it."""
    with self._lock:
      if self._stream is not None:
        self._stream.write("\n")
        self._stream.flush()
      self._stream, self._width = None, 0


_LIVE = _LiveLine()


def duration(seconds: float) -> str:
  """A time span for people: 4.2s, 37s, 2m05s, 13h54m."""
  if seconds < 9.95:
    return f"{seconds:.1f}s"
  whole = round(seconds)
  if whole < 60:
    return f"{whole}s"
  if whole < 3600:
    return f"{whole // 60}m{whole % 60:02d}s"
  return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


# The longest a group's progress goes without a line, in seconds of wall time.
HEARTBEAT_SECONDS = 30.0


class GroupProgress:
  """The progress line of one group's training loop.

  Call `update` after the group's first step (it blocks on that step's loss, so its time is compilation plus one
  step, kept apart from the steady seconds per step), at every log step and whenever `due` (at least every
  `HEARTBEAT_SECONDS` of wall time, so a slow run never goes quiet between log steps), `phase` when the group moves
  to a validation curve or its evaluation, then `finish` (or use it as a context manager). A line, e.g. `group 0: 8
  models  step 120/200  loss median 0.4321 worst 1.234 (1 diverged)  ETA 1m50s
  incl. 40s eval  0.125 s/step, first step 12.3s`, puts the ETA before the rates because a narrow terminal cuts
  the end. The ETA is the remaining steps at the steady rate plus `eval_seconds` ("+ eval" when that is unknown).

  Args:
    group_index: the group's index, shown first.
    num_models: M, the models of the group.
    steps: the step the loop ends at.
    first_step: the step the loop starts from (a restored checkpoint's step, else 0).
    eval_seconds: estimated seconds of the group's evaluation after training (e.g. the previous group's seconds
      per model times M), or None if unknown.
    clock: seconds as a float, monotonic; the clock is read at construction, so build this right before the loop.
    stream: where the lines go; the output stream (`set_output`) if None.
    tty: whether to redraw one line in place; if None, whether `stream` is a terminal. If not, each update is a
      line of its own.
  """

  def __init__(self, group_index: int, num_models: int, steps: int, first_step: int = 0, *,
               eval_seconds: Optional[float] = None, clock: Callable[[], float] = time.perf_counter,
               stream=None, tty: Optional[bool] = None):
    self._group_index, self._num_models, self._steps = group_index, num_models, steps
    self._first_step, self._eval_seconds, self._clock = first_step, eval_seconds, clock
    self._stream = output() if stream is None else stream
    self._tty = self._stream.isatty() if tty is None else tty
    self._start = clock()
    self._first = None  # (step, seconds, clock) at the first update.
    self._text = None
    self._last = self._start  # clock of the last line shown

  def due(self) -> bool:
    """Whether `HEARTBEAT_SECONDS` have passed since the last line (reads the clock)."""
    return self._clock() - self._last >= HEARTBEAT_SECONDS

  def phase(self, text: str) -> str:
    """Shows what the group does now besides training, e.g. "validation curve at step 500 (8 volumes)"."""
    self._last = self._clock()
    line = f"group {self._group_index}: {text}"
    self._show(line)
    return line

  def update(self, step: int, losses: np.ndarray, diverged: Optional[np.ndarray] = None) -> str:
    """Shows the group at `step` and returns the line.

    Args:
      step: the step just done.
      losses: [M] each model's loss at `step`; a non-finite one marks its model diverged.
      diverged: optional [M] bool, models frozen after diverging (their loss may look finite again).
    """
    now = self._last = self._clock()
    if self._first is None:
      self._first = (step, now - self._start, now)
    self._text = self._line(step, np.asarray(losses, np.float64), diverged, now)
    self._show(self._text)
    return self._text

  def _show(self, line: str) -> None:
    if self._tty:
      _LIVE.draw(self._stream, line)
    else:
      print(line, file=self._stream, flush=True)

  def finish(self) -> None:
    """Leaves the last line on the terminal (a log record may have cleared it) and moves below it."""
    if self._tty and self._text is not None:
      _LIVE.draw(self._stream, self._text)
      _LIVE.keep()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.finish()

  def _line(self, step: int, losses: np.ndarray, diverged, now: float) -> str:
    models = f"{self._num_models} model{'s' if self._num_models != 1 else ''}"
    training = np.isfinite(losses)
    if diverged is not None:
      training &= ~np.asarray(diverged, bool)
    if training.any():
      loss = f"loss median {np.median(losses[training]):.4g} worst {losses[training].max():.4g}"
    else:
      loss = "loss -"
    if not training.all():
      loss += f" ({int((~training).sum())} diverged)"
    first_step, first_seconds, first_clock = self._first
    first_steps = first_step - self._first_step
    rate = f"first {'step' if first_steps == 1 else f'{first_steps} steps'} {duration(first_seconds)}"
    per_step = (now - first_clock) / (step - first_step) if step > first_step else None
    if per_step is not None:
      rate = f"{per_step:.3g} s/step, {rate}"
    remaining = 0.0 if step >= self._steps else None if per_step is None else per_step * (self._steps - step)
    if remaining is None:
      eta = "ETA -"
    elif self._eval_seconds is None:
      eta = f"ETA {duration(remaining)} + eval"
    else:
      eta = f"ETA {duration(remaining + self._eval_seconds)} incl. {duration(self._eval_seconds)} eval"
    return "  ".join([f"group {self._group_index}: {models}", f"step {step}/{self._steps}", loss, eta, rate])


def count(n: int, noun: str) -> str:
  """ "1 volume", "3 volumes"."""
  return f"{n} {noun}{'' if n == 1 else 's'}"


def phase_line(group_index: int, text: str) -> None:
  """Says what a group does after its training loop, e.g. its test evaluation."""
  say(f"group {group_index}: {text}")


# ---------------------------------------------------------------------------------------------------------------------
# Curves.

def curve_scalars(group_index: int, names: Sequence[str], losses: np.ndarray, lr: Optional[float] = None,
                  diverged: Optional[np.ndarray] = None) -> dict:
  """The scalars of one log step of a group, tagged for `CurveWriter` and `plot_curves`.

  Args:
    group_index: the group, the panel of `plot_curves`.
    names: [M] the models' names (sweep point names); must not contain "/".
    losses: [M] the models' losses.
    lr: the group's learning rate at this step, if wanted.
    diverged: optional [M] bool, models frozen after diverging: their loss is written as NaN, so that their curve
      ends where they diverged rather than going on flat at the frozen parameters' loss.

  Returns:
    {"loss/group_<g>/<name>": loss, ...} and "lr/group_<g>": lr if given.
  """
  losses = np.asarray(losses, np.float64)
  if diverged is not None:
    losses = np.where(np.asarray(diverged, bool), np.nan, losses)
  scalars = {f"loss/group_{group_index}/{name}": float(loss) for name, loss in zip(names, losses)}
  if lr is not None:
    scalars[f"lr/group_{group_index}"] = float(lr)
  return scalars


class CurveWriter:
  """Appends scalars to a new TensorBoard event file in `logdir` (values are stored as float32).

  Each writer starts its own file, so a resumed run adds one; `read_curves` lets the later file win for a step
  written twice. Events are written by a background thread and reach the disk at `flush`, `close`, or every
  `flush_seconds`.
  """

  def __init__(self, logdir, flush_seconds: float = 30.0):
    self.logdir = os.fspath(logdir)
    self._writer = event_file_writer.EventFileWriter(self.logdir, flush_secs=flush_seconds)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Writes {tag: value} at `step` as one event."""
    values = [summary_pb2.Summary.Value(tag=tag, simple_value=float(value)) for tag, value in scalars.items()]
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary_pb2.Summary(value=values)))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()


def read_curves(logdir) -> dict:
  """Reads back the scalars of every event file in `logdir` (not its subfolders).

  Files are merged oldest first (by their first event's time), so for a step written twice the later file's value
  is kept. A file cut short by a crash yields its complete events.

  Returns:
    {tag: (steps [n] int64 ascending, values [n] float64)}.
  """
  loaded = []
  for path in glob.glob(os.path.join(os.fspath(logdir), "events.out.tfevents.*")):
    events = [event_pb2.Event.FromString(raw) for raw in event_file_loader.RawEventFileLoader(path).Load()]
    if events:
      loaded.append((events[0].wall_time, os.path.basename(path), events))
  by_tag = {}
  for _, _, events in sorted(loaded, key=lambda item: item[:2]):
    for event in events:
      for value in event.summary.value:
        if value.WhichOneof("value") == "simple_value":
          by_tag.setdefault(value.tag, {})[event.step] = value.simple_value
  curves = {}
  for tag, points in by_tag.items():
    steps = np.array(sorted(points), np.int64)
    curves[tag] = (steps, np.array([points[s] for s in steps], np.float64))
  return curves


def plot_curves(logdir, path) -> None:
  """Draws the `loss/<panel>/<series>` curves of `logdir` into the PNG `path`, written atomically.

  One panel per group, one thin line per model, log-scaled loss against step; a model whose curve ends in a
  non-finite loss gets an x at its last finite point.
  """
  panels = {}
  for tag, curve in read_curves(logdir).items():
    metric, _, rest = tag.partition("/")
    panel, _, series = rest.rpartition("/")
    if metric == "loss" and series:
      panels.setdefault(panel, []).append((series, curve))
  columns = min(len(panels), 3) or 1
  rows = math.ceil(len(panels) / columns) or 1
  fig = mpl_figure.Figure(figsize=(5 * columns, 3.6 * rows + 0.4), layout="constrained")
  backend_agg.FigureCanvasAgg(fig)
  if not panels:
    fig.text(0.5, 0.5, "no loss curves yet", ha="center", va="center")
  else:
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    diverged = False
    for ax, (panel, curves) in zip(axes, sorted(panels.items(), key=lambda item: _natural_key(item[0]))):
      for series, (steps, values) in sorted(curves, key=lambda item: _natural_key(item[0])):
        line, = ax.plot(steps, values, linewidth=0.8, label=series)
        finite = np.flatnonzero(np.isfinite(values))
        if finite.size and finite[-1] < values.size - 1:
          ax.plot(steps[finite[-1]], values[finite[-1]], "x", color=line.get_color())
          diverged = True
      finite = np.concatenate([np.asarray(values)[np.isfinite(values)] for _, (_, values) in curves] or [[]])
      finite = finite[finite > 0]
      if finite.size and finite.max() > 3 * finite.min():
        ax.set_yscale("log", nonpositive="mask")
        # Plain numbers (0.2, 0.5, 1) rather than powers of ten: losses span a decade or two.
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(_minor_label))
      # else a linear axis: within a factor of 3 a log axis may hold no labelled tick at all
      ax.set_title(f"{panel.replace('_', ' ')} ({len(curves)} models)")
      ax.set_xlabel("step")
      ax.set_ylabel("loss")
      ax.grid(True, which="major", alpha=0.3)
      if len(curves) <= 10:
        ax.legend(fontsize="x-small")
    for ax in axes[len(panels):]:
      ax.set_visible(False)
    fig.suptitle("Training loss per model" + (" (x: the last finite loss of a diverged model)" if diverged else ""))
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=_PNG_DPI)
  files.atomic_write(path, buffer.getvalue())


def _minor_label(value: float, _) -> str:
  """Labels the minor ticks 2 and 5 of each decade of a log axis."""
  mantissa = round(value / 10 ** math.floor(math.log10(value)), 6) if value > 0 else 0
  return f"{value:g}" if mantissa in (2, 5) else ""


def _natural_key(text: str) -> list:
  """Sorts "group_10" after "group_9"."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]
