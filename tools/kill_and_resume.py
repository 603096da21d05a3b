"""Fault check: SIGKILL a launch at random moments, rerun it each time, compare with an uninterrupted run.

    python tools/kill_and_resume.py --config=configs/demo.py --kills=3 --workdir=/tmp/faults

Runs the config once uninterrupted (WORKDIR/clean), then in WORKDIR/killed starts the same command, kills it with
SIGKILL after a random delay, `--kills` times, and lets the last rerun finish. Each delay is drawn below the time
the clean run still had left after the earlier kills, so that each attempt is killed before it can finish (an
attempt that finishes anyway is reported with `"killed": false`). The two results.jsonl files must hold
the same rows in the same order with the same values; fields that measure time (`*_seconds`) and placement are left
out of the comparison (`results.comparable`), as timings differ between any two runs. Prints one JSON line and exits
1 on a mismatch.
"""

import argparse
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from slicejax.report import results  # pylint: disable=g-import-not-at-top,wrong-import-position


def launch(config, workdir, extra):
  # Every launch compiles afresh (its own empty compilation cache): a rerun that found the clean run's programs in
  # the persistent cache would finish before the kill delays, which are drawn from the clean run's duration.
  cache = pathlib.Path(tempfile.mkdtemp(prefix="jax_cache_", dir=pathlib.Path(workdir).parent))
  return subprocess.Popen([sys.executable, str(REPO / "launch.py"), f"--config={config}", f"--workdir={workdir}",
                           *extra], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env={**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache)})


def rows(path):
  return [results.comparable(row) for row in results.read_rows(path)]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--kills", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--override", action="append", default=[], help="extra --config.key=value flags")
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  rng = random.Random(args.seed)

  start = time.perf_counter()
  clean = launch(args.config, workdir / "clean", args.override)
  if clean.wait() != 0:
    sys.exit(f"the uninterrupted run failed (exit {clean.returncode})")
  duration = time.perf_counter() - start

  kills, lived = [], 0.0
  for _ in range(args.kills):
    process = launch(args.config, workdir / "killed", args.override)
    # A killed run did at most `lived` seconds of the clean run's work, so at least `duration - lived` is left: a
    # delay drawn below that (with a margin for caches the killed runs fill) kills before the run finishes.
    delay = rng.uniform(0.05, 0.8) * max(duration - lived, 0.05 * duration)
    try:
      process.wait(timeout=delay)
      kills.append({"delay_s": round(delay, 1), "killed": False})
    except subprocess.TimeoutExpired:
      os.kill(process.pid, signal.SIGKILL)
      process.wait()
      lived += delay
      kills.append({"delay_s": round(delay, 1), "killed": True})
  final = launch(args.config, workdir / "killed", args.override)
  if final.wait() != 0:
    sys.exit(f"the final rerun failed (exit {final.returncode})")

  clean_rows, resumed_rows = rows(workdir / "clean" / "results.jsonl"), rows(workdir / "killed" / "results.jsonl")
  same = clean_rows == resumed_rows
  print(json.dumps({"check": "kill_and_resume", "config": args.config, "kills": kills, "rows": len(clean_rows),
                    "resumed_rows": len(resumed_rows), "identical": same, "clean_run_s": round(duration, 1)}))
  sys.exit(0 if same else 1)


if __name__ == "__main__":
  main()
