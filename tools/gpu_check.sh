#!/usr/bin/env bash
# The GPU check, for a CUDA machine that has torch but no network and no package index (a device
# box lent for minutes, one command of at most 10): installs the three packages without
# dependencies, then delivers the decisive evidence in one call of at most 9 minutes, in order:
#
#   tools/gpu_check.sh OUTDIR            (the phase `check`: the steps below)
#
#   step                budget (s)  what
#   [1] env                 30   python, torch, CUDA, the GPU, CUDA_HOME, nvcc, cusparse.h, the MFU peak
#   [2] build              180   both extensions (layer_norm, attention) JIT-built side by side, timed,
#                                with TOYKERNELS_BACKEND=cuda; unless backend_info() then says cuda for
#                                every op, the run stops here, failed, with the compiler's first error
#   [3] core                45   every kernel instantiation once, forward and backward, vs float64
#                                (tools/gpu_check_core.py core): one line per case, PASS/FAIL counts
#   [4] memcheck            60   compute-sanitizer --tool memcheck over one tiny case per kernel
#   [5] racecheck           60   compute-sanitizer --tool racecheck over the same cases
#   [6] bench_layernorm     40   bf16 32768x4096 forward and backward against the copy bandwidth
#                                measured in the same run and F.layer_norm
#   [7] bench_attention     45   bf16, head dim 64, T = 1024 and 4096, forward and forward+backward,
#                                against SDPA's flash and cuDNN backends
#   [8] train               55   a GPT-2 124M training step, bf16: tokens/s and MFU, toygpt (toykernels)
#                                against SDPA + F.layer_norm (tools/bench_train.py --device cuda)
#   [9] pytest            rest   pytest -m cuda over tests/kernels, tests/toygrad, tests/toygpt
#
# The budgets are caps: a step is cut off at its budget, or at what is left of PHASE_BUDGET (540 s,
# counted from the start, the install included), whichever comes first; a step with under 10 s
# left is skipped. The caps of steps 1-8 add up to 515 s, so pytest keeps at least the last 20 s
# less the install's; but the first build of both extensions takes 1-3 minutes on 16 cores and
# the other steps mostly end well inside their caps, so it usually gets 3-5 minutes. Override a
# budget with BUDGET_<STEP>=seconds (BUDGET_PYTEST, BUDGET_BENCH_LAYERNORM, ...).
#
# Each step's line is appended to OUTDIR/summary.txt as soon as the step ends (name, exit code,
# seconds of its budget, ok / FAILED / CUT OFF / SKIPPED, then its key figures), so a call that
# is itself cut off still returns what finished. OUTDIR stays flat, 8 files at most (a device
# box sends back no more):
#   summary.txt   the step lines, the environment, the figures; a RESULT line last
#   build.log     the install, the build step's output and the extensions' build logs
#   core.log      the correctness core and its two compute-sanitizer runs
#   bench.log     the benchmarks' and the training step's output
#   tests.log     pytest's output (-v: a cut-off run still shows what passed)
#   layernorm.csv, attention.csv, train.csv   the rows this run appended to benchmarks/results/
# Exit status: 0 when every step ran to its end and passed; 1 when any step failed, was cut off
# or skipped (the RESULT line says which); 2 for a usage error.
#
# Later phases, for a session with device time left (each meant to end within PHASE_BUDGET):
#   tools/gpu_check.sh OUTDIR tests      build check, then pytest -m cuda
#   tools/gpu_check.sh OUTDIR bench      the full benchmark sweeps (LayerNorm, per call, attention,
#                                        training step, generation, toygrad's tensor engine)
#   tools/gpu_check.sh OUTDIR quality    shakespeare-char on the GPU: val loss and wall time
#   tools/gpu_check.sh OUTDIR all        tests, bench and quality (PHASE_BUDGET 3600)
#
# Builds go to TOYKERNELS_CACHE (default: .toykernels-cache in the repo, which stays between calls
# while the machine is warm), so later calls reuse them. A build that was killed can leave
# cpp_extension's `lock` file there, on which every later build would wait forever: this script
# deletes such files at its start (no build can be running then) and after a build it cut off.
#
# Data: the tests and the quality run read ../shared/data (Tiny Shakespeare, GPT-2's tokenizer
# files). A device box gets only the repo, so copy it in first (`mkdir -p shared && cp -r
# ../shared/data shared/`; /shared/ is git-ignored and travels); this script then links
# ../shared to it when ../shared is missing.
#
# Dry run, for a test of this script's plumbing on a CPU (tests/test_gpu_check.py):
#   GPU_CHECK_DRY_RUN=cpu   the Python steps run their real scripts on the CPU with tiny shapes;
#                           build, the sanitizers and pytest are stand-ins (--standin below)
#   GPU_CHECK_DRY_RUN=stub  every step is a stand-in that prints what the real one prints
#   GPU_CHECK_DRY_BUILD=fail      the build stand-in fails with a compiler error in a build.log
#   GPU_CHECK_DRY_BUILD=fallback  the real build check runs on the CPU, where every op falls back
#   GPU_CHECK_DRY_STALL=STEP      that step sleeps instead (to be cut off by a tiny budget)
# A dry run installs nothing (it puts the src folders on PYTHONPATH) and links nothing.
set -u

