#!/usr/bin/env bash
# The benchmarks of bench/ on one GPU, most important first, within BENCH_BUDGET_S seconds (default 500).
#
#   bash bench/gpu.sh             # on the GPU machine; stops at once unless JAX's backend is "gpu"
#   bash bench/gpu.sh --dry-run   # every step at tiny sizes on the CPU (JAX_PLATFORMS=cpu), on any machine
#
# The dry run gives each step and the budget 4 times the GPU's limits. PYTHON picks the interpreter (default
# python3). slicejax is imported from this checkout (PYTHONPATH), never installed. If the interpreter lacks nibabel
# or ml_collections, they are installed from the wheels in .whl/ (or $WHEELS) with `pip install --no-index
# --no-deps --target` into a folder put on PYTHONPATH; nothing else is ever installed, and any other missing package
# stops the script. SLICEJAX_HIPPOCAMPUS=PATH (an MSD Task04 folder) times the hippocampus grid; without it that step
# leaves a "skipped" record. bench/README.md gives the call on a GPU machine, how .whl/ is prepared and how the limits
# were sized.
#
# Writes one JSON line per measurement to $OUT/bench_gpu.jsonl ($OUT if set, else .) and the steps' stderr to
# bench_gpu.log beside it: {"benchmark": "gpu_sh_plan", "budget_s", "limits_s", ...}, {"benchmark": "gpu_sh_setup",
# "backend", ...}, then per step its benchmark lines and {"benchmark": "gpu_sh_step", "step", "rc", "seconds",
# "limit_s"} (rc 124: out of time, the lines printed until then are kept) or {..., "skipped": why}. Each step runs
# under `timeout` with its own limit; the limits add up to less than the budget (checked before anything runs), and
# a step is cut further if the budget runs short. Every python process of the run shares one persistent JAX
# compilation cache under $TMPDIR (default /tmp), so a rerun on the same machine compiles little. The script exits 1
# if a step failed or had no time left.
set -uo pipefail

case "${1:-}" in
  "") DRY_RUN=0 ;;
  --dry-run) DRY_RUN=1 ;;
  *) echo "usage: bash bench/gpu.sh [--dry-run]" >&2; exit 2 ;;
