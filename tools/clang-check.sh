#!/usr/bin/env bash
# tools/clang-check.sh - pylut builds with clang as well as gcc, at -O2 and -O3, for x86-64 and
# aarch64, without one warning at -Wall; the clang-built extension passes the kernel tests.
#
#   bash tools/clang-check.sh          from anywhere; works on a scratch copy of the tree
#
# Steps (each fails the job on an error or a warning):
#   1. CC=clang setup.py build_ext (the shipped -O3), then tests/test_kernels.py,
#      test_attention.py, test_prefill.py, test_f16.py and test_vecops.py against that build
#      (every ISA this CPU runs);
#   2. x86-64: every unit of the extension, the Cython-generated _core.c included, compiled
#      with setup.py's own flags by gcc -O2, gcc -O3 and clang -O2 (clang -O3 was step 1);
#   3. aarch64: every C unit by clang --target=aarch64-linux-gnu and aarch64-linux-gnu-gcc at
#      -O2 and -O3, against the arm64 root tools/arm-test.sh builds (skipped, with the reason,
#      when that root is missing: run tools/arm-test.sh first). _core.c is generated code
#      the x86 step already holds to the same warnings.
# The immediates of SIMD intrinsics are what usually breaks here: gcc -O3 folds a loop
# variable into a constant, clang and gcc -O2 (or any sanitizer build) do not.
#
# Installs clang with apt-get when missing and running as root (else skips with the reason).
# Knobs: CLANG_CHECK_WORK=DIR (scratch dir, kept), ARM_CACHE=DIR (as tools/arm-test.sh).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
T_START=$(date +%s)
say() { echo "clang-check: $*"; }
die() { echo "clang-check: FAIL: $*" >&2; exit 1; }

if ! command -v clang >/dev/null; then
    [ "$(id -u)" = 0 ] || { say "SKIP: clang is missing and installing it needs root (apt-get install clang)"; exit 0; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends clang >/dev/null
fi
say "$(clang --version | head -1); $(gcc --version | head -1)"

KEEP=${CLANG_CHECK_WORK:+1}
WORK=${CLANG_CHECK_WORK:-$(mktemp -d /tmp/pylut-clang-check.XXXXXX)}
TREE=$WORK/tree
rm -rf "$TREE" && mkdir -p "$TREE"
tar -C "$REPO" --exclude=./.git --exclude=./build --exclude='*.so' --exclude='*.egg-info' \
    --exclude=./dist --exclude=./wheelhouse --exclude=__pycache__ -cf - . | tar -C "$TREE" -xf -
cd "$TREE"

SUMMARY=()
timed() {  # timed NAME cmd...
    local name=$1 t0; shift
    say "=== $name"
    t0=$(date +%s); "$@"
    SUMMARY+=("$(printf '%-44s %5ds' "$name" $(( $(date +%s) - t0 )))")
}
no_warnings() {  # no_warnings LOG WHAT
    if grep -q 'warning:' "$1"; then grep -B2 -A4 'warning:' "$1" | head -60 >&2; die "warnings in $2 (log: $1)"; fi
}

# ------------------------------------------------------------------ 1. clang build + kernels
clang_build() {
    CC=clang python3 setup.py build_ext --inplace -j 2 > "$WORK/clang-O3.log" 2>&1 \
        || { tail -40 "$WORK/clang-O3.log" >&2; die "CC=clang build failed"; }
    no_warnings "$WORK/clang-O3.log" "the clang -O3 build"
    readelf -p .comment pylut/_core*.so | grep -q clang || die "the extension was not built by clang"
}
timed "clang -O3 build (setup.py)" clang_build
kernel_tests() {
    python3 -c 'import pylut._core as c, sys; assert c.__file__.startswith(sys.argv[1]), c.__file__' "$TREE"
    PYLUT_CACHE_DIR=$WORK/cache python3 -m pytest -q -p no:cacheprovider \
        tests/test_kernels.py tests/test_attention.py tests/test_prefill.py tests/test_f16.py tests/test_vecops.py
}
timed "kernel tests on the clang build" kernel_tests

# ------------------------------------------------------------------ 2-3. compile matrix
# units TARGET: "source flags..." per line, from setup.py itself (loaded, not run), for the
# target platform (its ISA flags differ per architecture)
units() {
    _PYTHON_HOST_PLATFORM=$1 python3 - <<'EOF'
import runpy
g = runpy.run_path("setup.py", run_name="pylut_units")
for src in g["SOURCES"]:
    src = "pylut/_core.c" if src.endswith(".pyx") else src
    print(src, *g["BASE_FLAGS"][1:], *g["ISA_FLAGS"].get(src, []))
EOF
}
NPINC=$(python3 -c 'import numpy; print(numpy.get_include())')
compile_all() {  # compile_all NAME "CC..." OPT TARGET PYINC [skip-core]
    local name=$1 cc=$2 opt=$3 target=$4 pyinc=$5 skip=${6:-} log=$WORK/$1.log
    units "$target" | { if [ -n "$skip" ]; then grep -v '^pylut/_core.c '; else cat; fi; } \
        | xargs -P 2 -L 1 sh -c "$cc $opt -fPIC -fwrapv -DNDEBUG -DNPY_NO_DEPRECATED_API=NPY_1_7_API_VERSION \
            -Iinclude -Isrc/core -I$NPINC -I$pyinc \"\$@\" -c \"\$0\" -o /dev/null" > "$log" 2>&1 \
        || { grep -A3 'error' "$log" | head -40 >&2; die "$name: compile errors (log: $log)"; }
    no_warnings "$log" "$name"
}
X86_PY=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
for cfg in "gcc -O2" "gcc -O3" "clang -O2"; do
    set -- $cfg
    timed "x86-64 $1 $2 (all units)" compile_all "x86-$1$2" "$1" "$2" linux-x86_64 "$X86_PY"
done

ARM_ROOT=${ARM_CACHE:-/var/cache/arm-test}/root-${ARM_SUITE:-bookworm}-py${ARM_PY_VER:-3.11}-arm64-cross
ARM_PY=$(ls -d "$ARM_ROOT"/usr/include/python3.* 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$ARM_PY" ] || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    say "SKIP aarch64: no arm64 root at $ARM_ROOT or no aarch64-linux-gnu-gcc (tools/arm-test.sh makes both)"
else
    for cfg in "clang -O2" "clang -O3" "gcc -O2" "gcc -O3"; do
        set -- $cfg
        if [ "$1" = clang ]; then cc="clang --target=aarch64-linux-gnu --sysroot=$ARM_ROOT"
        else cc="aarch64-linux-gnu-gcc --sysroot=$ARM_ROOT"; fi
        timed "aarch64 $1 $2 (C units)" compile_all "arm64-$1$2" "$cc" "$2" linux-aarch64 "$ARM_PY" skip-core
    done
fi

say "=== summary (no error, no warning)"
printf '  %s\n' "${SUMMARY[@]}"
say "total $(( $(date +%s) - T_START ))s"
cd / && { [ -n "$KEEP" ] || rm -rf "$WORK"; }
