#!/usr/bin/env bash
# The benchmarks of bench/ on one GPU, most important first, within BENCH_BUDGET_S seconds (default 520).
#
#   SLICEJAX_HIPPOCAMPUS=.data/hippocampus bash bench/gpu.sh   # on the GPU machine; stops unless JAX's backend is gpu
#   bash bench/gpu.sh --dry-run   # every step at tiny sizes on the CPU (JAX_PLATFORMS=cpu), on any machine
#
# Only this checkout travels to the GPU machine, with the ignored paths its runner is told to carry: nothing beside
# the checkout does. So the wheels of the packages the GPU image lacks (nibabel, ml_collections, surface_distance)
# go in the ignored folder .whl/ (or $WHEELS) and the MSD Task04 hippocampus folder in .data/hippocampus, and both
# are carried; bench/README.md gives the exact call. slicejax is imported from this checkout (PYTHONPATH), never
# installed. Before the first step the script installs, with `pip install --no-index --no-deps --target` into a
# folder put on PYTHONPATH, every wheel of the wheel folder that provides a module the interpreter (PYTHON, default
# python3) lacks, and nothing else; then it imports the benchmark modules themselves (and surface_distance, which
# the study step's evaluation imports where it computes surface metrics) and stops with one line naming any module
# still missing. SLICEJAX_HIPPOCAMPUS=PATH times the hippocampus grid; without it that step leaves a "skipped"
# record. The dry run gives each step and the budget 4 times the GPU's limits.
#
# Writes one JSON line per measurement to $OUT/bench_gpu.jsonl ($OUT if set, else .) and the steps' stderr to
# bench_gpu.log beside it: {"benchmark": "gpu_sh_plan", "budget_s", "limits_s", ...}, {"benchmark": "gpu_sh_setup",
# "backend", "versions", "installed", ...}, then per step its benchmark lines, each appended as it is measured
# (records with "partial": true come before a step's complete one), and {"benchmark": "gpu_sh_step", "step", "rc",
# "seconds", "limit_s"} (rc 124: out of time, the lines printed until then are kept) or {..., "skipped": why}. Each
# step runs under `timeout` with its own limit; the limits plus the setup's allowance add up to at most the budget
# (checked before anything runs), and a step is cut further if the budget runs short. Every python process of the
# run shares one persistent JAX compilation cache under $TMPDIR (default /tmp), so a rerun on the same machine
# compiles little. The script exits 1 if a step failed or had no time left.
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
BUDGET_S=$((${BENCH_BUDGET_S:-520} * SCALE))
# Seconds kept for the setup before the first step: the wheels, the import check and one JAX start.
SETUP_S=$((30 * SCALE))
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

# The steps, most important first, with their limits in seconds on one H100 or H200 (bench/README.md: how they were
# sized). The study step times the 4-model slice of the hippocampus grid and extrapolates the whole default grid.
steps() {
  step model_axis_2d 170 "$PY" bench/model_axis.py --json --dims=2 --models=$MODELS_2D --strategies=default \
    "${QUICK[@]}"
  if ((HAVE_TORCH)); then
    step vs_torch 110 "$PY" bench/vs_torch.py --json --dims=2,3 --dtypes=float32,bfloat16 "${QUICK[@]}"
  else
    skip vs_torch 110 "no PyTorch"
  fi
  step mfu_3d_bf16 45 "$PY" bench/mfu.py --json --dims=3 --dtypes=bfloat16 "${QUICK[@]}"
  if [[ -n "$DATA" ]]; then
    step study_hippocampus 120 "$PY" bench/study.py --json --grid=hippocampus --data="$DATA" --whole-grid \
      "${QUICK[@]}"
  else
    skip study_hippocampus 120 "no data: SLICEJAX_HIPPOCAMPUS is unset"
  fi
  step pipeline 45 "$PY" bench/pipeline.py --json "${QUICK[@]}"
}

# The plan: every step's limit (a plan counts a step whether it will run or be skipped).
MODE=plan
steps
if ((PLANNED_S + SETUP_S > BUDGET_S)); then
  echo "gpu.sh: the step limits add up to $PLANNED_S s, over the budget of $BUDGET_S s less $SETUP_S s of setup" >&2
  exit 2
