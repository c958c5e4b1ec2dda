#!/usr/bin/env bash
# For a CUDA machine that has torch but no network and no package index: installs the three
# packages without dependencies, runs the CUDA tests and the GPU benchmarks, and writes the
# results under OUTDIR (flat and few files: a device box sends back at most 8):
#   OUTDIR/tests.log    pytest -m cuda output, then the extension build logs      (phase tests)
#   OUTDIR/bench.log    the benchmarks' output                           (phases bench, quality)
#   OUTDIR/*.csv        the benchmark CSVs this run appended to (from benchmarks/results/)
#   OUTDIR/summary.txt  one line per step (exit code, seconds) and the benchmark tables
# A failing step is recorded and the next one runs; the summary is printed last.
#
#   tools/gpu_check.sh OUTDIR [tests|bench|quality|all]      (default: all)
#
# The phases exist because a device call here may run at most 10 minutes: each phase is meant
# to end within about 8 (PHASE_BUDGET seconds, default 540; no step starts with under 30 s left,
# and each is cut off at what is left). Call them in order, tests first: its first CUDA use
# JIT-builds the extensions into TOYKERNELS_CACHE (default: .toykernels-cache in the repo, which
# stays between calls while the machine is warm), and the later phases reuse those builds.
#
# Data: the tests and the quality run read ../shared/data (Tiny Shakespeare, GPT-2's tokenizer
# files). A device box gets only the repo, so copy it in first (`mkdir -p shared && cp -r
# ../shared/data shared/`; /shared/ is git-ignored and travels); this script then links
# ../shared to it when ../shared is missing.
set -u

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 OUTDIR [tests|bench|quality|all]" >&2
    exit 2
fi
OUT=$1
PHASE=${2:-all}
case "$PHASE" in tests|bench|quality|all) ;; *) echo "$0: unknown phase '$PHASE'" >&2; exit 2 ;; esac
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
if [ "$PHASE" = all ]; then PHASE_BUDGET=${PHASE_BUDGET:-3600}; else PHASE_BUDGET=${PHASE_BUDGET:-540}; fi
export TOYKERNELS_CACHE=${TOYKERNELS_CACHE:-$REPO/.toykernels-cache}
export PYTHONUNBUFFERED=1
STAMP=$(mktemp)  # CSVs newer than this were written by this run
SUMMARY=$OUT/summary.txt
touch "$SUMMARY" "$OUT/tests.log" "$OUT/bench.log"

if [ ! -e "$REPO/../shared" ] && [ -d "$REPO/shared/data" ]; then
    ln -s "$REPO/shared" "$REPO/../shared" && echo "linked ../shared -> $REPO/shared" >> "$SUMMARY"
fi

# step NAME LOG CMD...: runs CMD with its output appended to LOG, records exit code and time;
# skipped when less than 30 s of the phase budget is left, cut off when the budget runs out
step() {
    local name=$1 log=$2
    shift 2
    local left=$((PHASE_BUDGET - SECONDS))
    if [ "$left" -lt 30 ]; then
        printf '%-34s skipped: %ss of the %ss phase budget left\n' "$name" "$left" "$PHASE_BUDGET" >> "$SUMMARY"
        return 0
    fi
    echo "===== $name: $*" | tee -a "$log"
    local start=$SECONDS
    timeout "$left" "$@" >> "$log" 2>&1
    local rc=$?
    local took=$((SECONDS - start))
    echo "===== $name: exit $rc after ${took}s" | tee -a "$log"
    local note=""
    [ "$rc" = 5 ] && note="(pytest: no tests selected)"
    [ "$rc" = 124 ] && note="(cut off at the phase budget)"
    printf '%-34s exit %-4s %6ss %s\n' "$name" "$rc" "$took" "$note" >> "$SUMMARY"
    return 0
}

{
    echo "# gpu_check $PHASE $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "NO GPU")' 2>&1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 4
} | tee -a "$SUMMARY"

