"""3D convolutions on the backend: native against 2D convolutions over depth-stacked planes.

    python bench/conv3d.py --json

Times forward + backward (the gradient of the summed logits) of a 4-stage 3D U-Net on a batch of 2 x 48^3 with
`conv3d_as_2d` off and on; prints one record per implementation with the ratio to the native one.
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import common  # noqa: E402
from slicejax.model import unet  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--json", action="store_true")
  parser.add_argument("--features", type=int, default=8)
  parser.add_argument("--size", type=int, default=48)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  x = jnp.ones((args.batch,) + (args.size,) * 3 + (1,))
  native_s = None
  for as_2d in (False, True):
    model = unet.UNet(num_classes=3, dims=3, features=args.features, num_stages=4, conv3d_as_2d=as_2d)
    params = model.init(jax.random.key(0), x)
    grad = jax.jit(jax.grad(lambda p, model=model: jnp.sum(model.apply(p, x))))
    timing = common.time_calls(lambda grad=grad: jax.block_until_ready(grad(params)), repeats=args.repeats)
    native_s = native_s or timing["median_s"]
    common.emit({"benchmark": "conv3d", "impl": "2d_planes" if as_2d else "native", "features": args.features,
                 "shape": [args.batch] + [args.size] * 3, **timing, "speedup_vs_native": native_s / timing["median_s"],
                 **common.machine()}, args.json)


if __name__ == "__main__":
  main()