fi
IFS=,
printf '{"benchmark": "gpu_sh_plan", "dry_run": %s, "scale": %d, "budget_s": %d, "setup_s": %d, ' \
  "$( ((DRY_RUN)) && echo true || echo false)" "$SCALE" "$BUDGET_S" "$SETUP_S" >> "$JSONL"
printf '"planned_s": %d, "limits_s": {%s}}\n' "$PLANNED_S" "${PLAN[*]}" >> "$JSONL"
unset IFS

# Setup 1: every wheel in $WHEELS that provides a module this interpreter lacks (its top-level folders and .py
# files), one per distribution (the last by name where there are several).
wheels=$("$PY" - "$WHEELS" 2>> "$LOG" <<'EOF'
import importlib.util, pathlib, sys, zipfile

def lacks(module):
  try:
    return importlib.util.find_spec(module) is None
  except ImportError:  # a parent package of a dotted name is missing, or an import hook refuses it
    return True

chosen = {}
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
  with zipfile.ZipFile(wheel) as archive:
    tops = {name.split("/")[0] for name in archive.namelist()}
  modules = [t.removesuffix(".py") for t in tops if not t.endswith((".dist-info", ".data"))
             and (t.endswith(".py") or "." not in t)]
  if any(lacks(m) for m in modules):
    chosen[wheel.name.split("-")[0].lower()] = wheel
print("\n".join(str(w) for w in chosen.values()))
EOF
) || { echo "gpu.sh: $PY does not run (see $LOG)" >&2; exit 1; }
installed=()
if [[ -n "$wheels" ]]; then
  mapfile -t installed <<< "$wheels"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "${installed[@]}" >> "$LOG" 2>&1 || { echo "gpu.sh: pip could not install ${installed[*]} (see $LOG)" >&2; exit 1; }
fi

# Setup 2: the benchmark modules themselves, as the steps import them (bench/ first on the path), and
# surface_distance, imported only where the study step's evaluation computes surface metrics; torch_unet only where
# PyTorch is installed (vs_torch is skipped otherwise). No JAX backend starts here.
missing=$("$PY" - 2>> "$LOG" <<'EOF'
import importlib, importlib.util, sys, traceback
sys.path.insert(0, "bench")
modules = ["common", "model_axis", "vs_torch", "mfu", "study", "pipeline", "surface_distance"]
if importlib.util.find_spec("torch") is not None:
  modules.append("torch_unet")
missing = []
for module in modules:
  try:
    importlib.import_module(module)
  except ModuleNotFoundError as e:
    missing.append((e.name or module).split(".")[0])
  except Exception:  # pylint: disable=broad-except
    traceback.print_exc()
    missing.append(f"{module} (it fails to import: see the log)")
print(", ".join(dict.fromkeys(missing)))
EOF
) || { echo "gpu.sh: $PY does not run (see $LOG)" >&2; exit 1; }
if [[ -n "$missing" ]]; then
  echo "gpu.sh: the benchmarks need $missing, which $PY lacks and no wheel in $WHEELS provides" \
    "(bench/README.md: preparing the checkout)" >&2
  exit 1
fi

# Setup 3: one JAX start; the device and the versions the figures depend on.
setup=$("$PY" - "$DRY_RUN" "${installed[@]}" 2>> "$LOG" <<'EOF'
import importlib.metadata, json, os, platform, re, sys
import jax

def version(distribution):
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return None

versions = {"python": platform.python_version()}
versions.update({d: version(d) for d in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy",
                                         "torch")})
# The CUDA plugin and its PJRT half (jax-cuda13-plugin, jax-cuda13-pjrt, ...), whichever are installed.
plugins = {d.metadata["Name"] for d in importlib.metadata.distributions()
           if re.fullmatch(r"jax[-_]cuda\d+[-_](plugin|pjrt)", d.metadata["Name"] or "")}
versions.update({name: version(name) for name in sorted(plugins)})
device = jax.devices()[0]
print(json.dumps({"benchmark": "gpu_sh_setup", "dry_run": sys.argv[1] == "1", "backend": jax.default_backend(),
                  "device": getattr(device, "device_kind", str(device)), "devices": jax.device_count(),
                  "versions": versions, "installed": [os.path.basename(w) for w in sys.argv[2:]]}))
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