# Install without touching dependencies (no index here); fall back to PYTHONPATH.
if ! "$PY" -m pip install --no-deps --no-build-isolation -q \
        -e packages/toygrad -e packages/kernels -e packages/toygpt >> "$OUT/tests.log" 2>&1; then
    echo "pip install failed: using PYTHONPATH to the src folders" | tee -a "$SUMMARY"
    export PYTHONPATH="$REPO/packages/toygrad/src:$REPO/packages/kernels/src:$REPO/packages/toygpt/src${PYTHONPATH:+:$PYTHONPATH}"
fi

if [ "$PHASE" = tests ] || [ "$PHASE" = all ]; then
    step "backend_info (builds)" "$OUT/tests.log" "$PY" -c 'import torch, toykernels; x = torch.randn(8, 768, device="cuda"); toykernels.layer_norm(x); q = torch.randn(1, 12, 64, 64, device="cuda", dtype=torch.bfloat16); toykernels.causal_attention(q, q, q); print(toykernels.backend_info("cuda"))'
    step "pytest kernels -m cuda" "$OUT/tests.log" "$PY" -m pytest tests/kernels -m cuda -q -ra -p no:cacheprovider
    for dir in tests/toygrad tests/toygpt; do
        [ -d "$dir" ] && step "pytest ${dir#tests/} -m cuda" "$OUT/tests.log" "$PY" -m pytest "$dir" -m cuda -q -ra -p no:cacheprovider
    done
    # the build logs (first build timing, or the compiler errors)
    find "$TOYKERNELS_CACHE" -name build.log -exec sh -c 'echo "----- $1"; cat "$1"' _ {} \; >> "$OUT/tests.log" 2>/dev/null
fi

if [ "$PHASE" = bench ] || [ "$PHASE" = all ]; then
    step "bench_layernorm" "$OUT/bench.log" "$PY" tools/bench_layernorm.py --device cuda
    # the cost of one small call (a GPT-2 decode step's 25 LayerNorms): launch and Python overhead
    step "bench_layernorm --per-call" "$OUT/bench.log" "$PY" tools/bench_layernorm.py --device cuda --per-call
    step "bench_attention" "$OUT/bench.log" "$PY" tools/bench_attention.py --device cuda
    step "bench_train --device cuda" "$OUT/bench.log" "$PY" tools/bench_train.py --device cuda
    step "bench_generate --device cuda" "$OUT/bench.log" "$PY" tools/bench_generate.py --device cuda
    step "bench_toygrad_tensor --device cuda" "$OUT/bench.log" "$PY" tools/bench_toygrad_tensor.py --device cuda
fi

if [ "$PHASE" = quality ] || [ "$PHASE" = all ]; then
    # shakespeare-char (nanoGPT's baby GPT, 5000 iterations): val loss and wall time
    step "bench_train --device cuda --quality" "$OUT/bench.log" "$PY" tools/bench_train.py --device cuda --quality
fi

for csv in benchmarks/results/*.csv; do
    [ -f "$csv" ] && [ "$csv" -nt "$STAMP" ] && cp "$csv" "$OUT/"
done
rm -f "$STAMP"

# the results in brief: each benchmark prints its summary after a line starting with "# "
{
    echo
    echo "# test results"
    grep -E '^(FAILED|ERROR|[0-9]+ (passed|failed|skipped)|=+ .*(passed|failed|skipped|error))' "$OUT/tests.log" | tail -n 20
    echo
    grep -E -A 40 '^# toykernels LayerNorm on' "$OUT/bench.log" | head -n 45
    echo
    grep -E -A 4 '^# per call, ' "$OUT/bench.log" | head -n 5
    echo
    grep -E -A 45 '^# summary \(speed ratio > 1 means toykernels is faster\)' "$OUT/bench.log" | head -n 46
    echo
    grep -E -i '(toygpt|plain|MFU|tok/s|tokens/s|val loss|ratio)' "$OUT/bench.log" | grep -v '^=====' | tail -n 40
} >> "$SUMMARY"
echo
echo "################ summary ($SUMMARY)"
cat "$SUMMARY"
