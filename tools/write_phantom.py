"""Writes the demo's phantom (`slicejax.data.phantom`) into a folder: `OUT/dataset.json`, `OUT/imagesTr/`, `OUT/labelsTr/`.

    python tools/write_phantom.py --out=runs/annotate/phantom

The same 60 cases as `configs/demo.py` (40 x 40 x 20-24 voxels, classes background, core, rim), for trying the
annotation workflow of docs/annotate.md on files you can open. Seconds.
"""

import sys

from absl import app
from absl import flags

from slicejax.data import phantom
from slicejax.errors import InputError

_OUT = flags.DEFINE_string("out", None, "Folder to write (must be empty or absent).")
_NUM_CASES = flags.DEFINE_integer("num_cases", 60, "Number of cases.")
_SEED = flags.DEFINE_integer("seed", 0, "Phantom seed.")
flags.mark_flags_as_required(["out"])


def main(argv):
  del argv
  try:
    phantom.write_phantom(_OUT.value, num_cases=_NUM_CASES.value, shape=(40, 40, 24), num_channels=1,
                          seed=_SEED.value)
  except InputError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
