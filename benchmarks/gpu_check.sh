#!/usr/bin/env bash
# Issue 15's one-shot GPU check: run from the repository root on a machine with one CUDA GPU.
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh      # JSON + logs land in $OUT
#
# Under 8 minutes in all (each step has its own time limit; a step stopped by its limit keeps
# the rows it finished, because the benchmark rewrites its JSON after every row):
#   1. ViT-B/16 224 px, every method, eager (no torch.compile)          <= 135 s
#   2. ViT-B/16, MAE and EMAE K=4 with torch.compile (inductor)         <= 195 s
#   3. the input side on this node's CPUs: JPEG decode + crop per core and on every core; with
#      Ray installed, mimray's Ray Data stream and the data-wait share of a real
#      `mimray pretrain` with scaling.use_gpu: true                       <= 75 s
# (405 s of limits, up to 30 s more if all three are killed, and ~20 s to set up.)
#
# Installs nothing but mimray itself (`pip install --no-deps -e .`, which needs no registry).
# Python packages the GPU image lacks can travel as wheels in ./.whl (see benchmarks/README.md);
# they are installed first when present. Without Ray, step 3 measures the decode rates only
# and says why the rest was skipped.
set -u -o pipefail
OUT=${OUT:-$(mktemp -d /tmp/mimray-gpu-check.XXXX)}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
started=$(date +%s)

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/mimray-site .whl/*.whl >"$OUT/pip-wheels.log" 2>&1 \
        && export PYTHONPATH=/tmp/mimray-site${PYTHONPATH:+:$PYTHONPATH}
fi
# Editable install without dependencies; if even that fails, the source tree on the path.
"$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/pip.log" 2>&1 \
    || export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    nproc
    "$PYTHON" - <<'PY'
import importlib
for name in ("torch", "pydantic", "timm", "ray", "mlflow"):
    try:
        print(name, importlib.import_module(name).__version__)
    except ImportError:
        print(name, "MISSING")
PY
} 2>&1 | tee "$OUT/environment.txt"
if grep -qE "^(pydantic|timm) MISSING" "$OUT/environment.txt"; then
    echo "gpu_check: pydantic and timm are needed (method registry, ViT blocks); carry their" \
        "wheels in .whl (benchmarks/README.md) and run again" | tee "$OUT/failed.txt"
    exit 2
fi

step() {  # step NAME SECONDS ARGS...: one benchmark run under a time limit
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s, $(( $(date +%s) - started ))s in)"
    timeout --kill-after=10 "$limit" "$PYTHON" benchmarks/gpu_pretrain.py "$@" \
        --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log"
    echo "== $name exit ${PIPESTATUS[0]}"
}

step vitb-eager 135 --size vit-b --compile off --steps 10 --warmup 3
step vitb-compile 195 --size vit-b --compile on --methods mae,emae --steps 10 --warmup 2 \
    --compile-warmup 3
step input 75 --size vit-b --methods mae --compile off --steps 3 --warmup 1 \
    --data-images 8192 --data-cpus "$(nproc)" --pretrain-epochs 3
echo "gpu_check: done in $(( $(date +%s) - started ))s; figures in $OUT"