SCRIPT=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
REPO=$(cd "$(dirname "$0")/.." && pwd)

# standin STEP: what a step prints on a GPU, in brief, for the dry run
standin() {
    case "$1" in
        env) echo "torch (dry run: no GPU)" ;;
        build)
            case "${GPU_CHECK_DRY_BUILD:-ok}" in
                fail)
                    local dir="$TOYKERNELS_CACHE/toykernels_attention/sm_90-dry-run"
                    mkdir -p "$dir"
                    # what cpp_extension writes: its header, ninja's progress, the failed command
                    # echoed again, then nvcc's diagnostics
                    printf '%s\n' "RuntimeError: Error building extension 'toykernels_attention': [1/3] nvcc -c attention.cu" \
                        "FAILED: attention.cuda.o" "nvcc -c attention.cu -o attention.cuda.o" \
                        "$REPO/packages/kernels/src/toykernels/csrc/attention.cu(1): error: identifier \"dry_run_planted\" is undefined" \
                        "1 error detected in the compilation of \"attention.cu\"." > "$dir/build.log"
                    # (no "first error:" line: as from a build that died before it could report)
                    echo "attention: FAILED: attention: TOYKERNELS_BACKEND=cuda but the build failed (dry run)"
                    echo "# build: FAILED: attention would not run CUDA kernels (TOYKERNELS_BACKEND=cuda)"
                    return 1 ;;
                *)
                    echo "layer_norm: cuda: built for sm_90 in 0.0 s (dry run)"
                    echo "attention: cuda: built for sm_90 in 0.0 s (dry run)"
                    echo "# build: every op runs its CUDA kernel (attention, layer_norm) after 0 s" ;;
            esac ;;
        core) echo "layer_norm bf16 5x64 fused (dry run)  PASS"; echo "# core: 1 PASS, 0 FAIL of 1 cases in 0 s" ;;
        memcheck|racecheck) echo "# core: 1 PASS, 0 FAIL of 1 cases in 0 s"; echo "========= ERROR SUMMARY: 0 errors" ;;
        bench_layernorm)
            echo "# cpu, copy bandwidth 1 GB/s"
            echo "# toykernels LayerNorm on cpu: GB/s, share of copy bandwidth (1 GB/s), speed-ups"
            echo "bfloat16   32768x4096 fwd           1.0 GB/s  50.0%   1.00x torch    nanx compile  (dry run)" ;;
        bench_attention)
            echo "B=16 H=12 T=1024 D=64"
            echo "  toykernels    fwd          1.000 ms     1.00 TFLOP/s  peak       nan MiB  (dry run)"
            echo "  ratio fwd      toykernels/fastest-sdpa 1.00x" ;;
        train) echo "  toygpt   100.00 ms/step        1,000 tokens/s  MFU   1.0%  (dry run)" ;;
        pytest)
            echo "tests/kernels/test_dry_run.py::test_stand_in PASSED"
            echo "============================== 1 passed in 0.01s ==============================" ;;
        *) echo "no stand-in for '$1'" >&2; return 2 ;;
    esac
}
if [ "${1:-}" = --standin ]; then  # the stand-in commands run as processes, so timeout can stop them
    standin "${2:-}"
    exit $?
