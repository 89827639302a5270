#!/usr/bin/env bash
# tools/sanitize.sh - build pylut._core with AddressSanitizer + UndefinedBehaviorSanitizer (gcc)
# in a scratch copy of the tree and run the C-heavy tests under it; fails on any report.
#
#   bash tools/sanitize.sh [pytest args...]   from anywhere; the in-place build is not touched
#   (no args = the C-heavy files below; e.g. bash tools/sanitize.sh -q -x tests/test_kernels.py)
#   bash tools/sanitize.sh --quick            what CI runs (.ci/run): steps 1, 2 and 4 in full
#   size, step 3 on four forward cases per lower ISA (llama Q4_0/TQ1_0, qwen2 Q4_K, the
#   bitnet-b1.58 TQ2_0 graph) and 40 fuzz cases: every kernel family under every ISA still
#   runs (the kernel tests loop over them), at about a third of the full run's time
#
# What it runs, in order (each step fails the job on a sanitizer report in any process,
# subprocesses of the tests included: reports go to files under WORK/reports, checked after
# every step, so a test that expects a child to fail cannot hide one):
#   1. the planted out-of-bounds read (src/core/sanitize_selftest.c, compiled in only here):
#      ASan must report it, else the job proves nothing and fails;
#   2. every kernel family (LUT GEMV/GEMM, prefill, int8 baseline, attention, KV cache
#      codecs) over every ISA this CPU runs (the kernel tests loop over isa_supported()),
#      the readers and loaders (GGUF, safetensors, HF folders, GPTQ, I2_S, the pack cache),
#      the model forward with the best ISA (every architecture of the zoo and BitNet), the
#      tokenizer's C merge;
#   3. the model forward again under each lower ISA (PYLUT_ISA=...);
#   4. a short fixed-seed pass of the format fuzzer, when tools/fuzz_formats.py exists.
# Peak-memory tests skip themselves (PYLUT_SANITIZED=1): ASan's shadow memory and quarantine
# inflate the peak they measure.
#
# Needs gcc with libasan + libubsan (Debian: part of gcc); installs gcc with apt-get when
# missing and running as root. Knobs:
#   SANITIZE_WORK=DIR   scratch dir (default: a fresh mktemp dir, removed on success)
#   PYLUT_OPT=-O2       optimization level of the sanitized build (setup.py reads it)
#   SANITIZE_ISAS="scalar avx2"   ISAs for step 3 (default: all this CPU runs)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
T_START=$(date +%s)
QUICK=
FUZZ_CASES=120
[ "${1:-}" = --quick ] && { QUICK=1 FUZZ_CASES=40; shift; }
say() { echo "sanitize: $*"; }
die() { echo "sanitize: FAIL: $*" >&2; exit 1; }

