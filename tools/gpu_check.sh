#!/usr/bin/env bash
# GPU check: build adet's CUDA kernels, run the kernel tests on the GPU, time the fused
# blender and each method's inference against Detectron2's Mask R-CNN R50-FPN at the
# papers' input sizes, and profile a training iteration of SOLOv2 and CondInst against it
# (PROFILES below). One script, under 8 minutes, every step with its own timeout, a
# summary at the end.
#
#   tools/gpu_check.sh              on the GPU machine (from the repository root)
#   tools/gpu_check.sh --dry-run    anywhere: print the plan, check its CPU-side parts
#                                   (environment, test selection, benchmark arguments)
#   tools/gpu_check.sh --prepare    here, before: stage .gpu_check/ for a GPU machine that
#                                   has no package registry (see "Environment" below)
#
# Environment. The Python used is, in order: $PY; .venv/bin/python when it imports torch
# and detectron2; python3. The device machines lent to this project run their own image
# (python3 with a CUDA build of torch and torchvision, no registry, no Detectron2) and the
# project's .venv (gigabytes) cannot travel with the tree (64 MiB). So `--prepare` stages,
# on a machine with the project's .venv and a registry, a small bundle in .gpu_check/
# (ignored by git; carry it: `carry: [".gpu_check"]`):
#   .gpu_check/site/          Detectron2 (the venv's build, minus its placeholder
#                             extension, replaced by a pure-Python stub: adet never calls
#                             detectron2._C) and the pure-Python packages it and adet need;
#                             pycocotools as a wheel for the GPU image's Python
#                             ($GPU_PYTHON, default python3.12)
#   .gpu_check/shared/        coco_tiny's val split and the reference schemas, for the
#                             benchmark's images and deterministic weights
# Where the bundle is absent and the imports fail, the script runs tools/setup_env.sh
# (needs a registry).
#
# Output: $OUT (the device tool's folder) or output/gpu_check: gpu_check.log (everything),
# summary.md (the tables), bench.json (all measurements).
#
# Environment variables: PY, GPU_CHECK_BUDGET (seconds for the whole run, default 470),
# GPU_CHECK_RUNS (timed inference runs per model, default 20), GPU_PYTHON (--prepare),
# GPU_CHECK_DEVICE=cpu (rehearse the whole run on a machine without a GPU: CPU build,
# skips allowed, CPU timings; with a small budget the later steps time out).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MODE=run
for arg in "$@"; do
    case "$arg" in
        --dry-run) MODE=dry ;;
        --prepare) MODE=prepare ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done

BUDGET=${GPU_CHECK_BUDGET:-470}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
RUNS=${GPU_CHECK_RUNS:-20}
BUNDLE="$ROOT/.gpu_check"
# The kernels' tests, and those with a GPU case for code that moves tensors between devices.
KERNEL_TESTS_LIST="tests/test_fused_blender.py tests/test_deform_conv.py tests/test_solov2_units.py"
# Methods at their papers' test sizes: config | schema | short side | long side cap.
MODELS=(
    "configs/FCOS-Detection/R_50_1x.yaml|fcos_R_50_1x|800|1333"
    "configs/BlendMask/R_50_1x.yaml|blendmask_R_50_1x|800|1333"
    "configs/CondInst/MS_R_50_1x.yaml|condinst_MS_R_50_1x|800|1333"
    "configs/SOLOv2/R50_3x.yaml|solov2_R50_3x|800|1333"
    "configs/SparseInst/sparse_inst_r50_giam.yaml|sparseinst_r50_giam|608|864"
)
# Training steps profiled against Mask R-CNN at the synthetic recipes' regime (short side
# 160, batch 16), where the SOLO family trained about 5 times slower per iteration than
# CondInst on a GPU: config | schema | short side | long side cap | batch.
PROFILES=(
    "configs/SOLOv2/R50_3x.yaml|solov2_R50_3x|160|256|16"
    "configs/CondInst/MS_R_50_1x.yaml|condinst_MS_R_50_1x|160|256|16"
)
# Packages the GPU image lacks: pure Python (copied from the venv) and compiled (wheels).
PURE_PACKAGES=(detectron2 fvcore iopath yacs omegaconf hydra antlr4 termcolor)
WHEELS=(pycocotools==2.0.11)

