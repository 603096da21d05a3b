"""`--check`'s estimate against the measured wall time of the same launch.

Workload: for each tiny config below, `launch.py CONFIG --check` (its "estimate: about ..." line), then the same
launch into a fresh workdir with a fresh cache (`SLICEJAX_CACHE`), timed from process start to exit. The datasets
are generated: the demo's phantom (`configs/demo.py:tiny`), a two-channel phantom in the MSD layout
(`configs/prostate.py:tiny`), and the same phantom read through the fingerprint (`configs/msd.py:tiny`); with
`--data` (an MSD Task04 folder) also `configs/hippocampus.py:tiny` on real volumes.

Usage (about 3 minutes on 2 CPU cores; one JSON line per config with --json):
  .venv/bin/python bench/estimate.py [--data=PATH/Task04_Hippocampus] [--json]
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from slicejax.data import phantom

_DATA = flags.DEFINE_string("data", None, "MSD Task04 hippocampus folder, for configs/hippocampus.py:tiny.")
_JSON = flags.DEFINE_bool("json", False, "Print JSON lines.")

REPO = pathlib.Path(__file__).resolve().parent.parent
_UNITS = {"h": 3600, "m": 60, "s": 1}


def seconds(text: str) -> float:
  """`console.duration`'s text back to seconds: "4.2s", "37s", "2m05s", "13h54m"."""
  return sum(float(n) * _UNITS[u] for n, u in re.findall(r"([\d.]+)([hms])", text))


def _launch(args, cache) -> tuple:
  env = dict(os.environ, SLICEJAX_CACHE=str(cache), JAX_PLATFORMS="cpu")
  start = time.perf_counter()
  out = subprocess.run([sys.executable, "launch.py", *args], cwd=REPO, capture_output=True, text=True, env=env)
  return time.perf_counter() - start, out


def main(argv):
  del argv
  scratch = pathlib.Path(tempfile.mkdtemp(prefix="slicejax_estimate_"))
  two = phantom.write_phantom(scratch / "two_channel", num_cases=10, shape=(16, 16, 8), num_channels=2)
  runs = {"demo.py:tiny": [], "prostate.py:tiny": [f"--config.data.root={two}"],
          "msd.py:tiny": [f"--config.data.root={two}"]}
  if _DATA.value:
    runs["hippocampus.py:tiny"] = [f"--config.data.root={_DATA.value}"]
  for index, (name, extra) in enumerate(runs.items()):
    config = [f"--config=configs/{name}", *extra]
    _, check = _launch([*config, "--check"], scratch / f"check_cache_{index}")
    match = re.search(r"estimate: about (\S+)", check.stdout)
    wall, run = _launch([*config, f"--workdir={scratch / f'run_{index}'}"], scratch / f"cache_{index}")
    record = {"benchmark": "estimate", "config": name, "estimate_s": seconds(match.group(1)) if match else None,
              "wall_s": round(wall, 1), "rc": run.returncode}
    if record["estimate_s"]:
      record["estimate_over_wall"] = round(record["estimate_s"] / wall, 2)
    print(json.dumps(record) if _JSON.value else " ".join(f"{k}={v}" for k, v in record.items()), flush=True)


if __name__ == "__main__":
  app.run(main)