fi

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 OUTDIR [check|tests|bench|quality|all]" >&2
    exit 2
fi
OUT=$1
PHASE=${2:-check}
case "$PHASE" in check|tests|bench|quality|all) ;; *) echo "$0: unknown phase '$PHASE' (check, tests, bench, quality or all)" >&2; exit 2 ;; esac
DRY=${GPU_CHECK_DRY_RUN:-}
case "$DRY" in ""|cpu|stub) ;; *) echo "$0: GPU_CHECK_DRY_RUN='$DRY': expected cpu or stub" >&2; exit 2 ;; esac
if [ -n "$DRY" ] && [ "$PHASE" != check ]; then echo "$0: a dry run covers the phase check only" >&2; exit 2; fi
case "${GPU_CHECK_DRY_BUILD:-ok}" in ok|fail|fallback) ;; *) echo "$0: GPU_CHECK_DRY_BUILD='${GPU_CHECK_DRY_BUILD}': expected ok, fail or fallback" >&2; exit 2 ;; esac
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
if [ "$PHASE" = all ]; then PHASE_BUDGET=${PHASE_BUDGET:-3600}; else PHASE_BUDGET=${PHASE_BUDGET:-540}; fi
RESERVE=5   # seconds kept for the summary at the end
MIN_STEP=10 # a step with less than this left of the phase budget is skipped
export TOYKERNELS_CACHE=${TOYKERNELS_CACHE:-$REPO/.toykernels-cache}
export PYTHONUNBUFFERED=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
touch "$WORK/stamp"  # CSVs and build logs newer than this were written by this run
SUMMARY=$OUT/summary.txt
touch "$SUMMARY"
FAILED=""      # steps that failed, as "name name ..."
INCOMPLETE=""  # steps cut off or skipped
STEP_NO=0
STATUS=""      # the last step's: ok, FAILED, CUT OFF or SKIPPED
MFU_PEAK=""    # the env step's line naming the GPU's bf16 peak, repeated under the train step

mkdir -p "$TOYKERNELS_CACHE"
find "$TOYKERNELS_CACHE" -name lock -type f -delete 2>/dev/null

{
    echo "# gpu_check $PHASE $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)${DRY:+ (dry run: $DRY)}"
    command -v nvidia-smi > /dev/null && timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 4
} | tee -a "$SUMMARY"

case "$PHASE" in bench|quality) INSTALL_LOG=$OUT/bench.log ;; *) INSTALL_LOG=$OUT/build.log ;; esac
touch "$INSTALL_LOG"
if [ -z "$DRY" ] && [ ! -e "$REPO/../shared" ] && [ -d "$REPO/shared/data" ]; then
    ln -s "$REPO/shared" "$REPO/../shared" && echo "linked ../shared -> $REPO/shared" >> "$SUMMARY"
fi
# Install without touching dependencies (no index here); fall back to PYTHONPATH.
if [ -n "$DRY" ] || ! "$PY" -m pip install --no-deps --no-build-isolation -q \
        -e packages/toygrad -e packages/kernels -e packages/toygpt >> "$INSTALL_LOG" 2>&1; then
    if [ -n "$DRY" ]; then
        echo "dry run: using PYTHONPATH to the src folders (nothing installed)" | tee -a "$SUMMARY"
    else
        echo "pip install failed: using PYTHONPATH to the src folders" | tee -a "$SUMMARY"
    fi
    export PYTHONPATH="$REPO/packages/toygrad/src:$REPO/packages/kernels/src:$REPO/packages/toygpt/src${PYTHONPATH:+:$PYTHONPATH}"