esac
# Paths given relative to the caller's folder, made absolute before the script moves to the checkout's root.
absolute() { [[ "$1" == /* ]] && echo "$1" || echo "$PWD/$1"; }
PY=${PYTHON:-python3}
[[ "$PY" == */* ]] && PY=$(absolute "$PY")  # a bare command name is looked up on PATH
OUT_DIR=$(absolute "${OUT:-.}")
DATA=${SLICEJAX_HIPPOCAMPUS:+$(absolute "$SLICEJAX_HIPPOCAMPUS")}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WHEELS=$(absolute "${WHEELS:-$ROOT/.whl}")
cd "$ROOT" || exit 2

# The limits are sized for the GPU; a dry run, on a CPU that may be shared, gives each step and the budget SCALE
# times as long, since there they only stop a step that hangs.
SCALE=1
((DRY_RUN)) && SCALE=4
START=$(date +%s)
BUDGET_S=$((${BENCH_BUDGET_S:-500} * SCALE))
DEADLINE=$((START + BUDGET_S))
TMP=${TMPDIR:-/tmp}
SITE=$TMP/slicejax_gpu_sh_site
JSONL=$OUT_DIR/bench_gpu.jsonl
LOG=$OUT_DIR/bench_gpu.log
mkdir -p "$OUT_DIR"
: > "$JSONL"
: > "$LOG"
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=$TMP/slicejax_gpu_sh_jax_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
QUICK=()
MODELS_2D=1,8,16,32
if ((DRY_RUN)); then
  export JAX_PLATFORMS=cpu
  # Dry-run figures are never results: XLA:CPU's cheapest compile settings halve its compile times, and two values
  # of M keep both code paths of the model axis (one model; more models than one chunk) with half the processes.
  CHEAP="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$CHEAP"
  QUICK=(--quick)
  MODELS_2D=1,8
fi

# step NAME LIMIT_S COMMAND...: with MODE=plan, adds LIMIT_S to the plan; with MODE=run, runs COMMAND under timeout
# with its stdout appended to the JSON lines. skip NAME LIMIT_S WHY: the same, for a step that cannot run here.
PLAN=()
PLANNED_S=0
FAILED=()
HAVE_TORCH=0  # found in the setup below; the plan counts vs_torch either way
step() {
  local name=$1 limit=$(($2 * SCALE))
  shift 2
  if [[ "$MODE" == plan ]]; then
    PLAN+=("\"$name\": $limit")
    PLANNED_S=$((PLANNED_S + limit))
    return
  fi
  local left=$((DEADLINE - $(date +%s)))
  ((limit > left)) && limit=$left
  if ((limit < 15)); then
    printf '{"benchmark": "gpu_sh_step", "step": "%s", "skipped": "under 15 s left of %s s"}\n' "$name" \
      "$BUDGET_S" >> "$JSONL"
    echo "gpu.sh: skipped $name (no time left)"
    FAILED+=("$name")
    return
  fi
  echo "gpu.sh: $name (limit $limit s)"
  echo "=== $name: $*" >> "$LOG"
  local begin rc
  begin=$(date +%s)
  timeout -k 5 "$limit" "$@" >> "$JSONL" 2>> "$LOG"
  rc=$?
  ((rc)) && FAILED+=("$name")
  printf '{"benchmark": "gpu_sh_step", "step": "%s", "rc": %d, "seconds": %d, "limit_s": %d}\n' "$name" "$rc" \
    "$(($(date +%s) - begin))" "$limit" >> "$JSONL"
}
skip() {
  if [[ "$MODE" == plan ]]; then
    step "$1" "$2"  # scaled there
    return
  fi
  printf '{"benchmark": "gpu_sh_step", "step": "%s", "skipped": "%s"}\n' "$1" "$3" >> "$JSONL"
  echo "gpu.sh: skipped $1 ($3)"
}

# The steps, most important first, with their limits in seconds on one H200 (bench/README.md: how they were sized).
steps() {
  step model_axis_2d 180 "$PY" bench/model_axis.py --json --dims=2 --models=$MODELS_2D --strategies=default \
    "${QUICK[@]}"
  if ((HAVE_TORCH)); then
    step vs_torch 80 "$PY" bench/vs_torch.py --json --dims=2,3 "${QUICK[@]}"
  else
    skip vs_torch 80 "no PyTorch"
  fi
  step mfu_3d_bf16 70 "$PY" bench/mfu.py --json --dims=3 --dtypes=bfloat16 "${QUICK[@]}"
  if [[ -n "$DATA" ]]; then
    step study_hippocampus 90 "$PY" bench/study.py --json --grid=hippocampus --data="$DATA" "${QUICK[@]}"
  else
    skip study_hippocampus 90 "no data: SLICEJAX_HIPPOCAMPUS is unset"
  fi
  step pipeline 50 "$PY" bench/pipeline.py --json "${QUICK[@]}"
}

# The plan: every step's limit (a plan counts a step whether it will run or be skipped).
MODE=plan
steps
if ((PLANNED_S >= BUDGET_S)); then
  echo "gpu.sh: the step limits add up to $PLANNED_S s, not under the budget of $BUDGET_S s" >&2
  exit 2
fi
IFS=,
printf '{"benchmark": "gpu_sh_plan", "dry_run": %s, "budget_s": %d, "planned_s": %d, "limits_s": {%s}}\n' \
  "$( ((DRY_RUN)) && echo true || echo false)" "$BUDGET_S" "$PLANNED_S" "${PLAN[*]}" >> "$JSONL"
unset IFS

# Setup: nibabel and ml_collections from .whl/ if missing; any other missing package stops the run.
missing=$("$PY" - 2>> "$LOG" <<'EOF'
import importlib.util
for module in ("jax", "flax", "optax", "orbax.checkpoint", "etils", "numpy", "scipy", "absl", "matplotlib",
               "tensorboard", "yaml", "nibabel", "ml_collections"):
  try:
    found = importlib.util.find_spec(module) is not None
  except ImportError:  # a missing parent package of a dotted name
    found = False
  if not found:
    print(module)
EOF
) || { echo "gpu.sh: $PY does not run (see $LOG)" >&2; exit 1; }
wheels=()
for module in $missing; do
  found=("$WHEELS/$module"-*.whl)
  if [[ "$module" != nibabel && "$module" != ml_collections ]]; then
    echo "gpu.sh: $PY lacks $module; this script installs only nibabel and ml_collections" >&2
    exit 1
  elif [[ ! -f "${found[-1]}" ]]; then
    echo "gpu.sh: $PY lacks $module and there is no $WHEELS/$module-*.whl (bench/README.md: prepare .whl/)" >&2
    exit 1
  fi
  wheels+=("${found[-1]}")  # the highest version by name, if there are several
done
if ((${#wheels[@]})); then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "${wheels[@]}" >> "$LOG" 2>&1 || { echo "gpu.sh: pip could not install ${wheels[*]} (see $LOG)" >&2; exit 1; }
fi

setup=$("$PY" - "$DRY_RUN" 2>> "$LOG" <<'EOF'
import importlib.metadata, importlib.util, json, platform, sys
import jax
device = jax.devices()[0]
torch = importlib.metadata.version("torch") if importlib.util.find_spec("torch") else None
print(json.dumps({"benchmark": "gpu_sh_setup", "dry_run": sys.argv[1] == "1", "backend": jax.default_backend(),
                  "device": getattr(device, "device_kind", str(device)), "devices": jax.device_count(),
                  "jax": jax.__version__, "jaxlib": importlib.metadata.version("jaxlib"), "torch": torch,
                  "python": platform.python_version()}))
EOF
) || { echo "gpu.sh: JAX does not start (see $LOG)" >&2; exit 1; }
echo "$setup" >> "$JSONL"
backend=$(sed -n 's/.*"backend": "\([a-z]*\)".*/\1/p' <<< "$setup")
if ((!DRY_RUN)) && [[ "$backend" != gpu ]]; then
  echo "gpu.sh: JAX's backend is $backend, not gpu: stopping (bash bench/gpu.sh --dry-run runs on the CPU)" >&2
  exit 1
fi
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
  >> "$LOG" 2>&1
[[ "$setup" == *'"torch": null'* ]] || HAVE_TORCH=1

MODE=run
steps
if ((${#FAILED[@]})); then
  echo "gpu.sh: done in $(($(date +%s) - START)) s; failed: ${FAILED[*]}; results in $JSONL, stderr in $LOG" >&2
  exit 1
fi
echo "gpu.sh: done in $(($(date +%s) - START)) s; results in $JSONL"