# ------------------------------------------------------------------ toolchain
CC=gcc
if ! command -v $CC >/dev/null; then
    [ "$(id -u)" = 0 ] || { say "SKIP: gcc is missing and installing it needs root"; exit 0; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc >/dev/null
fi
LIBASAN=$($CC -print-file-name=libasan.so)
LIBUBSAN=$($CC -print-file-name=libubsan.so)
[ -f "$LIBASAN" ] && [ -f "$LIBUBSAN" ] || die "gcc has no libasan/libubsan runtime ($LIBASAN, $LIBUBSAN)"
# the soname the extension will need, so the preloaded copy is the one it binds to
LIBASAN=$(readlink -f "$LIBASAN"); LIBUBSAN=$(readlink -f "$LIBUBSAN")

# ------------------------------------------------------------------ scratch copy + build
KEEP=${SANITIZE_WORK:+1}
WORK=${SANITIZE_WORK:-$(mktemp -d /tmp/pylut-sanitize.XXXXXX)}
TREE=$WORK/tree REPORTS=$WORK/reports
rm -rf "$TREE" "$REPORTS" && mkdir -p "$TREE" "$REPORTS"
# a clean copy: no .git, no in-place .so files or build dirs of the normal build
tar -C "$REPO" --exclude=./.git --exclude=./build --exclude='*.so' --exclude='*.egg-info' \
    --exclude=./dist --exclude=./wheelhouse --exclude=__pycache__ -cf - . | tar -C "$TREE" -xf -

SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"
say "building with $CC ${PYLUT_OPT:--O2} $SAN_FLAGS (log: $WORK/build.log)"
t0=$(date +%s)
( cd "$TREE" && CC=$CC PYLUT_OPT=${PYLUT_OPT:--O2} CFLAGS="$SAN_FLAGS -DPYLUT_SANITIZE_SELFTEST" \
    LDFLAGS="-fsanitize=address,undefined" python3 setup.py build_ext --inplace -j 2 ) \
    > "$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; die "sanitized build failed"; }
SO=$(ls "$TREE"/pylut/_core*.so)
readelf -d "$SO" | grep -q 'NEEDED.*libasan' || die "$SO is not linked against libasan: CFLAGS did not reach the build"
say "build: $(( $(date +%s) - t0 ))s"

export LD_PRELOAD="$LIBASAN $LIBUBSAN${LD_PRELOAD:+ $LD_PRELOAD}"
# detect_leaks=0: CPython keeps its objects to exit; allocator_may_return_null=1: an
# impossible size must reach the code's own NULL check (MemoryError), as without ASan
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:abort_on_error=0:log_path=$REPORTS/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$REPORTS/ubsan"
export PYLUT_SANITIZED=1 PYLUT_CACHE_DIR=$WORK/cache PYTHONDONTWRITEBYTECODE=1
unset PYLUT_ISA

REPORT_RE='ERROR: AddressSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer'
check_reports() {  # check_reports STEP LOG: a report file, or a report in the output, fails the job
    local f found=0
    for f in "$REPORTS"/*; do
        [ -e "$f" ] || continue
        found=1; echo "----- $f" >&2; cat "$f" >&2
    done
    # UBSan writes to stderr whatever log_path says when ASan shares the process
    grep -qE "$REPORT_RE" "$2" && { found=1; grep -E -A12 "$REPORT_RE" "$2" | head -60 >&2; }
    [ $found = 0 ] || die "sanitizer report(s) during: $1"
}
SUMMARY=()
step() {  # step NAME cmd...: run in the tree, time it, then check for reports
    local name=$1 t0 rc=0; shift
    say "=== $name"
    t0=$(date +%s)
    ( cd "$TREE" && "$@" ) 2>&1 | tee "$WORK/step.log" || rc=$?
    check_reports "$name" "$WORK/step.log"
    [ $rc = 0 ] || die "$name exited with $rc"
    SUMMARY+=("$(printf '%-44s %5ds' "$name" $(( $(date +%s) - t0 )))")
}

# ------------------------------------------------------------------ 1. planted read
selftest() {
    local rc=0 log=$WORK/selftest
    rm -rf "$log" && mkdir -p "$log"
    ( cd "$TREE" && ASAN_OPTIONS="${ASAN_OPTIONS%%:log_path=*}:log_path=$log/asan" \
        python3 -c 'from pylut import _core; _core.sanitize_selftest()' ) 2>/dev/null || rc=$?
    if [ $rc = 0 ] || ! grep -qs 'heap-buffer-overflow' "$log"/asan.* || ! grep -qs 'pylut_sanitize_selftest' "$log"/asan.*; then
        cat "$log"/* 2>/dev/null >&2 || true
        die "the planted out-of-bounds read went unreported (exit $rc): this job could not see a real one"
    fi
    # (the report's words are not repeated here: this step's output is searched for reports)
    say "planted out-of-bounds read reported (exit $rc): $(grep -ho -m1 'heap-buffer-overflow on address [0-9a-fx]*' "$log"/asan.*)"
}
step "planted out-of-bounds read" selftest

# ------------------------------------------------------------------ 2-3. tests
# --capture=sys: C code's stderr goes straight out (fd capture would swallow the report of a
# process the sanitizer kills before pytest can print it)
PYTEST=(python3 -m pytest -q -p no:cacheprovider -x --capture=sys)
if [ $# -gt 0 ]; then
    step "pytest $*" "${PYTEST[@]}" "$@"
else
    step "kernels, loaders, model (best ISA)" "${PYTEST[@]}" \
        tests/test_sanitize.py tests/test_kernels.py tests/test_attention.py tests/test_prefill.py tests/test_f16.py \
        tests/test_streaming_attention.py tests/test_paged_attention.py tests/test_kv_pool.py \
        tests/test_quants.py tests/test_gguf_reader.py \
        tests/test_safetensors_reader.py tests/test_hf_loader.py tests/test_gptq.py \
        tests/test_packcache.py tests/test_model_gguf.py tests/test_arch_zoo.py tests/test_bitnet.py \
        tests/test_tokenizer.py
    BEST=$(cd "$TREE" && python3 -c 'from pylut import _core; print(_core.isa_detect())')
    ISAS=${SANITIZE_ISAS:-$(cd "$TREE" && python3 -c 'from pylut import _core; print(*_core.isa_supported())')}
    LOWER_ISA_TESTS=(tests/test_model_gguf.py)
    [ -z "$QUICK" ] || LOWER_ISA_TESTS+=(-k "forward_matches_reference and (llama-Q4_0 or llama-TQ1_0 or qwen2-Q4_K or bitnet-b1.58-TQ2_0)")
    for isa in $ISAS; do
        [ "$isa" = "$BEST" ] && continue
        step "model forward, PYLUT_ISA=$isa" env PYLUT_ISA="$isa" "${PYTEST[@]}" "${LOWER_ISA_TESTS[@]}"
    done
    # ------------------------------------------------------------------ 4. fuzzer
    if [ -f "$TREE/tools/fuzz_formats.py" ]; then
        # --mem-mb: no address-space limit per case (ASan reserves terabytes of shadow
        # memory, so RLIMIT_AS would fail its allocator, not the reader); slower cases
        step "format fuzzer (fixed seed)" python3 tools/fuzz_formats.py --cases "$FUZZ_CASES" --seed 1 \
            --timeout 60 --mem-mb $(( 1 << 40 )) --out "$WORK/fuzz"
    else
        say "tools/fuzz_formats.py not in this tree: fuzzer pass skipped"
    fi
fi

say "=== summary (all clean)"
printf '  %s\n' "${SUMMARY[@]}"
say "total $(( $(date +%s) - T_START ))s"
[ -n "$KEEP" ] || rm -rf "$WORK"