fi

# record ID NAME RC SECONDS BUDGET STATUS [DETAILS FILE]: the step's line in the summary, then its
# key figures indented below it
record() {
    printf '[%s] %-16s exit %-4s %4ss of %4ss  %s\n' "$1" "$2" "$3" "$4" "$5" "$6" >> "$SUMMARY"
    if [ $# -ge 7 ] && [ -s "$7" ]; then
        sed 's/^/      /' "$7" >> "$SUMMARY"
    fi
}

# figures NAME FILE: the lines of a step's output worth reading in the summary
figures() {
    local f=$2
    case "$1" in
        env) cat "$f" ;;
        build) grep -E '^# build:|: FAILED|: first error:|^[a-z_]+: cuda: ' "$f" ;;
        core) grep -E '^# (core|FAIL|backend):|  FAIL$' "$f" | head -n 15 ;;
        memcheck|racecheck)
            grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|^# (core|FAIL)|Internal Sanitizer Error|Invalid (__global__|__shared__)|[Hh]azard|unrecognized|not supported|Error:' "$f" | head -n 15 ;;
        bench_layernorm|bench_layernorm_sweep)
            { grep -E '^# .*copy bandwidth' "$f"; grep -E '  skipped: ' "$f"
              sed -n '/^# toykernels LayerNorm on/,$p' "$f" | tail -n +2 | grep -v '^$'; } | head -n 40 ;;
        bench_layernorm_per_call) grep -E -A 4 '^# per call, ' "$f" | head -n 5 ;;
        bench_attention) grep -E '^B=[0-9]+ H=[0-9]+ T=[0-9]+ D=[0-9]+$|^  (toykernels|sdpa_[a-z]+|naive) |^  ratio ' "$f" | head -n 40 ;;
        bench_attention_sweep) sed -n '/^# summary (speed ratio/,$p' "$f" | head -n 46 ;;
        train|bench_train|train_quality)
            grep -E 'tokens/s|step time|losses agree|^# step time|val loss|no peak' "$f" | head -n 12
            [ -n "${MFU_PEAK:-}" ] && echo "$MFU_PEAK" ;;
        pytest)
            local last
            last=$(grep -E '^=+ .*(passed|failed|error|no tests ran).* in [0-9.]+s' "$f" | tail -n 1)
            if [ -n "$last" ]; then
                echo "$last"
            else  # cut off before pytest's own summary: count what -v printed so far
                printf 'so far: %s passed, %s failed, %s errors, %s skipped (pytest did not finish)\n' \
                    "$(grep -cE ' PASSED( |$)' "$f")" "$(grep -cE ' FAILED( |$)' "$f")" \
                    "$(grep -cE ' ERROR( |$)' "$f")" "$(grep -cE ' SKIPPED( |$)' "$f")"
            fi
            grep -E '^(FAILED|ERROR) ' "$f" | head -n 25 ;;
        *) tail -n 3 "$f" ;;
    esac
}

