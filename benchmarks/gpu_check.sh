#!/usr/bin/env bash
# The GPU path checked in one command, under 8 minutes on one H100/H200 (docs/performance.md,
# "Checking the GPU path"):
#
#   bash benchmarks/gpu_check.sh                                  # on a CUDA machine
#   DEVICE=cpu QUICK=1 PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh   # tiny, anywhere: proves the script
#
# Stages, each under a time limit so one slow stage cannot eat the others' time:
#   env              what the machine has; stops the check when kdcompress cannot import or no GPU is seen
#   tests            pytest -m cuda (tests/test_cuda.py)
#   eager            benchmarks/throughput.py: both pairs, every logit method, teacher cache on and off
#   reduce-overhead  the same with --compile-mode reduce-overhead (CUDA graphs), kd only by default
# Results: gpu_check.json (everything), gpu_check.md (the tables) and gpu_check.log in $RESULTS
# (default: $OUT when set, else benchmarks/results/).
#
# It never touches the network. Packages the machine lacks travel as wheels in .whl/
# (bash benchmarks/gpu_wheels.sh fetches them where PyPI is reachable); the repository itself is imported
# from the working tree, not installed.
#
# Settings (environment): DEVICE (cuda), QUICK (0), PYTHON (python3), RESULTS, ROUNDS (10),
# COMPILE_METHODS (kd), and the stage limits in seconds TESTS_LIMIT (210), EAGER_LIMIT (120),
# COMPILED_LIMIT (130).
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
PYTHON=${PYTHON:-python3}
RESULTS=${RESULTS:-${OUT:-benchmarks/results}}
ROUNDS=${ROUNDS:-10}
COMPILE_METHODS=${COMPILE_METHODS:-kd}
TESTS_LIMIT=${TESTS_LIMIT:-210}
EAGER_LIMIT=${EAGER_LIMIT:-120}
COMPILED_LIMIT=${COMPILED_LIMIT:-130}
mkdir -p "$RESULTS"
WORK=$(mktemp -d)
exec > >(tee "$RESULTS/gpu_check.log") 2>&1

if compgen -G ".whl/*.whl" > /dev/null; then
    echo "== installing the carried wheels into /tmp/site: $(ls .whl | tr '\n' ' ')"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1

STAGES=()
failed=0
stage() {  # stage NAME LIMIT FILE COMMAND...: run COMMAND under LIMIT seconds; FILE is what it writes
    local name=$1 limit=$2 file=$3 start=$SECONDS rc
    shift 3
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    echo "== $name: exit $rc after $((SECONDS - start))s"
    STAGES+=(--stage "$name" "$rc" "$((SECONDS - start))" "$file")
    [ "$rc" -eq 0 ] || failed=1
}

report() {
    local quick=()
    [ "$QUICK" = 1 ] && quick=(--quick)
    "$PYTHON" benchmarks/gpu_report.py report --out "$RESULTS" --env "$WORK/env.json" --device "$DEVICE" \
        "${quick[@]}" "${STAGES[@]}"
}

stage env 120 "$WORK/env.json" "$PYTHON" benchmarks/gpu_report.py env --json "$WORK/env.json" --device "$DEVICE"
if [ "$failed" -ne 0 ]; then
    echo "== the check cannot run here (see the problems above)"
    report
    exit 1
fi

BENCH=("$PYTHON" benchmarks/throughput.py --device "$DEVICE" --rounds "$ROUNDS")
COMPILED_PAIRS=()
if [ "$QUICK" = 1 ]; then  # tiny batches and one round: proves every stage, measures nothing
    TESTS_LIMIT=120 EAGER_LIMIT=300 COMPILED_LIMIT=400
    BENCH=("$PYTHON" benchmarks/throughput.py --device "$DEVICE" --rounds 1 --warmup 0 --iters 1 --batch 4
        --steps 2)
    COMPILED_PAIRS=(--pairs "resnet32x4->resnet8x4")
fi

stage tests "$TESTS_LIMIT" "$WORK/tests.xml" "$PYTHON" -m pytest -p no:cacheprovider -m cuda tests/test_cuda.py \
    -q -rs --junitxml="$WORK/tests.xml"
stage eager "$EAGER_LIMIT" "$WORK/eager.json" "${BENCH[@]}" --json "$WORK/eager.json"
stage reduce-overhead "$COMPILED_LIMIT" "$WORK/reduce-overhead.json" "${BENCH[@]}" \
    --compile-mode reduce-overhead --methods "$COMPILE_METHODS" "${COMPILED_PAIRS[@]}" \
    --json "$WORK/reduce-overhead.json"
report || failed=1
rm -rf "$WORK"
exit "$failed"
