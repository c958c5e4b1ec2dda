#!/usr/bin/env bash
# One command for a CUDA machine that has torch but no network and no package index:
# installs the three packages without dependencies, runs the CUDA tests and the benchmarks,
# and writes everything under OUTDIR (flat, few files: it is copied back from the device box):
#   OUTDIR/tests.log    pytest -m cuda output (plus the extension build logs)
#   OUTDIR/bench.log    every benchmark's output
#   OUTDIR/*.csv        the benchmark CSVs this run appended to (from benchmarks/results/)
#   OUTDIR/summary.txt  one line per step (exit code, seconds) and the benchmark tables
# A failing step is recorded and the next one runs; the summary is printed last.
#
#   tools/gpu_check.sh /tmp/out            # PYTHON=python3 STEP_TIMEOUT=1500 by default
set -u

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUT=$1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
STEP_TIMEOUT=${STEP_TIMEOUT:-1500}
export TOYKERNELS_CACHE=${TOYKERNELS_CACHE:-/tmp/toykernels-cache}  # builds stay off OUTDIR
export PYTHONUNBUFFERED=1
STAMP=$(mktemp)  # CSVs newer than this were written by this run
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
: > "$OUT/tests.log"
: > "$OUT/bench.log"

# step NAME LOG CMD...: runs CMD with its output appended to LOG, records exit code and time
step() {
    local name=$1 log=$2
    shift 2
    echo "===== $name: $*" | tee -a "$log"
    local start=$SECONDS
    timeout "$STEP_TIMEOUT" "$@" >> "$log" 2>&1
    local rc=$?
    local took=$((SECONDS - start))
    echo "===== $name: exit $rc after ${took}s" | tee -a "$log"
    local note=""
    [ "$rc" = 5 ] && note="(pytest: no tests selected)"
    [ "$rc" = 124 ] && note="(timed out after ${STEP_TIMEOUT}s)"
    printf '%-28s exit %-4s %6ss %s\n' "$name" "$rc" "$took" "$note" >> "$SUMMARY"
    return 0
}

{
    echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "NO GPU")' 2>&1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 4
} | tee -a "$SUMMARY"

# Install without touching dependencies (no index here); fall back to PYTHONPATH.
if ! "$PY" -m pip install --no-deps --no-build-isolation -q \
        -e packages/toygrad -e packages/kernels -e packages/toygpt >> "$OUT/tests.log" 2>&1; then
    echo "pip install failed: using PYTHONPATH to the src folders" | tee -a "$SUMMARY"
    export PYTHONPATH="$REPO/packages/toygrad/src:$REPO/packages/kernels/src:$REPO/packages/toygpt/src${PYTHONPATH:+:$PYTHONPATH}"
fi

step "backend_info" "$OUT/tests.log" "$PY" -c 'import torch, toykernels; x = torch.randn(8, 768, device="cuda"); toykernels.layer_norm(x); q = torch.randn(1, 12, 64, 64, device="cuda", dtype=torch.bfloat16); toykernels.causal_attention(q, q, q); print(toykernels.backend_info("cuda"))'
step "pytest kernels -m cuda" "$OUT/tests.log" "$PY" -m pytest tests/kernels -m cuda -q -ra -p no:cacheprovider
for dir in tests/toygrad tests/toygpt; do
    [ -d "$dir" ] && step "pytest ${dir#tests/} -m cuda" "$OUT/tests.log" "$PY" -m pytest "$dir" -m cuda -q -ra -p no:cacheprovider
done
# the build logs (first build timing, or the compiler errors)
find "$TOYKERNELS_CACHE" -name build.log -exec sh -c 'echo "----- $1"; cat "$1"' _ {} \; >> "$OUT/tests.log" 2>/dev/null

for bench in bench_layernorm bench_attention bench_generate bench_train bench_toygrad_tensor; do
    if [ -f "tools/$bench.py" ]; then
        step "$bench" "$OUT/bench.log" "$PY" "tools/$bench.py"
    else
        printf '%-28s missing\n' "$bench" >> "$SUMMARY"
    fi
done

# the cost of one small call (a GPT-2 decode step's 25 LayerNorms): launch and Python overhead
step "bench_layernorm --per-call" "$OUT/bench.log" "$PY" tools/bench_layernorm.py --per-call

for csv in benchmarks/results/*.csv; do
    [ -f "$csv" ] && [ "$csv" -nt "$STAMP" ] && cp "$csv" "$OUT/"
done
rm -f "$STAMP"

# the benchmark tables: each script prints its summary after a line starting with "# "
{
    echo
    echo "# test results"
    grep -E '^(FAILED|ERROR|[0-9]+ (passed|failed)|=+ .*(passed|failed|error))' "$OUT/tests.log" | tail -n 20
    echo
    grep -E -A 40 '^# toykernels LayerNorm on' "$OUT/bench.log" | head -n 45
    echo
    grep -E -A 4 '^# per call, ' "$OUT/bench.log" | head -n 5
    echo
    grep -E -A 45 '^# summary \(speed ratio > 1 means toykernels is faster\)' "$OUT/bench.log" | head -n 46
} >> "$SUMMARY"
echo
echo "################ summary ($SUMMARY)"
cat "$SUMMARY"