# step NAME BUDGET LOG CMD...: runs CMD with its output appended to LOG, cut off at BUDGET seconds
# (BUDGET_<NAME> overrides it) or at what is left of PHASE_BUDGET, whichever comes first; skipped
# with under MIN_STEP seconds left. Appends its line and figures to the summary when it ends.
step() {
    local name=$1 budget=$2 log=$3
    shift 3
    STEP_NO=$((STEP_NO + 1))
    local var="BUDGET_${name^^}"
    budget=${!var:-$budget}
    local left=$((PHASE_BUDGET - SECONDS - RESERVE))
    if [ "$left" -lt "$MIN_STEP" ]; then
        STATUS=SKIPPED
        record "$STEP_NO" "$name" - 0 "$budget" "SKIPPED: only ${left}s of the ${PHASE_BUDGET}s phase budget left"
        INCOMPLETE="$INCOMPLETE $name"
        echo "[$STEP_NO] $name: skipped (${left}s left)"
        return 0
    fi
    [ "$budget" -gt "$left" ] && budget=$left
    if [ -n "$DRY" ] && [ "${GPU_CHECK_DRY_STALL:-}" = "$name" ]; then
        set -- sleep 600
    fi
    touch "$log"
    local offset
    offset=$(wc -c < "$log")
    echo "===== [$STEP_NO] $name (budget ${budget}s): $*" >> "$log"
    echo "[$STEP_NO] $name: running, budget ${budget}s"
    local start=$SECONDS
    timeout -k 5 "$budget" "$@" >> "$log" 2>&1 < /dev/null
    local rc=$?
    local took=$((SECONDS - start))
    echo "===== [$STEP_NO] $name: exit $rc after ${took}s" >> "$log"
    tail -c +$((offset + 1)) "$log" | grep -v '^===== \[' > "$WORK/step.out"
    figures "$name" "$WORK/step.out" > "$WORK/figures" 2>/dev/null
    # 124: timeout's SIGTERM, 137: its SIGKILL 5 s later; a program that exits with either on its
    # own (137: an OOM kill) before its budget is up has failed, not been cut off
    if [ "$rc" = 0 ]; then
        STATUS=ok
    elif { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && [ "$took" -ge $((budget - 1)) ]; then
        STATUS="CUT OFF"
        INCOMPLETE="$INCOMPLETE $name"
    else
        STATUS=FAILED
        FAILED="$FAILED $name"
    fi
    local note="$STATUS"
    [ "$STATUS" = "CUT OFF" ] && note="CUT OFF at its budget"
    [ "$rc" = 5 ] && [ "$name" = pytest ] && note="FAILED: pytest selected no tests"
    record "$STEP_NO" "$name" "$rc" "$took" "$budget" "$note" "$WORK/figures"
    echo "[$STEP_NO] $name: $note after ${took}s"
    copy_csvs
    return 0
}

# the benchmark CSVs this run appended to, into OUTDIR (after every step: a call cut off later
# still returns them)
copy_csvs() {
    local csv
    for csv in benchmarks/results/*.csv; do
        [ -f "$csv" ] && [ "$csv" -nt "$WORK/stamp" ] && cp "$csv" "$OUT/"
    done
    return 0
}

# The compiler's first error in the build logs this run wrote, for when the build step did not
# report it itself (gpu_check_core.py prints toykernels' own pick, _build.first_error_line, but
# not when it was cut off or died): the first compiler, linker or loader diagnostic, else the
# logs' last line.
first_build_error() {
    local line
    find "$TOYKERNELS_CACHE" -name build.log -newer "$WORK/stamp" -exec cat {} + > "$WORK/build_logs" 2>/dev/null
    [ -s "$WORK/build_logs" ] || return 0
    line=$(grep -E '(^|[ :)])(fatal )?error( #[A-Za-z0-9_-]+)?:|undefined (symbol|reference)|cannot find -l' \
        "$WORK/build_logs" | grep -v -E '^(FAILED:|RuntimeError: Error building)' | head -n 1)
    [ -z "$line" ] && line=$(grep -v '^[[:space:]]*$' "$WORK/build_logs" | tail -n 1)
    echo "${line:0:400}"
}

# finish: the RESULT line, the summary printed, and the exit status
finish() {
    copy_csvs
    local result rc
    if [ -n "$FAILED" ]; then
        result="FAIL:${FAILED}${INCOMPLETE:+; incomplete:$INCOMPLETE}"
        rc=1
    elif [ -n "$INCOMPLETE" ]; then
        result="INCOMPLETE (cut off or skipped):$INCOMPLETE"
        rc=1
    else
        result="PASS: every step ran to its end and passed"
        rc=0
    fi
    echo "RESULT: $result ($SECONDS s)" >> "$SUMMARY"
    echo
    echo "################ summary ($SUMMARY)"
    cat "$SUMMARY"
    exit "$rc"
}

# build_step: both extensions built and checked (tools/gpu_check_core.py build); stops the run,
# failed, unless every op runs its CUDA kernel
build_step() {
    local cmd=(env TOYKERNELS_BACKEND=cuda "$PY" tools/gpu_check_core.py build)
    if [ -n "$DRY" ]; then
        if [ "${GPU_CHECK_DRY_BUILD:-ok}" = fallback ]; then
            # the real check on the CPU, the backend left to choose: every op would fall back there
            cmd=(env -u TOYKERNELS_BACKEND "$PY" tools/gpu_check_core.py build --device cpu)
        else
            cmd=(bash "$SCRIPT" --standin build)
        fi
    fi
    step build 180 "$OUT/build.log" "${cmd[@]}"
    local status=$STATUS
    find "$TOYKERNELS_CACHE" -name build.log -newer "$WORK/stamp" -exec sh -c 'echo "----- $1"; cat "$1"' _ {} \; \
        >> "$OUT/build.log" 2>/dev/null
    [ "$status" = ok ] && return 0
    if [ "$status" = "CUT OFF" ]; then
        # a killed build leaves cpp_extension's lock file, and every later build would wait on it
        find "$TOYKERNELS_CACHE" -name lock -type f -delete 2>/dev/null
        echo "      the build was cut off; ninja keeps the finished objects, so a rerun goes on from there" >> "$SUMMARY"
    fi
    if ! grep -q ': first error: ' "$WORK/step.out"; then
        local error
        error=$(first_build_error)
        [ -n "$error" ] && echo "      first compiler error (from the build logs): $error" >> "$SUMMARY"
    fi
    echo "stopped after the build: no CUDA kernel for every op, so nothing else ran (a run on the PyTorch fallback is no evidence)" >> "$SUMMARY"
    finish
}

# ----------------------------------------------------------------------------------------------
# the phases

if [ "$PHASE" = check ]; then
    # NOTE: the flags below are strings split into words on purpose (no argument has a space);
    # an empty array would trip `set -u` in older bash
    if [ -z "$DRY" ]; then
        export TOYKERNELS_BACKEND=cuda  # a benchmark of the fallback is no evidence: raise instead
        DEVICE=cuda
        CORE_FLAGS=""
        LN_SHAPES=32768x4096
        ATTN_SHAPES=16x12x1024x64,4x12x4096x64
        CSV_FLAGS=""
        TRAIN_FLAGS="--rounds 6 --steps 10 --warmup 3"
    else  # the same command lines on tiny CPU shapes, appending to no CSV
        DEVICE=cpu
        CORE_FLAGS=--tiny
        LN_SHAPES=64x256
        ATTN_SHAPES=1x2x64x32
        CSV_FLAGS=--no-csv
        TRAIN_FLAGS="--rounds 1 --steps 1 --warmup 0"
    fi
    # on the PATH, else beside the toolkit's nvcc (the PATH's nvcc may be a wrapper elsewhere)
    SANITIZER=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/nonexistent}/bin/compute-sanitizer" \
        /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer 2>/dev/null | head -n 1)

    # run_step NAME BUDGET LOG CMD...: step, where a dry run runs the stand-in instead of CMD
    # unless CMD has a CPU version (GPU_CHECK_DRY_RUN=cpu) that it runs with tiny shapes
    run_step() {
        local name=$1 budget=$2 log=$3
        shift 3
        case "$DRY:$name" in
            stub:*|cpu:memcheck|cpu:racecheck|cpu:pytest) set -- bash "$SCRIPT" --standin "$name" ;;
        esac
        step "$name" "$budget" "$log" "$@"
    }

    run_step env 30 "$OUT/build.log" "$PY" tools/gpu_check_core.py env
    MFU_PEAK=$(grep -m 1 '^MFU peak' "$WORK/step.out")  # the train step's MFU is against this peak
    build_step
    # shellcheck disable=SC2086
    run_step core 45 "$OUT/core.log" "$PY" tools/gpu_check_core.py core --device "$DEVICE" $CORE_FLAGS
    for tool in memcheck racecheck; do
        if [ -z "$DRY" ] && [ -z "$SANITIZER" ]; then
            STEP_NO=$((STEP_NO + 1))
            record "$STEP_NO" "$tool" - 0 0 "SKIPPED: compute-sanitizer not found (PATH, \$CUDA_HOME/bin)"
            INCOMPLETE="$INCOMPLETE $tool"
            continue
        fi
        # the caching allocator off, so that each tensor is its own allocation and an access past
        # its end is out of bounds; only toykernels' kernels are instrumented (torch's run as usual)
        run_step "$tool" 60 "$OUT/core.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool "$tool" \
            --kernel-name kns=toykernels --error-exitcode 1 --print-limit 20 \
            "$PY" tools/gpu_check_core.py core --tiny
    done
    # shellcheck disable=SC2086
    run_step bench_layernorm 40 "$OUT/bench.log" "$PY" tools/bench_layernorm.py --device "$DEVICE" --dtype bf16 \
        --shapes "$LN_SHAPES" --providers toykernels,torch $CSV_FLAGS
    # shellcheck disable=SC2086
    run_step bench_attention 45 "$OUT/bench.log" "$PY" tools/bench_attention.py --device "$DEVICE" --dtype bf16 \
        --shapes "$ATTN_SHAPES" --providers toykernels,sdpa_flash,sdpa_cudnn $CSV_FLAGS
    # shellcheck disable=SC2086
    run_step train 55 "$OUT/bench.log" "$PY" tools/bench_train.py --device "$DEVICE" $TRAIN_FLAGS
    # the tests check the fallback's own behaviour too, so the backend is not forced there
    run_step pytest 100000 "$OUT/tests.log" env -u TOYKERNELS_BACKEND "$PY" -m pytest tests/kernels tests/toygrad \
        tests/toygpt -m cuda -v -rfE --tb=short -p no:cacheprovider
    finish
fi

# the later phases: each step gets what is left of PHASE_BUDGET
if [ "$PHASE" = tests ] || [ "$PHASE" = all ]; then
    build_step
    step pytest 100000 "$OUT/tests.log" "$PY" -m pytest tests/kernels tests/toygrad tests/toygpt -m cuda -v -rfE \
        --tb=short -p no:cacheprovider
fi
if [ "$PHASE" = bench ] || [ "$PHASE" = all ]; then
    touch "$OUT/bench.log"
    step bench_layernorm_sweep 100000 "$OUT/bench.log" "$PY" tools/bench_layernorm.py --device cuda
    # the cost of one small call (a GPT-2 decode step's 25 LayerNorms): launch and Python overhead
    step bench_layernorm_per_call 100000 "$OUT/bench.log" "$PY" tools/bench_layernorm.py --device cuda --per-call
    step bench_attention_sweep 100000 "$OUT/bench.log" "$PY" tools/bench_attention.py --device cuda
    step bench_train 100000 "$OUT/bench.log" "$PY" tools/bench_train.py --device cuda
    step bench_generate 100000 "$OUT/bench.log" "$PY" tools/bench_generate.py --device cuda
    step bench_toygrad_tensor 100000 "$OUT/bench.log" "$PY" tools/bench_toygrad_tensor.py --device cuda
fi
if [ "$PHASE" = quality ] || [ "$PHASE" = all ]; then
    # shakespeare-char (nanoGPT's baby GPT, 5000 iterations): val loss and wall time
    step train_quality 100000 "$OUT/bench.log" "$PY" tools/bench_train.py --device cuda --quality
fi
finish