log() { echo "[gpu_check] $*"; }

# ------------------------------------------------------------------------ prepare
# A Python of the GPU image's version, for its compiled wheels: $GPU_PYTHON, else
# python3.12 on PATH or under pyenv.
gpu_python() {
    local c
    for c in ${GPU_PYTHON:-} python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12; do
        if "$c" -c 'import sys' 2>/dev/null; then echo "$c"; return; fi
    done
    return 1
}

prepare() {
    local venv_py="$ROOT/.venv/bin/python" gpu_python
    [ -x "$venv_py" ] || { log "--prepare needs the project's .venv (make setup)"; return 1; }
    gpu_python=$(gpu_python) || { log "--prepare needs Python 3.12 (set GPU_PYTHON)"; return 1; }
    rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/site" "$BUNDLE/shared/data/coco_tiny/annotations" "$BUNDLE/shared/reference"
    grep -qxF "/.gpu_check/" .git/info/exclude 2>/dev/null || echo "/.gpu_check/" >>.git/info/exclude
    local site
    site=$("$venv_py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    for pkg in "${PURE_PACKAGES[@]}"; do
        cp -r "$site/$pkg" "$BUNDLE/site/" || return 1
    done
    # detectron2._C: the venv's is a compiled placeholder for its Python; a stub serves
    # every Python (Detectron2 imports it at module level, adet never calls it).
    rm -f "$BUNDLE"/site/detectron2/_C*.so
    printf '%s\n' '"""Stub of detectron2._C (no Detectron2 kernels; adet does not use them)."""' \
        'def get_compiler_version(): return "stub"' 'def get_cuda_version(): return "not built"' \
        'def has_cuda(): return False' >"$BUNDLE/site/detectron2/_C.py"
    find "$BUNDLE/site" -name '__pycache__' -type d -prune -exec rm -rf {} +
    "$gpu_python" -m pip install -q --no-deps --only-binary=:all: --target "$BUNDLE/site" "${WHEELS[@]}" || return 1
    local shared="$ROOT/../shared"
    cp -r "$shared/data/coco_tiny/val2017" "$BUNDLE/shared/data/coco_tiny/" || return 1
    cp "$shared/data/coco_tiny/annotations/instances_val2017.json" "$BUNDLE/shared/data/coco_tiny/annotations/"
    cp -r "$shared/reference/schemas" "$shared/reference/refweights.py" "$BUNDLE/shared/reference/" || return 1
    log "staged $(du -sh "$BUNDLE" | cut -f1) in .gpu_check/ (for $("$gpu_python" --version 2>&1));" \
        "run with carry [\".gpu_check\"]"
}

# -------------------------------------------------------------------- environment
# PY, PYTHONPATH and ADET_SHARED_DATA for the run. The bundle (.gpu_check/) is used only
# where it is needed: the chosen Python lacks the packages, ../shared is absent.
choose_python() {
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    if [ -z "${PY:-}" ]; then
        if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch, detectron2' 2>/dev/null; then
            PY=.venv/bin/python
        else
            PY=python3
        fi
    fi
    if ! imports_ok && [ -d "$BUNDLE/site" ]; then
        export PYTHONPATH="$BUNDLE/site:$PYTHONPATH"
    fi
    if [ -z "${ADET_SHARED_DATA:-}" ] && [ ! -d "$ROOT/../shared/data/coco_tiny" ] && [ -d "$BUNDLE/shared/data" ]; then
        export ADET_SHARED_DATA="$BUNDLE/shared/data"
    fi
}

imports_ok() {
    "$PY" -W ignore -c 'import torch, torchvision, detectron2.config, fvcore, pycocotools, yacs, tabulate, pytest' 2>/dev/null
}

# ----------------------------------------------------------------------- steps
# Each step is a function run in a child bash under a timeout; with DRY=1 `x` prints
# the commands instead of running them (the dry run goes through the same code).
x() {
    if [ "${DRY:-0}" = 1 ]; then echo "    + $*"; else "$@"; fi
}

step_environment() {
    set -o pipefail
    x "$PY" -W ignore - "$DEVICE" <<'PYENV' | tee "$OUT_DIR/env.txt"
import sys, torch, torchvision
print("python", sys.version.split()[0], "| torch", torch.__version__, "| torchvision",
      torchvision.__version__, "| CUDA", torch.version.cuda)
if not torch.cuda.is_available():
    sys.exit(0 if sys.argv[1] == "cpu" else "GPU: none visible to torch")
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}")
PYENV
}

