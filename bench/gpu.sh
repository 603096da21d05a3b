#!/usr/bin/env bash
# Every benchmark of bench/ on one GPU machine, within 8 minutes in all.
#
#   bash bench/gpu.sh                          # on the GPU machine; PYTHON=... picks the interpreter (python3)
#   PYTHON=.venv/bin/python bash bench/gpu.sh --quick   # every step at tiny sizes, on any machine
#
# Writes one JSON line per measurement to $OUT/bench_gpu.jsonl ($OUT if set, else .), each step's stderr to
# bench_gpu.log beside it, and after every step a line {"benchmark": "gpu_sh_step", "step", "rc", "seconds",
# "limit_s"} (rc 124: the step ran out of time; what it printed until then is kept). Steps run in order of
# importance, each under `timeout` with its own limit times BENCH_LIMIT_SCALE (default 1; 4 with --quick, for slow
# CPUs), cut further so that the whole script ends within BENCH_BUDGET_S seconds (default 470, i.e. 8 minutes less
# a margin; 1800 with --quick); a step with under 15 s left is skipped with a "skipped" line.
#
# Setup: what the benchmarks import is checked first. Missing packages are installed with pip: from a wheel folder
# $WHEELS (default ./wheels, if it exists) without an index, else `pip install -e '.[cuda,bench]'` when JAX or
# PyTorch is missing, else by name. A machine without network needs the wheel folder (see bench/README.md). The
# "gpu_sh_setup" line records the backend JAX found.
set -uo pipefail
cd "$(dirname "$0")/.."

QUICK=""
[[ "${1:-}" == "--quick" ]] && QUICK="--quick"
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-.}"
mkdir -p "$OUT_DIR"
JSONL="$OUT_DIR/bench_gpu.jsonl"
LOG="$OUT_DIR/bench_gpu.log"
if [[ -n "$QUICK" ]]; then
  BUDGET_S="${BENCH_BUDGET_S:-1800}"
  SCALE="${BENCH_LIMIT_SCALE:-4}"
else
  BUDGET_S="${BENCH_BUDGET_S:-470}"
  SCALE="${BENCH_LIMIT_SCALE:-1}"
fi
WHEELS="${WHEELS:-wheels}"
START=$(date +%s)
DEADLINE=$((START + BUDGET_S))
: > "$JSONL"
: > "$LOG"

# step NAME LIMIT_S COMMAND...: runs COMMAND under timeout, appending its stdout to the JSON lines (to the log for
# the setup step).
step() {
  local name=$1 limit=$(($2 * SCALE))
  shift 2
  local left=$((DEADLINE - $(date +%s)))
  ((limit > left)) && limit=$left
  if ((limit < 15)); then
    printf '{"benchmark": "gpu_sh_step", "step": "%s", "skipped": "under 15 s left of %s s"}\n' "$name" \
      "$BUDGET_S" >> "$JSONL"
    echo "gpu.sh: skipped $name (no time left)"
    return
  fi
  echo "gpu.sh: $name (limit ${limit} s)"
  echo "=== $name: $*" >> "$LOG"
  local begin rc
  begin=$(date +%s)
  local sink=$JSONL
  [[ "$name" == setup ]] && sink=$LOG
  timeout -k 5 "$limit" "$@" >> "$sink" 2>> "$LOG"
  rc=$?
  printf '{"benchmark": "gpu_sh_step", "step": "%s", "rc": %d, "seconds": %d, "limit_s": %d}\n' "$name" "$rc" \
    "$(($(date +%s) - begin))" "$limit" >> "$JSONL"
}

# Setup.
missing=$("$PY" - <<'EOF'
import importlib.util
names = {"jax": "jax", "flax": "flax", "optax": "optax", "orbax": "orbax-checkpoint", "numpy": "numpy",
         "scipy": "scipy", "nibabel": "nibabel", "ml_collections": "ml_collections", "absl": "absl-py",
         "matplotlib": "matplotlib", "torch": "torch"}
print(" ".join(package for module, package in names.items() if importlib.util.find_spec(module) is None))
EOF
)
if [[ -n "$missing" ]]; then
  if [[ -d "$WHEELS" ]]; then
    step setup 200 "$PY" -m pip install -q --no-index --find-links "$WHEELS" $missing
  elif [[ -z "$QUICK" ]] && [[ " $missing " == *" jax "* || " $missing " == *" torch "* ]]; then
    step setup 200 "$PY" -m pip install -q -e '.[cuda,bench]'
  else
    step setup 200 "$PY" -m pip install -q $missing
  fi
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> "$LOG" 2>&1
"$PY" -c 'import json, jax; d = jax.devices()[0]; print(json.dumps({"benchmark": "gpu_sh_setup",
  "backend": jax.default_backend(), "device": getattr(d, "device_kind", str(d)), "jax": jax.__version__}))' \
  >> "$JSONL" 2>> "$LOG"

# Benchmarks, most important first.
if [[ -n "$QUICK" ]]; then
  AXIS_2D=(--models=1 --steps=1 --repeats=1)
  AXIS_3D=(--dims=3 --models=1 --steps=1 --repeats=1)
  AXIS_REST=(--models=1 --strategies=sequential --steps=1 --repeats=1)
  COMPILE=(--quick)
  STUDY=(--quick)
else
  AXIS_2D=(--models=16,8,4,1 --strategies=default)
  AXIS_3D=(--dims=3 --models=8 --strategies=default)
  AXIS_REST=(--models=16,8,4,1 --strategies=loop,sequential)
  COMPILE=(--models=1,8 --repeats=3)
  STUDY=()
fi
step mfu 80 "$PY" bench/mfu.py --json --dims=3,2 --dtypes=bfloat16,float32 $QUICK
step vs_torch 70 "$PY" bench/vs_torch.py --json $QUICK
step model_axis_2d 110 "$PY" bench/model_axis.py --json "${AXIS_2D[@]}"
step model_axis_3d 50 "$PY" bench/model_axis.py --json "${AXIS_3D[@]}"
step pipeline 40 "$PY" bench/pipeline.py --json $QUICK
step study_demo 90 "$PY" bench/study.py --json --grid=demo "${STUDY[@]}"
step compile 60 "$PY" bench/compile.py --json "${COMPILE[@]}"
step model_axis_2d_other 470 "$PY" bench/model_axis.py --json "${AXIS_REST[@]}"
echo "gpu.sh: done in $(($(date +%s) - START)) s; results in $JSONL"
