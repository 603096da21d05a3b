"""Many `launch.py` runs for the price of one import: `run([Launch, ...])` -> [subprocess.CompletedProcess, ...].

One child process imports `launch` (jax, flax, slicejax: seconds of the 3 a rejected launch takes) and then forks once
per launch; each fork sets its own environment and argv, sends stdout and stderr to files and runs
`app.run(launch.main, flags_parser=launch._parse_flags)`, exactly what `python launch.py ARGS` runs, so its exit
status and output are those of that command. Nothing in the parent starts a JAX backend, so the forks start from an
unused JAX, as a fresh process does. Meant for launches that stop early (rejected input, `--check`); a launch that
trains is as well run in its own process.

    python tests/launch_forks.py < launches.json   # [{"argv": [...], "env": {...}}, ...] -> results as JSON
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
PARALLEL = min(3, os.cpu_count() or 1)  # forks at once; each is mostly one core reading files


@dataclasses.dataclass(frozen=True)
class Launch:
  """`python launch.py *argv` with `env` added to the environment (run in the repository's root)."""
  argv: tuple
  env: dict = dataclasses.field(default_factory=dict)


def run(launches, timeout: float = 600) -> list:
  """Runs `launches` (a list of `Launch`) and returns one CompletedProcess per launch, in order."""
  request = json.dumps([{"argv": [str(a) for a in l.argv], "env": {k: str(v) for k, v in l.env.items()}}
                        for l in launches])
  driver = subprocess.run([sys.executable, __file__], input=request, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"), check=False)
  if driver.returncode != 0:
    raise RuntimeError(f"tests/launch_forks.py failed ({driver.returncode}):\n{driver.stderr[-3000:]}")
  return [subprocess.CompletedProcess(["launch.py", *l.argv], r["returncode"], r["stdout"], r["stderr"])
          for l, r in zip(launches, json.loads(driver.stdout))]


def _child(argv, env, out: pathlib.Path, err: pathlib.Path):
  """In the fork: runs one launch with its output in `out` and `err`; never returns."""
  code = 1
  try:
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
      handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
      os.dup2(handle, fd)
      os.close(handle)
    sys.argv = ["launch.py", *argv]
    from absl import app  # pylint: disable=g-import-not-at-top
    import launch  # pylint: disable=g-import-not-at-top
    try:
      app.run(launch.main, flags_parser=launch._parse_flags)  # pylint: disable=protected-access
      code = 0
    except SystemExit as stop:  # as the interpreter ends on it: an int is the status, None 0, anything else printed
      if stop.code is None or isinstance(stop.code, int):
        code = stop.code or 0
      else:
        print(stop.code, file=sys.stderr)
  except BaseException:  # pylint: disable=broad-except
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exc()
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access


def _main():
  requests = json.load(sys.stdin)
  sys.path.insert(0, str(REPO))
  os.chdir(REPO)
  import launch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  results = [None] * len(requests)
  with tempfile.TemporaryDirectory(prefix="launch-forks-") as folder:
    running = {}  # pid -> index
    pending = list(enumerate(requests))
    while pending or running:
      while pending and len(running) < PARALLEL:
        index, request = pending.pop(0)
        out, err = (pathlib.Path(folder) / f"{index}.{name}" for name in ("out", "err"))
        pid = os.fork()
        if pid == 0:
          _child(request["argv"], request["env"], out, err)
        running[pid] = (index, out, err)
      pid, status = os.wait()
      index, out, err = running.pop(pid)
      results[index] = {"returncode": os.waitstatus_to_exitcode(status), "stdout": out.read_text(),
                        "stderr": err.read_text()}
  json.dump(results, sys.stdout)


if __name__ == "__main__":
  _main()