step_build() {
    local arch
    arch=$("$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"{p.major}.{p.minor}")' \
        2>/dev/null || echo 9.0)
    local force=1
    [ "$DEVICE" = cpu ] && force=0
    x env FORCE_CUDA=$force ADET_EXT_REQUIRED=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" \
        "$PY" setup.py -q build_ext --inplace || return
    x "$PY" -W ignore -c 'import sys; from adet.layers import _ext
assert sys.argv[1] == "cpu" or _ext.compiled_with_cuda(), "adet._C has no CUDA kernels"
print("adet._C ops:", _ext.load_ext().op_backends())' "$DEVICE"
}

# Every kernel test; with a GPU none may be skipped (their only skips are "no GPU").
step_tests() {
    # shellcheck disable=SC2086  # the list of test files (no spaces), exported as a string
    set -- "$PY" -m pytest -q -rs -p no:cacheprovider -m "not slow" $KERNEL_TESTS_LIST
    if [ "${DRY:-0}" = 1 ]; then x "$@"; return; fi
    "$@" >"$OUT_DIR/tests.txt" 2>&1
    local rc=$?
    cat "$OUT_DIR/tests.txt"
    [ "$rc" -eq 0 ] || return "$rc"
    if [ "$DEVICE" != cpu ] && grep -q " skipped" "$OUT_DIR/tests.txt"; then
        echo "gpu_check: kernel tests were skipped on the GPU"
        return 3
    fi
}

step_blender() {
    x "$PY" -W ignore tools/benchmark.py --blender --device "$DEVICE" --warmup 5 --runs 50 \
        --json "$OUT_DIR/blender.json"
}

# One benchmark.py run against Mask R-CNN: CONFIG|SCHEMA|SIZE|MAX_SIZE times inference
# (MODELS); with |BATCH it times and profiles training iterations as well (PROFILES).
step_model() {
    local config schema size max_size batch name
    IFS='|' read -r config schema size max_size batch <<<"$1"
    name=$(basename "$(dirname "$config")")_$(basename "$config" .yaml)
    set -- --warmup 5 --runs "$RUNS" --train-iters 0 --json "$OUT_DIR/bench_$name.json"
    [ -n "$batch" ] && set -- --warmup 1 --runs 3 --train-iters 5 --batch-size "$batch" --profile-train \
        --json "$OUT_DIR/profile_$name.json"
    x "$PY" -W ignore tools/benchmark.py --config-file "$config" --schema "$schema" --device "$DEVICE" \
        --size "$size" --max-size "$max_size" "$@"
}

START=$SECONDS
FAILURES=0
declare -a SUMMARY=()

remaining() { echo $(( BUDGET - (SECONDS - START) )); }

# run_step NAME MAX_SECONDS FUNCTION [ARGS]: runs the step in a child bash under a
# timeout of MAX_SECONDS or what is left of the budget, whichever is less.
run_step() {
    local name=$1 max=$2 left t0 rc status
    shift 2
    left=$(remaining)
    if [ "$left" -lt 15 ]; then
        SUMMARY+=("| $name | skipped (out of time) | 0 |")
        FAILURES=$(( FAILURES + 1 ))
        log "== $name: skipped, ${left}s left of ${BUDGET}s"
        return 124
    fi
    [ "$max" -gt "$left" ] && max=$left
    log "== $name (timeout ${max}s)"
    t0=$SECONDS
    timeout --kill-after=10 "$max" bash -c '"$@"' _ "$@"
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status="TIMEOUT after ${max}s" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    SUMMARY+=("| $name | $status | $(( SECONDS - t0 )) |")
    [ "$rc" -eq 0 ] || FAILURES=$(( FAILURES + 1 ))
    log "== $name: $status in $(( SECONDS - t0 ))s"
    return $rc
}

# The tables from the benchmark files, merged into one bench.json.
write_summary() {
    "$PY" -W ignore - "$OUT_DIR" <<'PYSUM' || true
import glob, json, os, sys
out = sys.argv[1]
merged, blender, models, profiles = {}, [], [], []


def profile_line(row):
    p = row["train_profile"]
    device = "no device" if p["device_busy_ms"] is None else \
        f"device busy {p['device_busy_ms']:.0f} ms, {p['kernels']} kernels, {p['syncs']} host waits"
    return (f"{row['train_s_per_iter']:.3f} s/iter, profiled iteration {p['wall_ms']:.0f} ms: "
            f"{p['aten_ops']} aten ops, {device}")


paths = ["blender.json", "bench_*.json", "profile_*.json"]
for path in sorted(p for pattern in paths for p in glob.glob(os.path.join(out, pattern))):
    data = json.load(open(path))
    merged[os.path.basename(path)[:-5]] = data
    os.remove(path)
    device = data["args"]["device"]
    if "blender" in data:
        blender.append(f"fused vs plain blender on {device} (median; peak = most allocated during a call):")
        for r in data["blender"]:
            ms = "n/a" if r["ms"] is None else f"{r['ms']:.3f} ms, peak {r['peak_mib']:.1f} MiB"
            blender.append(f"  {r['path']:6s} {r['pass']:19s} {ms}")
    elif os.path.basename(path).startswith("profile_"):
        a, ours, base = data["args"], data["rows"][0], data["rows"][-1]
        label = os.path.basename(path)[len("profile_"):-len(".json")]
        profiles.append(f"  {label} at {a['size']}/{a['max_size']}, batch {a['batch_size']} ({device}), "
                        f"training ratio {ours['train_s_per_iter'] / base['train_s_per_iter']:.2f}:\n"
                        f"    ours:       {profile_line(ours)}\n    Mask R-CNN: {profile_line(base)}")
    else:
        a, ours, base = data["args"], data["rows"][0], data["rows"][-1]
        label = os.path.basename(path)[len("bench_"):-len(".json")]  # <config folder>_<config>
        models.append(f"  {label:36s} {a['size']}/{a['max_size']}: {ours['infer_ms']:7.1f}   "
                      f"Mask R-CNN {base['infer_ms']:7.1f}   ratio {ours['infer_ms'] / base['infer_ms']:.2f}"
                      f"   ({ours['weights']}, {device})")
if models:
    models.insert(0, "inference latency (median ms per image, one image per call), ours vs Mask R-CNN R50-FPN:")
if profiles:
    profiles.insert(0, "training (median s/iter) and one profiled iteration (top ops: gpu_check.log):")
if merged:
    json.dump(merged, open(os.path.join(out, "bench.json"), "w"), indent=2)
    print("", *blender, "", *models, "", *profiles, sep="\n")
PYSUM
}

print_summary() {
    {
        echo "# gpu_check summary ($(date -u +%Y-%m-%dT%H:%MZ), $(( SECONDS - START ))s of ${BUDGET}s)"
        echo
        cat "$OUT_DIR/env.txt" 2>/dev/null
        echo
        echo "| step | result | seconds |"
        echo "|---|---|---|"
        printf '%s\n' "${SUMMARY[@]}"
        write_summary
    } | tee "$OUT_DIR/summary.md"
}

run_all() {
    run_step "environment" 60 step_environment || {
        log "no usable Python environment or GPU: stopping"; print_summary; return 1; }
    run_step "build CUDA kernels" 240 step_build
    run_step "kernel tests on the GPU" 150 step_tests
    run_step "blender fused vs plain" 60 step_blender
    local m config
    for m in "${MODELS[@]}"; do
        config=${m%%|*}
        run_step "latency $(basename "$(dirname "$config")")/$(basename "$config" .yaml) vs Mask R-CNN" \
            90 step_model "$m"
    done
    for m in "${PROFILES[@]}"; do
        config=${m%%|*}
        run_step "training profile $(basename "$(dirname "$config")")/$(basename "$config" .yaml) vs Mask R-CNN" \
            120 step_model "$m"
    done
    print_summary
    log "$FAILURES step(s) not ok"
    [ "$FAILURES" -eq 0 ]
}

# What can be checked without a GPU: the environment, the test selection (collected,
# with the CUDA cases named), every benchmark command's arguments and files.
dry_run() {
    log "dry run: python $PY; PYTHONPATH=$PYTHONPATH; ADET_SHARED_DATA=${ADET_SHARED_DATA:-<default>}"
    if imports_ok; then log "imports: ok"; else log "imports: FAIL (the run would call tools/setup_env.sh)"; fi
    local m cases
    for step in step_build step_tests step_blender; do log "$step:"; DRY=1 $step; done
    for m in "${MODELS[@]}"; do log "step_model:"; DRY=1 step_model "$m"; done
    for m in "${PROFILES[@]}"; do log "step_model (training profile):"; DRY=1 step_model "$m"; done
    # shellcheck disable=SC2086
    cases=$("$PY" -W ignore -m pytest -q --collect-only -p no:cacheprovider $KERNEL_TESTS_LIST 2>/dev/null | grep '::')
    log "kernel tests: $(echo "$cases" | grep -c '::') collected, $(echo "$cases" | grep -c cuda) of them CUDA cases:"
    echo "$cases" | grep cuda | sed 's/^/    /'
    "$PY" -W ignore - "${MODELS[@]}" "${PROFILES[@]}" <<'PYCHECK'
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("benchmark", "tools/benchmark.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
bench.parse_args(["--blender", "--device", "cuda", "--runs", "50"])
for model in sys.argv[1:]:
    config, schema, size, max_size, *batch = model.split("|")
    args = bench.parse_args(["--config-file", config, "--schema", schema, "--device", "cuda",
                             "--size", size, "--max-size", max_size, "--train-iters", "5" if batch else "0"]
                            + (["--batch-size", batch[0], "--profile-train"] if batch else []))
    assert Path(args.config_file).is_file(), config
    schema_file = bench.shared_data_root().parent / "reference" / "schemas" / f"{schema}.json"
    print(f"[gpu_check]   {config}: arguments ok, deterministic weights "
          f"{'found' if schema_file.is_file() else 'MISSING (random init)'}")
PYCHECK
}

main_run() {
    choose_python
    OUT_DIR=${OUT:-$ROOT/output/gpu_check}
    export PY OUT_DIR RUNS ROOT KERNEL_TESTS_LIST DEVICE
    export -f x log step_environment step_build step_tests step_blender step_model
    if [ "$1" = 1 ]; then
        dry_run
        return
    fi
    mkdir -p "$OUT_DIR"
    run_with_setup 2>&1 | tee "$OUT_DIR/gpu_check.log"
    return "${PIPESTATUS[0]}"
}

run_with_setup() {
    log "repository $ROOT, device $DEVICE, budget ${BUDGET}s, output $OUT_DIR"
    if ! imports_ok; then
        log "the imports fail with $PY and there is no usable bundle: running tools/setup_env.sh"
        run_step "setup_env.sh" 300 bash tools/setup_env.sh && PY=.venv/bin/python && export PY
    fi
    run_all
}

case $MODE in
    prepare) prepare ;;
    dry) main_run 1 ;;
    run) main_run 0 ;;
esac
